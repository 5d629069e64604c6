"""torch.nn.utils.parametrize on SAO layers, and ``sk.orthogonal_blocks``.

``register_parametrization(layer, "values", ...)`` used to raise ``KeyError: attribute
'values' already exists`` (torch's ``parametrizations`` ModuleDict refuses the key "values",
the name of its ``values()`` method).  Blocks kept orthogonal by a parametrization stay
orthogonal through training, and the layer's forward stays its dense equivalent's.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

import sao_kernels as sk

F64 = torch.float64


class Scale(nn.Module):
    def forward(self, v):
        return 2.0 * v


def _layers():
    g = torch.Generator().manual_seed(0)
    return {
        "linear-wide": sk.SAOLinear(32, 16, sparsity=0.5, generator=g),
        "linear-tall": sk.SAOLinear(16, 32, sparsity=0.5, generator=g),
        "linear-square": sk.SAOLinear(32, 32, sparsity=0.75, generator=g),
        "conv": sk.SAOConv2d(8, 16, 3, sparsity=0.5, padding=1, generator=g),
        "conv-wide": sk.SAOConv2d(16, 8, 3, sparsity=0.5, padding=1, generator=g),
    }


def _input(layer, batch=4):
    n = layer.values.shape[0] * layer.values.shape[2]
    return torch.randn(batch, n, 6, 6) if layer.values.dim() == 5 else torch.randn(batch, n)


def _dense_forward(layer, x):
    w = layer.dense_weight()
    if layer.values.dim() == 5:
        return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation)
    return F.linear(x, w, layer.bias)


def _orthogonality_error(values):
    v = values.detach().double().flatten(2)
    a, k = v.shape[1:]
    gram = v @ v.mT if a <= k else v.mT @ v
    return (gram - torch.eye(min(a, k), dtype=F64)).abs().max().item()


@pytest.mark.parametrize("name", list(_layers()))
def test_register_parametrization_on_values(name):
    layer = _layers()[name]
    v0 = layer.values.detach().clone()
    parametrize.register_parametrization(layer, "values", Scale())
    assert parametrize.is_parametrized(layer, "values")
    torch.testing.assert_close(layer.values, 2 * v0)
    x = _input(layer)
    torch.testing.assert_close(layer(x), _dense_forward(layer, x), rtol=1e-5, atol=1e-5)
    assert "parametrizations.values.original" in layer.state_dict()
    layer(x).sum().backward()
    assert layer.parametrizations["values"].original.grad is not None
    parametrize.remove_parametrizations(layer, "values", leave_parametrized=True)
    torch.testing.assert_close(layer.values, 2 * v0)
    assert isinstance(layer.values, nn.Parameter)


@pytest.mark.parametrize("name", list(_layers()))
def test_orthogonal_blocks_stay_orthogonal_through_training(name):
    torch.manual_seed(0)
    layer = sk.orthogonal_blocks(_layers()[name])
    assert _orthogonality_error(layer.values) < 1e-5
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    v_start = layer.values.detach().clone()
    for _ in range(6):
        x = _input(layer)
        loss = (layer(x) - 1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (layer.values - v_start).abs().max() > 1e-3  # it trained
    assert _orthogonality_error(layer.values) < 1e-5
    x = _input(layer)
    torch.testing.assert_close(layer(x), _dense_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_orthogonal_blocks_keeps_orthonormal_sao_blocks():
    layer = _layers()["linear-wide"]
    v0 = layer.values.detach().clone()
    assert _orthogonality_error(v0) < 1e-5  # SAO's own init
    sk.orthogonal_blocks(layer)
    torch.testing.assert_close(layer.values, v0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["linear-wide", "linear-square"])
def test_torch_orthogonal_on_linear_values(name):
    """torch's own orthogonal() treats (G, a, c) as a batch of G matrices."""
    layer = orthogonal(_layers()[name], "values")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        loss = layer(_input(layer)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _orthogonality_error(layer.values) < 1e-5


def test_parametrized_layer_state_dict_round_trip_and_reset():
    layer = sk.orthogonal_blocks(_layers()["linear-square"])
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = sk.orthogonal_blocks(_layers()["linear-square"])
    with torch.no_grad():
        other.parametrizations["values"].original.add_(0.3)
    other.load_state_dict(torch.load(buf))
    x = _input(layer)
    torch.testing.assert_close(other(x), layer(x))
    # reset_parameters writes through the parametrization (a copy_ into the computed values
    # would be lost): the new blocks are what the layer computes with.
    before = layer.values.detach().clone()
    layer.reset_parameters(torch.Generator().manual_seed(5))
    assert (layer.values - before).abs().max() > 1e-3
    assert _orthogonality_error(layer.values) < 1e-5


def test_orthogonal_blocks_rejects_other_modules_and_maps():
    with pytest.raises(TypeError, match="SAOLinear or SAOConv2d"):
        sk.orthogonal_blocks(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="orthogonal_map"):
        sk.orthogonal_blocks(_layers()["linear-wide"], "qr")
