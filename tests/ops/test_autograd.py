"""Differentiating the three ops, on every backend: gradcheck / gradgradcheck, forward-mode
AD (jvp), torch.func (jvp, jacfwd, jacrev, hessian, vmap) against the dense reference,
double backward against the dense computation, opcheck, torch.compile and flop counts.

With the native extension the autograd kernels are C++ (csrc/ops.cpp); without it
(SAO_KERNELS_NO_EXT=1, CI's fallback run) they are Python autograd.Functions, which refuse
nested torch.func autodiff transforms with a clear error (checked here too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _backends import BACKENDS, DEVICE
from _reference import make_case, reference_grad_values, reference_weight
from torch.func import hessian, jacfwd, jacrev, jvp, vmap
from torch.utils.flop_counter import FlopCounterMode

import sao_kernels as sk
from sao_kernels import _extension

OPS = torch.ops.sao_kernels
NATIVE_AUTOGRAD = _extension.available()


def small_case(seed=2, bias=True, T=3, m=6, n=9, G=3):
    return tuple(None if t is None else t.to(DEVICE) for t in make_case(T, m, n, G, bias=bias, seed=seed))


# ------------------------------------------------------------ gradcheck (reverse, forward)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_indices", [True, False], ids=["perm", "identity"])
def test_gradcheck_gradgradcheck_and_forward_ad_linear(backend, with_indices):
    x, v, ii, oi, b, _ = small_case()
    if not with_indices:
        ii = oi = None
    inputs = tuple(t.requires_grad_(True) for t in (x, v, b))
    fn = lambda x, v, b: OPS.linear(x, v, ii, oi, b, 1)  # noqa: E731
    with sk.backend(backend):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)
        assert torch.autograd.gradcheck(
            fn,
            inputs,
            check_forward_ad=True,
            check_backward_ad=False,
            check_undefined_grad=False,
            check_batched_grad=False,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_gradgradcheck_and_forward_ad_grad_ops(backend):
    x, v, ii, oi, _, dy = small_case(seed=4, bias=False)
    for t in (x, v, dy):
        t.requires_grad_(True)
    gi = lambda dy, v: OPS.linear_grad_input(dy, v, ii, oi, 1)  # noqa: E731
    gv = lambda dy, x: OPS.linear_grad_values(dy, x, ii, oi, 3, 1)  # noqa: E731
    with sk.backend(backend):
        for fn, args in ((gi, (dy, v)), (gv, (dy, x))):
            assert torch.autograd.gradcheck(fn, args)
            assert torch.autograd.gradgradcheck(fn, args)
            assert torch.autograd.gradcheck(
                fn,
                args,
                check_forward_ad=True,
                check_backward_ad=False,
                check_undefined_grad=False,
                check_batched_grad=False,
            )


def test_forward_mode_ad_tangents_are_not_zero():
    """The defect this guards against: forward-mode AD through the ops returned zeros."""
    import torch.autograd.forward_ad as fwAD

    x, v, ii, oi, b, _ = small_case()
    t = torch.randn_like(x)
    W = reference_weight(v, ii, oi).to(DEVICE)
    with fwAD.dual_level():
        y = OPS.linear(fwAD.make_dual(x, t), v, ii, oi, b, 1)
        tangent = fwAD.unpack_dual(y).tangent
    assert tangent is not None and tangent.abs().sum() > 0
    torch.testing.assert_close(tangent, t @ W.T)


# ------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_transforms_match_dense(backend):
    x, v, ii, oi, b, _ = small_case(T=4, m=8, n=12, G=2)
    W = reference_weight(v, ii, oi).to(DEVICE)
    sao = lambda x: OPS.linear(x, v, ii, oi, b, 1).tanh()  # noqa: E731
    dense = lambda x: F.linear(x, W, b).tanh()  # noqa: E731
    t = torch.randn_like(x)
    with sk.backend(backend):
        torch.testing.assert_close(jvp(sao, (x,), (t,)), jvp(dense, (x,), (t,)))
        torch.testing.assert_close(jacfwd(sao)(x), jacfwd(dense)(x))
        torch.testing.assert_close(jacrev(sao)(x), jacrev(dense)(x))
        xs = torch.randn(5, *x.shape, dtype=x.dtype, device=DEVICE)
        torch.testing.assert_close(vmap(sao)(xs), vmap(dense)(xs))
        # values batched too: the vmap rule falls back to one call per batch element
        vs = torch.randn(5, *v.shape, dtype=v.dtype, device=DEVICE)
        got = vmap(lambda vv: OPS.linear(x, vv, ii, oi, b, 1))(vs)
        want = torch.stack([OPS.linear(x, vv, ii, oi, b, 1) for vv in vs])
        torch.testing.assert_close(got, want)
        # jacobian w.r.t. the values (jacrev through linear_grad_values)
        jv = jacrev(lambda vv: OPS.linear(x, vv, ii, oi, b, 1).sum(0))(v)
        jv_ref = jacrev(lambda vv: F.linear(x, reference_weight_like(vv, ii, oi), b).sum(0))(v)
        torch.testing.assert_close(jv, jv_ref)


def reference_weight_like(v, ii, oi):
    """Differentiable dense weight (index_put) for the torch.func reference."""
    G, a, c = v.shape
    rows = (oi if oi is not None else torch.arange(G * a, device=v.device)).view(G, a, 1)
    cols = (ii if ii is not None else torch.arange(G * c, device=v.device)).view(G, 1, c)
    return v.new_zeros(G * a, G * c).index_put((rows, cols), v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nested_transforms_hessian(backend):
    """hessian = jacfwd(jacrev): exact with the C++ autograd kernels; refused (never silent
    zeros) by the Python fallback."""
    x, v, ii, oi, b, _ = small_case(T=2, m=4, n=6, G=2)
    W = reference_weight(v, ii, oi).to(DEVICE)
    sao = lambda x: OPS.linear(x, v, ii, oi, b, 1).tanh().sum()  # noqa: E731
    dense = lambda x: F.linear(x, W, b).tanh().sum()  # noqa: E731
    with sk.backend(backend):
        if NATIVE_AUTOGRAD:
            torch.testing.assert_close(hessian(sao)(x), hessian(dense)(x))
            t = torch.randn_like(x)
            torch.testing.assert_close(jvp(torch.func.grad(sao), (x,), (t,)), jvp(torch.func.grad(dense), (x,), (t,)))
        else:
            with pytest.raises(NotImplementedError, match="nested torch.func"):
                hessian(sao)(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_dense(backend):
    """Hessian-vector products through the op equal those of the dense computation."""
    x, v, ii, oi, b, _ = small_case(T=5, m=48, n=24, G=2, seed=9)
    W0 = reference_weight(v, ii, oi).to(DEVICE)
    mask = W0 != 0
    with sk.backend(backend):
        xs, vs = x.clone().requires_grad_(True), v.clone().requires_grad_(True)
        loss = OPS.linear(xs, vs, ii, oi, b, 1).tanh().square().sum()
        gx, gv = torch.autograd.grad(loss, (xs, vs), create_graph=True)
        hx = torch.autograd.grad(gx.sum() + gv.sum(), (xs, vs))
    xd, Wd = x.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    gxd, gWd = torch.autograd.grad(F.linear(xd, Wd * mask, b).tanh().square().sum(), (xd, Wd), create_graph=True)
    hxd = torch.autograd.grad(gxd.sum() + (gWd * mask).sum(), (xd, Wd))
    torch.testing.assert_close(gx, gxd)
    torch.testing.assert_close(gv.cpu(), reference_grad_values(gWd.cpu(), ii, oi, 2))
    torch.testing.assert_close(hx[0], hxd[0])
    torch.testing.assert_close(hx[1].cpu(), reference_grad_values(hxd[1].cpu(), ii, oi, 2))


def test_backward_of_a_saved_index_modified_in_place_raises():
    """The autograd node saves the index maps with their versions: rewriting one between
    forward and backward is an error, not a silently wrong gradient."""
    x, v, ii, oi, b, _ = small_case()
    v.requires_grad_(True)
    y = OPS.linear(x, v, ii, oi, b, 1)
    ii.copy_(ii.flip(0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# ----------------------------------------------------------------------------- opcheck
def _opcheck_args(op_name, with_indices, with_bias, dtype=torch.float64):
    x, v, ii, oi, b, dy = make_case(
        4, 12, 18, 3, in_perm=with_indices, out_perm=with_indices, bias=with_bias, dtype=dtype, seed=5
    )
    for t in (x, v, dy, b):
        if t is not None:
            t.requires_grad_(True)
    if op_name == "linear":
        return (x, v, ii, oi, b, 1)
    if op_name == "linear_grad_input":
        return (dy, v, ii, oi, 1)
    return (dy, x, ii, oi, 3, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "op_name,with_indices,with_bias",
    [
        ("linear", True, True),
        ("linear", False, False),
        ("linear", True, False),
        ("linear_grad_input", True, False),
        ("linear_grad_input", False, False),
        ("linear_grad_values", True, False),
        ("linear_grad_values", False, False),
    ],
)
def test_opcheck(backend, op_name, with_indices, with_bias):
    args = _opcheck_args(op_name, with_indices, with_bias)
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    with sk.backend(backend):
        result = torch.library.opcheck(getattr(OPS, op_name), args)
    assert all(v == "SUCCESS" for v in result.values()), result


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_training_step_compiles_and_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = sk.SAOLinear(48, 24, groups=2).to(DEVICE)
    x = torch.randn(5, 48, device=DEVICE)
    with sk.backend(backend):
        eager = layer(x)
        eager.square().sum().backward()
        g_eager = layer.values.grad.clone()
        layer.zero_grad(set_to_none=True)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        got = compiled(x)
        got.square().sum().backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.values.grad, g_eager, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- flop counts
@pytest.mark.parametrize("m,n,G", [(48, 24, 2), (96, 192, 4), (40, 24, 8)], ids=str)
def test_flop_counter_forward_and_backward(m, n, G):
    T = 37
    x, v, ii, oi, b, dy = make_case(T, m, n, G, bias=True)
    for t in (x, v, b):
        t.requires_grad_(True)
    expected = 2 * T * m * n // G
    with FlopCounterMode(display=False) as fwd:
        OPS.linear(x, v, ii, oi, b, 1)
    assert fwd.get_total_flops() == expected
    with FlopCounterMode(display=False) as both:
        OPS.linear(x, v, ii, oi, b, 1).backward(dy)
    assert both.get_total_flops() == 3 * expected
    counts = both.get_flop_counts()["Global"]
    assert {str(k): c for k, c in counts.items()} == {
        "sao_kernels.linear": expected,
        "sao_kernels.linear_grad_input": expected,
        "sao_kernels.linear_grad_values": expected,
    }


def test_flop_counter_values_only_backward():
    """Without x.requires_grad only dV is computed: forward + one product."""
    T, m, n, G = 5, 48, 24, 2
    x, v, ii, oi, _, dy = make_case(T, m, n, G, in_perm=True, out_perm=False, bias=False)
    v.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        OPS.linear(x, v, ii, oi, None, 1).backward(dy)
    assert fc.get_total_flops() == 2 * (2 * T * m * n // G)


def test_flop_counter_sao_linear_layer():
    layer = sk.SAOLinear(96, 48, groups=4, dtype=torch.float64)
    x = torch.randn(2, 7, 96, dtype=torch.float64)
    with FlopCounterMode(display=False) as fc:
        layer(x)
    assert fc.get_total_flops() == 2 * 14 * 48 * 96 // 4
