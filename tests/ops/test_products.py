"""The three products on every backend against the float64 reference (tests/ops/_reference.py).

``torch.ops.sao_kernels.linear`` (forward), ``linear_grad_input`` (dX) and
``linear_grad_values`` (dV), called directly and through autograd of ``linear`` (dX, dV, db
together): shapes with m != n both ways, block sides that are not powers of two, G from 1 to
8, token counts 0 / 1 / odd, identity / one / both index maps permuted, bias or not,
block_size runs, float64 / float32 / bfloat16 / float16, strided inputs.  Outputs are
pre-filled with NaN (SAO_KERNELS_POISON=1: native, triton and the composite honour it), so an
element a kernel forgets to write fails.  Shapes (T, m, n, G, block_size).
"""

from __future__ import annotations

import pytest
import torch
from _backends import BACKENDS, DEVICE, FAST_BACKENDS
from _reference import assert_close_rel, make_case, reference, reference_weight

import sao_kernels as sk

OPS = torch.ops.sao_kernels

# Small enough for Triton's interpreter: m != n both ways, group sides 24/12/16/5/3/96/16,
# G 1..8, block_size 1 and 16.
SMALL = [
    (5, 24, 48, 1, 1),
    (37, 48, 24, 2, 1),
    (1, 72, 48, 3, 1),
    (70, 40, 24, 8, 1),
    (37, 192, 96, 2, 16),
    (5, 128, 256, 8, 16),
]
# Shapes that reach every path of the native kernels (csrc/native_kernels.cpp): the BLAS
# path below 16 tokens, the transposed few-token forward (T*G*(a+c) < G*a*c), token / K / N
# block tails, group chunks, split dV rows.
NATIVE_PATHS = [
    (1, 48, 24, 2, 1),
    (20, 200, 200, 2, 1),
    (129, 96, 192, 4, 1),
    (70, 520, 600, 2, 1),
    (300, 136, 1040, 4, 1),
    (0, 96, 192, 4, 1),
]
CASES = [(s, b) for s in SMALL for b in BACKENDS] + [(s, b) for s in NATIVE_PATHS for b in FAST_BACKENDS]
PERMS = {"identity": (False, False), "in": (True, False), "out": (False, True), "both": (True, True)}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")


def on_device(case):
    return tuple(None if t is None else t.to(DEVICE) for t in case)


def run_ops(x, values, in_index, out_index, b, dy, block_size=1):
    """The three ops called directly, then the same products through autograd of linear."""
    G = values.shape[0]
    y = OPS.linear(x, values, in_index, out_index, b, block_size)
    dx = OPS.linear_grad_input(dy, values, in_index, out_index, block_size)
    dv = OPS.linear_grad_values(dy, x, in_index, out_index, G, block_size)
    xr = x.detach().clone().requires_grad_(x.is_floating_point())
    vr = values.detach().clone().requires_grad_(True)
    br = None if b is None else b.detach().clone().requires_grad_(True)
    y2 = OPS.linear(xr, vr, in_index, out_index, br, block_size)
    y2.backward(dy)
    return {
        "y": y,
        "dx": dx,
        "dv": dv,
        "autograd y": y2.detach(),
        "autograd dx": xr.grad,
        "autograd dv": vr.grad,
        "autograd db": None if br is None else br.grad,
    }


def check(got, want, dtype):
    y, dx, dv, db = want
    expect = {"y": y, "dx": dx, "dv": dv, "autograd y": y, "autograd dx": dx, "autograd dv": dv, "autograd db": db}
    for name, g in got.items():
        if g is not None:
            assert_close_rel(g, expect[name], dtype, name)


def backend_id(v):
    return v if isinstance(v, str) else "T{}-m{}-n{}-G{}-b{}".format(*v)


# ----------------------------------------------------------------- float64 equivalence
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("perm", list(PERMS))
@pytest.mark.parametrize("shape,backend", CASES, ids=backend_id)
def test_float64_matches_reference(shape, backend, perm, bias):
    T, m, n, G, b = shape
    in_perm, out_perm = PERMS[perm]
    case = make_case(T, m, n, G, b, in_perm=in_perm, out_perm=out_perm, bias=bias, seed=T * 7 + m + n)
    want = reference(*case)
    with sk.backend(backend):
        got = run_ops(*on_device(case), block_size=b)
    check(got, want, torch.float64)


