"""Bad arguments to the three ops, on every backend: a clear exception naming the argument and
what is allowed, never a crash, never garbage.  The C++ CPU kernels (native) and the Python
implementations (torch, dense, triton) run the same checks with the same messages.

Cases that crashed or returned garbage before these checks existed (zero groups on the native
backend, huge or negative indices on triton, strided indices and bias on triton) run in a
subprocess, so that a regression is a test failure, not a dead test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _backends import BACKENDS, DEVICE
from _reference import make_case

import sao_kernels as sk

OPS = torch.ops.sao_kernels


@pytest.fixture
def good():
    return tuple(None if t is None else t.to(DEVICE) for t in make_case(4, 48, 24, 2, bias=True))


def raises(backend, exc, match, fn):
    with sk.backend(backend), pytest.raises(exc, match=match):
        fn()


# ------------------------------------------------------------------------- activations
@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_feature_size_or_rank_names_x(backend, good):
    x, v, ii, oi, b, _ = good
    raises(
        backend,
        ValueError,
        r"linear: x must have shape \(T, in_features=24\), got \(4, 25\)",
        lambda: OPS.linear(torch.randn(4, 25, dtype=x.dtype, device=DEVICE), v, ii, oi, b, 1),
    )
    raises(
        backend,
        ValueError,
        r"\bx\b must have shape \(T, in_features=24\), got \(24,\)",
        lambda: OPS.linear(x[0], v, ii, oi, b, 1),
    )
    raises(
        backend,
        ValueError,
        r"\bx\b must have shape \(T, in_features=24\), got \(\)",
        lambda: OPS.linear(x[0, 0], v, ii, oi, b, 1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_mismatch_names_x_and_values(backend, good):
    x, v, ii, oi, b, _ = good
    raises(
        backend,
        TypeError,
        r"\bx\b has dtype torch.float32 but values have torch.float64; they must match",
        lambda: OPS.linear(x.float(), v, ii, oi, b, 1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_must_be_3d_float_with_groups(backend, good):
    x, v, ii, oi, b, _ = good
    raises(
        backend,
        ValueError,
        r"values must be a floating tensor of shape \(G, m/G, n/G\)",
        lambda: OPS.linear(x, v[0], ii, oi, b, 1),
    )
    raises(
        backend,
        ValueError,
        r"values must be a floating tensor",
        lambda: OPS.linear(x.long(), v.long(), ii, oi, None, 1),
    )
    raises(
        backend,
        ValueError,
        r"values must have G >= 1 groups and non-empty blocks, got shape \(0, 4, 4\)",
        lambda: OPS.linear(
            torch.randn(5, 0, dtype=x.dtype, device=DEVICE),
            torch.randn(0, 4, 4, dtype=x.dtype, device=DEVICE),
            None,
            None,
            None,
            1,
        ),
    )


# ----------------------------------------------------------------------------- indices
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["in_index", "out_index"])
def test_index_dtype_and_shape_name_the_index(backend, name, good):
    x, v, ii, oi, b, _ = good
    size = 24 if name == "in_index" else 48
    good_idx = ii if name == "in_index" else oi

    def call(bad):
        args = dict(in_index=ii, out_index=oi)
        args[name] = bad
        return lambda: OPS.linear(x, v, args["in_index"], args["out_index"], b, 1)

    raises(backend, ValueError, rf"{name} must be an int64 tensor, got dtype torch.int32", call(good_idx.int()))
    raises(
        backend, ValueError, rf"{name} must have shape \({size},\), got \(5,\)", call(torch.arange(5, device=DEVICE))
    )
    raises(backend, ValueError, rf"{name} must have shape \({size},\)", call(good_idx.view(2, -1)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["in_index", "out_index"])
def test_out_of_range_or_negative_index_is_an_index_error(backend, name, good):
    """Including the dense backend, whose gather used to wrap negative indices Python-style."""
    x, v, ii, oi, b, dy = good
    size = 24 if name == "in_index" else 48
    for pos, bad_value in ((3, -1), (size - 1, size), (0, 10**12)):
        bad = (ii if name == "in_index" else oi).clone()
        bad[pos] = bad_value
        args = dict(in_index=ii, out_index=oi)
        args[name] = bad
        msg = rf"{name} has entries outside \[0, {size}\): {name}\[{pos}\] = {bad_value}"
        ai, ao = args["in_index"], args["out_index"]
        raises(backend, IndexError, msg, lambda ai=ai, ao=ao: OPS.linear(x, v, ai, ao, b, 1))
        raises(backend, IndexError, msg, lambda ai=ai, ao=ao: OPS.linear_grad_input(dy, v, ai, ao, 1))
        raises(backend, IndexError, msg, lambda ai=ai, ao=ao: OPS.linear_grad_values(dy, x, ai, ao, 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["in_index", "out_index"])
def test_duplicated_index_entries_are_refused(backend, name, good):
    """A duplicate leaves some feature unwritten: before, its column was uninitialised memory."""
    x, v, ii, oi, b, dy = good
    bad = (ii if name == "in_index" else oi).clone()
    bad[5] = bad[2]
    dup = int(bad[2])
    args = dict(in_index=ii, out_index=oi)
    args[name] = bad
    msg = rf"{name} has duplicated entries \(feature {dup} appears 2 times\)"
    raises(backend, ValueError, msg, lambda: OPS.linear(x, v, args["in_index"], args["out_index"], b, 1))
    raises(backend, ValueError, msg, lambda: OPS.linear_grad_input(dy, v, args["in_index"], args["out_index"], 1))
    raises(backend, ValueError, msg, lambda: OPS.linear_grad_values(dy, x, args["in_index"], args["out_index"], 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_rewritten_in_place_is_checked_again(backend, good):
    """The checks (and the identity shortcut) follow the index's data, not a stale verdict."""
    x, v, _, oi, b, _ = good
    ii = torch.arange(24, device=DEVICE)
    with sk.backend(backend):
        OPS.linear(x, v, ii, oi, b, 1)  # identity: no gather
        perm = torch.randperm(24).to(DEVICE)
        ii.copy_(perm)
        y = OPS.linear(x, v, ii, oi, b, 1)
        torch.testing.assert_close(y, OPS.linear(x, v, perm.clone(), oi, b, 1))
        assert not torch.allclose(y, OPS.linear(x, v, None, oi, b, 1))
        ii[0] = 99
        with pytest.raises(IndexError, match="in_index has entries outside"):
            OPS.linear(x, v, ii, oi, b, 1)


