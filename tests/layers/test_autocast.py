"""SAO layers and ops under ``torch.autocast`` follow autocast's own rule, as nn.Linear /
nn.Conv2d do: floating tensors other than float64 on the autocast device run in the autocast
dtype; float64 stays float64 and integer inputs are not cast (so they raise, as nn.Linear's
do).  The layers used to cast everything (float64 to bfloat16, integers silently).  Each case
is held to the dense layer with the same weight under the same autocast: same dtype out, or
both raise.  (The CUDA twin is in tests/gpu/test_gpu.py.)
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import sao_kernels as sk

OPS = torch.ops.sao_kernels
F64 = torch.float64
INPUT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64]
LAYER_DTYPES = [torch.float32, torch.float64, torch.bfloat16]
AUTOCAST = [None, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _autocast(dtype, device="cpu"):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device, dtype=dtype)


def _pair_linear(dtype, device="cpu"):
    layer = sk.SAOLinear(16, 32, sparsity=0.75, dtype=F64, device=device)
    layer.in_index.copy_(torch.randperm(16, device=device))
    dense = nn.Linear(16, 32, dtype=F64, device=device)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    return layer.to(dtype), dense.to(dtype)


def _pair_conv(dtype, device="cpu"):
    layer = sk.SAOConv2d(8, 16, 3, sparsity=0.5, padding=1, dtype=F64, device=device)
    layer.in_index.copy_(torch.randperm(8, device=device))
    dense = nn.Conv2d(8, 16, 3, padding=1, dtype=F64, device=device)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    return layer.to(dtype), dense.to(dtype)


def _outcome(module, x, cast):
    with _autocast(cast, x.device.type):
        try:
            return module(x)
        except (RuntimeError, TypeError, ValueError) as err:
            return err


def check_against_dense(ours, dense, x, cast):
    """Same raising and the same output dtype as the dense module; values close to float64."""
    got, want = _outcome(ours, x, cast), _outcome(dense, x, cast)
    assert isinstance(got, Exception) == isinstance(want, Exception), (got, want)
    if isinstance(want, Exception):
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    ref = dense.double()(x.double()) if x.is_floating_point() else None
    if ref is not None:
        tol = TOL[got.dtype] * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=tol * 4)


@pytest.mark.parametrize("cast", AUTOCAST, ids=str)
@pytest.mark.parametrize("layer_dtype", LAYER_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", INPUT_DTYPES, ids=str)
@pytest.mark.parametrize("lead", [(5,), (2, 3)], ids=["2d", "3d"])
def test_linear_matches_nn_linear_under_autocast(cast, layer_dtype, x_dtype, lead):
    torch.manual_seed(0)
    ours, dense = _pair_linear(layer_dtype)
    x = torch.randn(*lead, 16, dtype=F64)
    x = x.to(x_dtype) if x_dtype.is_floating_point else torch.randint(-3, 3, (*lead, 16), dtype=x_dtype)
    check_against_dense(ours, dense, x, cast)


@pytest.mark.parametrize("cast", AUTOCAST, ids=str)
@pytest.mark.parametrize("layer_dtype", LAYER_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", INPUT_DTYPES, ids=str)
def test_conv_matches_nn_conv2d_under_autocast(cast, layer_dtype, x_dtype):
    torch.manual_seed(0)
    ours, dense = _pair_conv(layer_dtype)
    x = torch.randn(2, 8, 5, 5, dtype=F64)
    x = x.to(x_dtype) if x_dtype.is_floating_point else torch.randint(-3, 3, (2, 8, 5, 5), dtype=x_dtype)
    check_against_dense(ours, dense, x, cast)


def test_float64_stays_float64_and_integers_raise():
    """The two cases of the report, spelled out."""
    ours, _ = _pair_linear(F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(3, 16, dtype=F64)).dtype == F64
        with pytest.raises(TypeError, match="int64"):
            ours(torch.ones(3, 16, dtype=torch.int64))
    conv, _ = _pair_conv(F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 4, 4, dtype=F64)).dtype == F64


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16], ids=str)
def test_every_op_follows_the_rule(cast):
    """The ops themselves (not only the layers): float32 arguments run in the autocast dtype,
    float64 ones stay, and a float64 / float32 mix raises (values cast, the other not)."""
    G, a, c, T = 2, 3, 4, 5
    v, x, dy = torch.randn(G, a, c), torch.randn(T, G * c), torch.randn(T, G * a)
    ii, oi = torch.randperm(G * c), torch.randperm(G * a)
    calls = {
        "linear": lambda v, x, dy: OPS.linear(x, v, ii, oi, None, 1),
        "linear_grad_input": lambda v, x, dy: OPS.linear_grad_input(dy, v, ii, oi, 1),
        "linear_grad_values": lambda v, x, dy: OPS.linear_grad_values(dy, x, ii, oi, G, 1),
    }
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=cast):
            assert call(v, x, dy).dtype == cast, name
            assert call(v.double(), x.double(), dy.double()).dtype == F64, name
            if name != "linear_grad_values":  # (its two operands are both activations)
                with pytest.raises(TypeError, match=name):
                    call(v, x.double(), dy.double())
        assert call(v, x, dy).dtype == torch.float32, name  # outside autocast: no cast


def test_training_step_under_autocast_keeps_float32_grads():
    torch.manual_seed(0)
    ours, dense = _pair_linear(torch.float32)
    x = torch.randn(6, 16)
    for module in (ours, dense):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
    assert ours.values.grad.dtype == torch.float32 and ours.bias.grad.dtype == torch.float32
    torch.testing.assert_close(ours.bias.grad, dense.bias.grad, rtol=3e-2, atol=3e-2)
    grad = sk.GroupedBlockFormat(ours.values.grad, ours.in_index, ours.out_index).to_dense()
    mask = ours.dense_weight().detach() != 0
    torch.testing.assert_close(grad, dense.weight.grad * mask, rtol=3e-2, atol=3e-2)


def test_functional_forms_under_autocast():
    torch.manual_seed(0)
    ours, _ = _pair_linear(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sk.sao_linear(torch.randn(4, 16), ours.values, ours.in_index, ours.out_index, ours.bias)
    assert y.dtype == torch.bfloat16
    conv, _ = _pair_conv(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(1, 8, 4, 4)
        y = sk.sao_conv2d(x, conv.values, conv.in_index, conv.out_index, conv.bias, padding=(1, 1))
    assert y.dtype == torch.bfloat16
