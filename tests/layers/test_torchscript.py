"""TorchScript is refused, clearly, at trace / script time, and convert() refuses TorchScript
modules.  A trace of an SAO layer used to bake in the run's Python control flow: the
identity-index shortcut (wrong results after a permutation was assigned), the input's rank
and spatial size; and convert() of a scripted / traced model converted nothing, silently.
torch.compile and torch.export are the supported graph captures (tests/layers/
test_layers_compile.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sao_kernels as sk

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch's, about TorchScript


def _layers():
    return [
        sk.SAOLinear(16, 16, sparsity=0.75),
        sk.SAOConv2d(8, 8, 3, sparsity=0.5, padding=1),
    ]


def _input(layer):
    return torch.randn(2, 16) if isinstance(layer, sk.SAOLinear) else torch.randn(2, 8, 5, 5)


@pytest.mark.parametrize("layer", _layers(), ids=["linear", "conv"])
def test_jit_trace_is_refused_with_the_alternatives(layer):
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace is not supported.*torch\.compile.*torch\.export"):
        torch.jit.trace(layer, _input(layer))
    model = nn.Sequential(nn.Identity(), layer)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace is not supported"):
        torch.jit.trace(model, _input(layer))


def test_jit_trace_of_the_functional_forms_is_refused():
    layer = sk.SAOLinear(16, 16, sparsity=0.75)
    with pytest.raises(RuntimeError, match="sao_linear: torch.jit.trace is not supported"):
        torch.jit.trace(lambda x: sk.sao_linear(x, layer.values, layer.in_index, layer.out_index), torch.randn(2, 16))
    conv = sk.SAOConv2d(8, 8, 3, sparsity=0.5)
    with pytest.raises(RuntimeError, match="sao_conv2d: torch.jit.trace is not supported"):
        torch.jit.trace(lambda x: sk.sao_conv2d(x, conv.values, conv.in_index), torch.randn(1, 8, 5, 5))


@pytest.mark.parametrize("layer", _layers(), ids=["linear", "conv"])
def test_jit_script_is_refused_with_the_alternatives(layer):
    for target in (layer, nn.Sequential(nn.ReLU(), layer)):
        with pytest.raises(TypeError, match=r"torch\.jit\.script is not supported.*torch\.compile.*torch\.export"):
            torch.jit.script(target)


def test_eager_use_after_a_refused_trace_is_unaffected():
    layer = _layers()[0]
    x = _input(layer)
    want = layer(x)
    with pytest.raises(RuntimeError):
        torch.jit.trace(layer, x)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("where", ["root", "submodule"])
def test_convert_refuses_torchscript_modules(how, where):
    dense = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    compiled = torch.jit.script(dense) if how == "script" else torch.jit.trace(dense, torch.randn(2, 16))
    model = compiled if where == "root" else nn.Sequential(compiled, nn.Tanh())
    with pytest.raises(TypeError, match=r"TorchScript module.*Convert the eager model"):
        sk.convert(model, sparsity=0.5)