def test_reference_is_not_trivially_equal_to_identity_layout():
    """Guard on the reference itself: permuting the indices changes the dense weight."""
    x, v, ii, oi, b, dy = make_case(3, 48, 24, 2, bias=False)
    assert not torch.equal(reference_weight(v, ii, oi), reference_weight(v, None, None))
    y = OPS.linear(x, v, ii, oi, None, 1)
    assert not torch.allclose(y, OPS.linear(x, v, None, None, None, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_index_equals_none(backend):
    """An explicit arange index is detected as the identity: the same results as None."""
    x, v, _, _, b, dy = on_device(make_case(9, 48, 72, 3, bias=True, seed=4))
    ar_in, ar_out = torch.arange(72, device=DEVICE), torch.arange(48, device=DEVICE)
    with sk.backend(backend):
        got = run_ops(x, v, ar_in, ar_out, b, dy)
        want = run_ops(x, v, None, None, b, dy)
    for name in got:
        if got[name] is not None:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


# -------------------------------------------------------------------- other dtypes
LOW = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    "shape,backend",
    [(s, b) for s in SMALL[1::2] for b in BACKENDS]
    + [(s, b) for s in NATIVE_PATHS[1:5] for b in FAST_BACKENDS if b != "dense"],
    ids=backend_id,
)
def test_low_precision_matches_float64_reference(shape, backend, dtype):
    T, m, n, G, b = shape
    case = make_case(T, m, n, G, b, bias=True, dtype=dtype, seed=3)
    want = reference(*case)  # float64 math on the already-rounded inputs
    with sk.backend(backend):
        got = run_ops(*on_device(case), block_size=b)
    check(got, want, dtype)


# ------------------------------------------------------------------- block_size runs
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [4, 16])
def test_block_size_runs_and_a_false_promise(backend, block_size):
    """Index maps in aligned runs of block_size take the run paths; a block_size whose runs do
    not hold (element-level permutations, or a block side it does not divide) is verified
    and not trusted: element-level gathers, the same results."""
    dtype = torch.float32
    case = make_case(21, 128, 256, 4, block_size, bias=True, dtype=dtype, seed=3)
    want = reference(*case)
    with sk.backend(backend):
        for bs in (block_size, 1):
            check(run_ops(*on_device(case), block_size=bs), want, dtype)
        x, v, _, _, b, dy = case  # element-level permutations passed with block_size > 1
        ii, oi = torch.randperm(256), torch.randperm(128)
        check(run_ops(*on_device((x, v, ii, oi, b, dy)), block_size=block_size), reference(x, v, ii, oi, b, dy), dtype)
        # block_size that divides neither block side (a = 32, c = 64): nothing to promise
        check(run_ops(*on_device(case), block_size=3), want, dtype)


# ------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """Strided activations, values, indices and bias (row-strided, column-major, sliced)."""
    T, m, n, G = 23, 48, 72, 3
    dtype = torch.float64
    x, v, ii, oi, b, dy = make_case(T, m, n, G, bias=True, seed=21)
    want = reference(x, v, ii, oi, b, dy)
    wide = torch.zeros(T, n + 40, dtype=dtype)
    x_rows = wide[:, 17 : 17 + n]
    x_rows.copy_(x)  # row stride n + 40
    x_cols = x.t().contiguous().t()  # column-major
    x_sliced = torch.zeros(T, 2 * n, dtype=dtype)[:, ::2]
    x_sliced.copy_(x)  # column stride 2
    dy_t = dy.t().contiguous().t()
    v_t = v.transpose(1, 2).contiguous().transpose(1, 2)
    ii_s = torch.empty(2 * n, dtype=torch.long)[::2]
    ii_s.copy_(ii)
    oi_s = torch.empty(2 * m, dtype=torch.long)[::2]
    oi_s.copy_(oi)
    b_s = torch.empty(2 * m, dtype=dtype)[::2]
    b_s.copy_(b)
    for xx, dd in ((x_rows, dy_t), (x_cols, dy), (x_sliced, dy_t)):
        assert not (xx.is_contiguous() or v_t.is_contiguous() or ii_s.is_contiguous() or b_s.is_contiguous())
        with sk.backend(backend):
            got = run_ops(*on_device((xx, v_t, ii_s, oi_s, b_s, dd)))
        check(got, want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_grad_through_autograd(backend):
    x, v, ii, oi, b, dy = on_device(make_case(6, 48, 24, 2, bias=True, seed=8))
    want = reference(x, v, ii, oi, b, dy)
    xr, vr = x.clone().requires_grad_(True), v.clone().requires_grad_(True)
    with sk.backend(backend):
        y = OPS.linear(xr, vr, ii, oi, b, 1)
        dy_nc = dy.T.contiguous().T
        assert not dy_nc.is_contiguous()
        y.backward(dy_nc)
        ones = torch.zeros_like(y)
        (gx,) = torch.autograd.grad(OPS.linear(xr, vr, ii, oi, b, 1).sum(), xr)  # an expanded (stride 0) grad
    assert_close_rel(xr.grad, want[1], torch.float64, "dx")
    assert_close_rel(vr.grad, want[2], torch.float64, "dv")
    assert_close_rel(gx, reference(x, v, ii, oi, b, ones + 1)[1], torch.float64, "dx of sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("perm", [False, True])
def test_empty_batch(backend, perm):
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x, v, ii, oi, b, dy = on_device(make_case(0, 96, 192, 4, in_perm=perm, out_perm=perm, dtype=dtype))
        with sk.backend(backend):
            y = OPS.linear(x, v, ii, oi, b, 1)
            dx = OPS.linear_grad_input(dy, v, ii, oi, 1)
            dv = OPS.linear_grad_values(dy, x, ii, oi, 4, 1)
        assert y.shape == (0, 96) and dx.shape == (0, 192) and dv.shape == (4, 24, 48)
        assert dv.dtype == dtype and torch.equal(dv, torch.zeros_like(dv))


# --------------------------------------------------------------------- determinism
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_values_is_deterministic(backend):
    """No atomics anywhere: two runs of every product are bitwise identical."""
    x, v, ii, oi, b, dy = on_device(make_case(70, 64, 64, 4, dtype=torch.float32, seed=2))
    with sk.backend(backend):
        runs = [run_ops(x, v, ii, oi, b, dy) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