# ---------------------------------------------------------------- bias, block_size, grads
@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_wrong_shape_dtype_names_bias(backend, good):
    x, v, ii, oi, b, _ = good
    raises(
        backend,
        ValueError,
        r"bias must have shape \(48,\) or be None, got \(47,\)",
        lambda: OPS.linear(x, v, ii, oi, b[:-1], 1),
    )
    raises(backend, ValueError, r"bias must have shape \(48,\)", lambda: OPS.linear(x, v, ii, oi, b.view(2, 24), 1))
    raises(
        backend,
        TypeError,
        r"bias has dtype torch.float32 but values have torch.float64",
        lambda: OPS.linear(x, v, ii, oi, b.float(), 1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_size_must_be_positive(backend, good):
    x, v, ii, oi, b, dy = good
    for bs in (0, -4):
        raises(
            backend,
            ValueError,
            rf"block_size must be a positive int, got {bs}",
            lambda bs=bs: OPS.linear(x, v, ii, oi, b, bs),
        )
        raises(backend, ValueError, "block_size", lambda bs=bs: OPS.linear_grad_input(dy, v, ii, oi, bs))
        raises(backend, ValueError, "block_size", lambda bs=bs: OPS.linear_grad_values(dy, x, ii, oi, 2, bs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_ops_bad_arguments(backend, good):
    x, v, ii, oi, b, dy = good
    raises(
        backend,
        ValueError,
        r"linear_grad_input: grad_out must have shape \(T, out_features=48\)",
        lambda: OPS.linear_grad_input(dy[:, :-1], v, ii, oi, 1),
    )
    raises(
        backend,
        TypeError,
        r"grad_out has dtype torch.float32 but values have torch.float64",
        lambda: OPS.linear_grad_input(dy.float(), v, ii, oi, 1),
    )
    for groups in (5, 0, -2):
        raises(
            backend,
            ValueError,
            rf"groups={groups} must be a positive int dividing m=48 and n=24",
            lambda groups=groups: OPS.linear_grad_values(dy, x, ii, oi, groups, 1),
        )
    raises(backend, ValueError, "share T", lambda: OPS.linear_grad_values(dy[:-1], x, ii, oi, 2, 1))
    raises(backend, ValueError, r"grad_out must be a 2-D", lambda: OPS.linear_grad_values(dy[0], x, ii, oi, 2, 1))
    raises(
        backend, TypeError, r"must share a floating dtype", lambda: OPS.linear_grad_values(dy.float(), x, ii, oi, 2, 1)
    )
    raises(backend, ValueError, "in_index", lambda: OPS.linear_grad_values(dy, x, ii[:-1], oi, 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_tensors_are_checked_too(backend, good):
    """Under torch.compile / FakeTensorMode the shape checks run on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, v, ii, oi, b, _ = good
    wide, ii32 = torch.randn(4, 25, dtype=x.dtype, device=DEVICE), ii.int()
    with FakeTensorMode() as mode, sk.backend(backend):
        fx, fv, fii, foi, fb, fwide, fii32 = (mode.from_tensor(t) for t in (x, v, ii, oi, b, wide, ii32))
        assert OPS.linear(fx, fv, fii, foi, fb, 1).shape == (4, 48)
        with pytest.raises(ValueError, match=r"x must have shape \(T, in_features=24\)"):
            OPS.linear(fwide, fv, fii, foi, fb, 1)
        with pytest.raises(ValueError, match="in_index must be an int64"):
            OPS.linear(fx, fv, fii32, foi, fb, 1)


# --------------------------------------------------- cases that used to crash, isolated
def run_isolated(code: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_groups_bf16_raises_instead_of_sigfpe(backend):
    out = run_isolated(f"""
        import torch, sao_kernels as sk
        with sk.backend({backend!r}):
            try:
                torch.ops.sao_kernels.linear(torch.randn(5, 0, dtype=torch.bfloat16), torch.randn(0, 4, 4,
                                             dtype=torch.bfloat16), None, None, None, 1)
            except ValueError as err:
                print("RAISED", err)
    """)
    assert "RAISED linear: values must have G >= 1 groups" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_and_negative_indices_raise_instead_of_reading_memory(backend):
    out = run_isolated(f"""
        import torch, sao_kernels as sk
        x, v = torch.randn(3, 8), torch.randn(2, 4, 4)
        for bad in (torch.tensor([0, 1, 2, 3, 4, 5, 6, 2**40]), torch.tensor([0, 1, 2, 3, 4, 5, 6, -7])):
            for call in (lambda: torch.ops.sao_kernels.linear(x, v, bad, None, None, 1),
                         lambda: torch.ops.sao_kernels.linear(x, v, None, bad, None, 1)):
                try:
                    with sk.backend({backend!r}):
                        call()
                except IndexError as err:
                    print("RAISED")
    """)
    assert out.count("RAISED") == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_index_and_bias_give_correct_results(backend):
    """A valid permutation stored with strides (e.g. load_state_dict(assign=True) from a strided
    source) and a strided bias: the results must not change (triton read them as contiguous)."""
    out = run_isolated(f"""
        import torch, sao_kernels as sk
        g = torch.Generator().manual_seed(0)
        x, v = torch.randn(7, 48, generator=g), torch.randn(3, 8, 16, generator=g)
        ii, oi, b = torch.randperm(48, generator=g), torch.randperm(24, generator=g), torch.randn(24, generator=g)
        ii_s = torch.stack([ii, ii], 1).reshape(-1)[::2]
        oi_s = torch.stack([oi, oi], 1).reshape(-1)[::2]
        b_s = torch.stack([b, b], 1).reshape(-1)[::2]
        assert not (ii_s.is_contiguous() or oi_s.is_contiguous() or b_s.is_contiguous())
        with sk.backend({backend!r}):
            want = torch.ops.sao_kernels.linear(x, v, ii, oi, b, 1)
            got = torch.ops.sao_kernels.linear(x, v, ii_s, oi_s, b_s, 1)
        print("MAXERR", float((got - want).abs().max()))
    """)
    err = float(out.split("MAXERR")[1])
    assert err < 1e-5, out
