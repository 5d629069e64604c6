"""torch.ops.sao_kernels.linear_act: act(linear(...)) against the float64 reference (forward,
dX, dV, db), on every CPU path (native epilogue: brgemm, few-token, decode; the composite),
opcheck, autograd (gradcheck, double backward, forward mode), autocast, bad input, and the
build without the extension (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _reference import TOL, make_case, reference_weight

import sao_kernels as sk
from sao_kernels import _extension

ACTS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}
op = torch.ops.sao_kernels.linear_act


def reference(x, values, ii, oi, b, dy, act):
    """(y, dX, dV, db) in float64 through autograd on the dense reference weight."""
    W = reference_weight(values, ii, oi).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    b64 = None if b is None else b.detach().double().requires_grad_(True)
    y = ACTS[act](F.linear(x64, W, b64))
    grads = torch.autograd.grad(y, [x64, W] + ([b64] if b is not None else []), dy.double())
    G, a, c = values.shape
    iiv = torch.arange(G * c) if ii is None else ii
    oiv = torch.arange(G * a) if oi is None else oi
    dv = torch.stack([grads[1][oiv[g * a : (g + 1) * a, None], iiv[None, g * c : (g + 1) * c]] for g in range(G)])
    return y.detach(), grads[0], dv, (grads[2] if b is not None else None)


def check(got, want, dtype, name):
    scale = max(float(want.abs().max()), 1.0)
    err = float((got.detach().double() - want).abs().max())
    assert got.dtype == dtype, name
    assert err <= 2 * TOL[dtype] * scale, f"{name}: max error {err:.3e} > {2 * TOL[dtype]:.1e} * {scale:.3g}"


# T: 3 (decode), 40 (float32 few-token path), 130 (brgemm, several token blocks)
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(("T", "out_perm", "bias"), [(3, True, True), (40, False, True), (130, True, False)])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matches_reference(act, dtype, T, out_perm, bias, backend):
    x, v, ii, oi, b, dy = make_case(T, 96, 64, 4, out_perm=out_perm, bias=bias, dtype=dtype, seed=T)
    want = reference(x, v, ii, oi, b, dy, act)
    x.requires_grad_(True)
    v.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)
    with sk.backend(backend):
        y = op(x, v, ii, oi, b, 1, act)
        grads = torch.autograd.grad(y, [x, v] + ([b] if b is not None else []), dy)
    for name, got, w in zip(("y", "dx", "dv", "db"), (y, *grads), want):
        check(got, w, dtype, f"{act} {dtype} T={T} {backend} {name}")


# inference: no pre-activation is kept, so every activation (GELU too) runs in the kernels'
# epilogue (the float32 few-token / brgemm paths, the bfloat16 micro-kernel) or right after the
# product (decode, float16)
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize(("T", "out_perm", "bias"), [(3, True, True), (40, False, True), (130, True, False)])
def test_inference_matches_reference(act, dtype, T, out_perm, bias, monkeypatch):
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")
    x, v, ii, oi, b, dy = make_case(T, 96, 2 * 4 * 33, 4, out_perm=out_perm, bias=bias, dtype=dtype, seed=T)
    x, b = x * 4, None if b is None else b * 4  # pre-activations over +-4 and beyond
    want = reference(x, v, ii, oi, b, dy, act)[0]
    with torch.inference_mode():
        y = op(x, v, ii, oi, b, 1, act)
    check(y, want, dtype, f"{act} {dtype} T={T} inference")


@pytest.mark.parametrize("act", sorted(ACTS))
def test_native_equals_unfused_layer(act):
    """The fused op against SAOLinear + the activation module (float32, default path)."""
    torch.manual_seed(0)
    layer = sk.SAOLinear(128, 256, groups=4)
    x = torch.randn(70, 128, requires_grad=True)
    y_ref = ACTS[act](layer(x))
    y = sk.sao_linear_act(x, layer.values, layer.in_index, layer.out_index, layer.bias, 1, act)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    a = torch.autograd.grad(y, [x, layer.values, layer.bias], g)
    r = torch.autograd.grad(y_ref, [x, layer.values, layer.bias], g)
    for got, want in zip(a, r):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_leading_dims_and_inference_mode():
    x, v, ii, oi, b, _ = make_case(12, 32, 16, 2, dtype=torch.float32)
    x3 = x.view(3, 4, 16)
    with torch.inference_mode():
        y = sk.sao_linear_act(x3, v, ii, oi, b, 1, "relu")
    assert y.shape == (3, 4, 32)
    torch.testing.assert_close(y.view(12, 32), torch.relu(sk.sao_linear(x, v, ii, oi, b)))


@pytest.mark.parametrize("act", sorted(ACTS))
def test_gradcheck_and_double_backward(act):
    x, v, ii, oi, b, _ = make_case(5, 12, 8, 2, dtype=torch.float64, seed=3)
    args = [t.requires_grad_(True) for t in (x, v, b)]

    def f(x, v, b):
        return op(x, v, ii, oi, b, 1, act)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("act", sorted(ACTS))
def test_forward_mode(act):
    x, v, ii, oi, b, _ = make_case(6, 12, 8, 2, dtype=torch.float64, seed=5)
    tx, tv, tb = torch.randn_like(x), torch.randn_like(v), torch.randn_like(b)
    _, got = torch.func.jvp(lambda x, v, b: op(x, v, ii, oi, b, 1, act), (x, v, b), (tx, tv, tb))
    W, dW = reference_weight(v, ii, oi), reference_weight(tv, ii, oi)
    _, want = torch.func.jvp(lambda x, W, b: ACTS[act](F.linear(x, W, b)), (x, W, b), (tx, dW, tb))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(act, dtype):
    x, v, ii, oi, b, _ = make_case(9, 16, 8, 2, dtype=dtype, seed=1)
    for t in (x, v, b):
        t.requires_grad_(True)
    torch.library.opcheck(op.default, (x, v, ii, oi, b, 1, act))


def test_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, v = torch.empty(7, 16), torch.empty(4, 8, 4)
        y = op(x, v, None, None, None, 1, "gelu")
    assert y.shape == (7, 32)


def test_autocast_runs_bfloat16():
    x, v, ii, oi, b, _ = make_case(20, 32, 16, 2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, v, ii, oi, b, 1, "tanh")
    assert y.dtype == torch.bfloat16
    want = torch.tanh(sk.sao_linear(x.bfloat16(), v.bfloat16(), ii, oi, b.bfloat16()))
    torch.testing.assert_close(y, want, rtol=2e-2, atol=2e-2)


def test_bad_input():
    x, v, ii, oi, b, _ = make_case(4, 16, 8, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"activation='silu' is not supported; allowed: 'tanh', 'relu', 'gelu'"):
        op(x, v, ii, oi, b, 1, "silu")
    with pytest.raises(ValueError, match=r"activation='silu' is not supported"):
        sk.sao_linear_act(x, v, ii, oi, b, 1, "silu")
    with pytest.raises(ValueError, match="in_features"):
        op(x[:, :4], v, ii, oi, b, 1, "tanh")
    with pytest.raises((ValueError, IndexError), match="in_index"):
        op(x, v, ii.flip(0) * 0, oi, b, 1, "relu")
    with pytest.raises(TypeError, match="dtype"):
        op(x.double(), v, ii, oi, b, 1, "tanh")


NO_EXT_SCRIPT = r"""
import torch, torch.nn.functional as F, sao_kernels as sk
assert not sk.ops.NATIVE
torch.manual_seed(0)
layer = sk.SAOLinear(32, 64, groups=4)
x = torch.randn(10, 32, requires_grad=True)
for act, f in (("tanh", torch.tanh), ("relu", torch.relu), ("gelu", F.gelu)):
    y = sk.sao_linear_act(x, layer.values, layer.in_index, layer.out_index, layer.bias, 1, act)
    r = f(layer(x))
    torch.testing.assert_close(y, r)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, layer.values, layer.bias], g),
                    torch.autograd.grad(r, [x, layer.values, layer.bias], g)):
        torch.testing.assert_close(a, b)
try:
    torch.ops.sao_kernels.linear_act(x, layer.values, None, None, None, 1, "selu")
except ValueError as e:
    assert "allowed: 'tanh', 'relu', 'gelu'" in str(e)
else:
    raise AssertionError("no error")
print("OK")
"""


def test_without_extension_in_a_subprocess():
    env = dict(os.environ, **{_extension.ENV_NO_EXT: "1"})
    proc = subprocess.run([sys.executable, "-c", NO_EXT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
