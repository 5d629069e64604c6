"""Property-based tests (hypothesis) of the three ops on every backend.

* Valid problems: random T (0 included), G, block sides, block_size (a true or a false promise),
  dtype, activation layout (contiguous, column-major, sliced, row-padded), identity / permuted
  index maps, bias; every product, directly and through autograd, against the float64
  reference of tests/ops/_reference.py, with NaN-poisoned outputs.
* Invalid problems: random corruption of one argument (index out of range, duplicated,
  wrong dtype / length, wrong activation width, dtype mismatch, G = 0, bad block_size, bad
  groups, a bias on another device, a sparse activation): the op must raise ValueError /
  TypeError / IndexError naming the argument, never crash, never return.  These run in a
  child process, so a crash is a test failure, not a dead test run.

The example budget is fixed and the search derandomized, so CI runs the same cases every
time (SAO_KERNELS_FUZZ_EXAMPLES raises the budget for a longer local search).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _backends import BACKENDS, DEVICE
from _reference import assert_close_rel, permutation, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sao_kernels as sk

OPS = torch.ops.sao_kernels
EXAMPLES = int(os.environ.get("SAO_KERNELS_FUZZ_EXAMPLES", "0"))
SLOW = {"triton"} if DEVICE == "cpu" else set()  # interpreted: smaller problems, fewer examples


def budget(default: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        derandomize=not EXAMPLES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "column-major":
        return t.t().contiguous().t()
    if kind == "sliced":
        wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)[:, ::2]
        return wide.copy_(t)
    if kind == "row-padded":
        wide = torch.zeros(t.shape[0], t.shape[1] + 7, dtype=t.dtype, device=t.device)[:, 3 : 3 + t.shape[1]]
        return wide.copy_(t)
    return t


@st.composite
def problems(draw, backend: str):
    small = backend in SLOW
    b = draw(st.sampled_from([1, 1, 2, 4, 8]))
    G = draw(st.integers(1, 3 if small else 6))
    a = b * draw(st.integers(1, max(1, (16 if small else 40) // b)))
    c = b * draw(st.integers(1, max(1, (16 if small else 40) // b)))
    T = draw(st.integers(0, 12 if small else 70))
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
    promise = draw(st.sampled_from(["true", "true", "false", "none"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    m, n = G * a, G * c
    x = torch.randn(T, n, generator=gen, dtype=torch.float64)
    dy = torch.randn(T, m, generator=gen, dtype=torch.float64)
    values = torch.randn(G, a, c, generator=gen, dtype=torch.float64) / c**0.5
    bias = torch.randn(m, generator=gen, dtype=torch.float64) if draw(st.booleans()) else None
    ii = permutation(n, b, gen) if draw(st.booleans()) else None
    oi = permutation(m, b, gen) if draw(st.booleans()) else None
    # block_size passed to the op: the runs the indices really have, another one (a false
    # promise, to be verified and dropped), or 1
    block_size = {"true": b, "false": draw(st.sampled_from([2, 3, 4, 16])), "none": 1}[promise]
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    kinds = ["contiguous", "column-major", "sliced", "row-padded"]
    return dict(
        x=cast(x),
        dy=cast(dy),
        values=cast(values),
        bias=cast(bias),
        ii=ii,
        oi=oi,
        G=G,
        block_size=block_size,
        dtype=dtype,
        x_layout=draw(st.sampled_from(kinds)),
        dy_layout=draw(st.sampled_from(kinds)),
    )


def check_problem(p: dict, backend: str) -> None:
    x, dy, v, bias, ii, oi, G, bs = (p[k] for k in ("x", "dy", "values", "bias", "ii", "oi", "G", "block_size"))
    want_y, want_dx, want_dv, want_db = reference(x, v, ii, oi, bias, dy)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    xd, dyd, vd, bd, iid, oid = (dev(t) for t in (x, dy, v, bias, ii, oi))
    xl, dyl = layout(xd, p["x_layout"]), layout(dyd, p["dy_layout"])
    with sk.backend(backend):
        got = {
            "y": OPS.linear(xl, vd, iid, oid, bd, bs),
            "dx": OPS.linear_grad_input(dyl, vd, iid, oid, bs),
            "dv": OPS.linear_grad_values(dyl, xl, iid, oid, G, bs),
        }
        xr, vr = xl.detach().clone().requires_grad_(True), vd.detach().clone().requires_grad_(True)
        br = None if bd is None else bd.detach().clone().requires_grad_(True)
        OPS.linear(xr, vr, iid, oid, br, bs).backward(dyl)
    want = {"y": want_y, "dx": want_dx, "dv": want_dv}
    for name, g in got.items():
        assert_close_rel(g, want[name], p["dtype"], name)
    assert_close_rel(xr.grad, want_dx, p["dtype"], "autograd dx")
    assert_close_rel(vr.grad, want_dv, p["dtype"], "autograd dv")
    if br is not None:
        assert_close_rel(br.grad, want_db, p["dtype"], "autograd db")


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_problems_match_the_float64_reference(backend, monkeypatch):
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")

    @budget(12 if backend in SLOW else 60)
    @given(problems(backend))
    def run(p):
        check_problem(p, backend)

    run()


# ---------------------------------------------------------------------- invalid input
CORRUPT = [
    "in_index_range",
    "out_index_range",
    "in_index_negative",
    "in_index_duplicate",
    "out_index_duplicate",
    "in_index_dtype",
    "in_index_length",
    "x_width",
    "x_dtype",
    "zero_groups",
    "block_size",
    "groups",
    "bias_length",
    "bias_device",
    "x_sparse",
]

INVALID_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from hypothesis import HealthCheck, given, settings, strategies as st
    import sao_kernels as sk
    OPS = torch.ops.sao_kernels
    backend, n_examples, derandomize = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    CORRUPT = sys.argv[4].split(",")
    seen = set()

    @settings(max_examples=n_examples, deadline=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(CORRUPT), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(0, 9),
           st.sampled_from(["linear", "linear_grad_input", "linear_grad_values"]), st.integers(0, 2**31 - 1))
    def run(kind, G, a, c, T, op, seed):
        g = torch.Generator().manual_seed(seed)
        m, n = G * a, G * c
        x, dy = torch.randn(T, n, generator=g), torch.randn(T, m, generator=g)
        v, bias = torch.randn(G, a, c, generator=g), torch.randn(m, generator=g)
        ii, oi = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
        groups, bs = G, 1
        if kind == "in_index_range":
            ii[int(torch.randint(n, (1,), generator=g))] = n + int(torch.randint(2**40, (1,), generator=g))
        if kind == "out_index_range": oi[int(torch.randint(m, (1,), generator=g))] = m
        if kind == "in_index_negative": ii[0] = -1 - int(torch.randint(n, (1,), generator=g))
        if kind == "in_index_duplicate":
            if n < 2: return
            ii[1] = ii[0]
        if kind == "out_index_duplicate":
            if m < 2: return
            oi[-1] = oi[0]
        if kind == "in_index_dtype": ii = ii.int()
        if kind == "in_index_length": ii = torch.cat([ii, ii[:1]])
        if kind == "x_width": x, dy = torch.randn(T, n + 1), torch.randn(T, m + 1)
        if kind == "x_dtype":  # an activation whose dtype differs from values (or from the other activation)
            x, dy = x.double(), (dy.double() if op == "linear_grad_input" else dy)
        if kind == "zero_groups":
            v, x, dy, groups = torch.randn(0, a, c), torch.randn(T, 0), torch.randn(T, 0), 0
            ii = oi = bias = None
        if kind == "block_size": bs = -int(torch.randint(3, (1,), generator=g))
        if kind == "groups": groups = G * 7 + 1
        if kind == "bias_length": bias = torch.randn(m + 2)
        if kind == "bias_device": bias = torch.randn(m, device="meta")
        if kind == "x_sparse": x, dy = x.to_sparse(), dy.to_sparse()
        if op == "linear" and kind == "groups": return
        if op != "linear" and kind in ("bias_length", "bias_device"): return
        with sk.backend(backend):
            try:
                if op == "linear":
                    OPS.linear(x, v, ii, oi, bias, bs)
                elif op == "linear_grad_input":
                    OPS.linear_grad_input(dy, v, ii, oi, bs)
                else:
                    OPS.linear_grad_values(dy, x, ii, oi, groups, bs)
            except (ValueError, TypeError, IndexError) as err:
                msg = str(err)
                assert op in msg or "sao_linear" in msg, msg
                seen.add(kind)
                return
        raise AssertionError(f"{op} accepted corrupted {kind}")

    run()
    print("SEEN", ",".join(sorted(seen)))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_problems_raise_and_never_crash(backend):
    n = EXAMPLES or (40 if backend in SLOW else 150)
    proc = subprocess.run(
        [sys.executable, "-c", INVALID_SCRIPT, backend, str(n), "0" if EXAMPLES else "1", ",".join(CORRUPT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    seen = set(proc.stdout.split("SEEN", 1)[1].strip().split(","))
    assert len(seen) >= len(CORRUPT) // 2, f"too few corruption kinds exercised: {seen}"
