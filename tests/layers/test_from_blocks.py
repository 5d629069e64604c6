"""One construction path for both layers (layers/_base.py): ``from_blocks`` builds a layer from
a GroupedBlockFormat through ``__init__`` (as ``from_dense`` does, never through
``cls.__new__``), the bias init is shared, and the recipe ``reset_parameters`` draws with is
kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sao_kernels as sk
from sao_kernels import SAOConv2d, SAOLinear
from sao_kernels.format import GroupedBlockFormat

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_linear_from_blocks_uses_the_blocks_as_they_are():
    blocks = sk.sao_blocks(48, 96, groups=4, block_size=4, generator=gen(1), dtype=F64)
    bias = torch.randn(48, generator=gen(2), dtype=F64)
    layer = SAOLinear.from_blocks(blocks, bias)
    assert (layer.in_features, layer.out_features, layer.groups, layer.block_size) == (96, 48, 4, 4)
    assert layer.values.data_ptr() == blocks.values.data_ptr() and layer.in_index is blocks.in_index
    assert layer.bias.data_ptr() == bias.data_ptr()
    assert isinstance(layer.values, nn.Parameter) and layer.values.requires_grad
    x = torch.randn(3, 96, generator=gen(3), dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, blocks.to_dense(), bias), rtol=1e-12, atol=1e-12)
    assert SAOLinear.from_blocks(blocks).bias is None
    # what reset_parameters will draw with
    assert (layer.activation, layer.init, layer.gain) == ("tanh", "sao", 1.0)
    layer.reset_parameters(gen(4))
    assert layer.groups == 4 and layer.block_size == 4
    layer.blocks()


def test_conv_from_blocks_with_geometry():
    blocks = sk.sao_blocks(16, 8, groups=2, kernel_size=(3, 5), init="eco", generator=gen(5), dtype=F64)
    layer = SAOConv2d.from_blocks(blocks, None, stride=2, padding=(1, 2), dilation=1, padding_mode="reflect")
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (8, 16, (3, 5))
    assert (layer.stride, layer.padding, layer.padding_mode, layer.bias) == ((2, 2), (1, 2), "reflect", None)
    x = torch.randn(2, 8, 7, 9, generator=gen(6), dtype=F64)
    ref = F.conv2d(F.pad(x, (2, 2, 1, 1), mode="reflect"), blocks.to_dense(), None, 2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    # an even kernel: reset_parameters can not use "delta", so the default recipe is "eco"
    even = sk.sao_blocks(8, 8, groups=2, kernel_size=2, init="rg-n", generator=gen(7))
    assert SAOConv2d.from_blocks(even).init == "eco"
    assert SAOConv2d.from_blocks(sk.sao_blocks(8, 8, groups=2, kernel_size=3)).init == "delta"


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: SAOLinear.from_blocks("blocks"), TypeError, r"blocks must be a GroupedBlockFormat"),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 8, groups=2, kernel_size=3)),
            ValueError,
            r"SAOLinear.from_blocks: blocks.values must have shape \(G, m/G, n/G\)",
        ),
        (
            lambda: SAOConv2d.from_blocks(sk.sao_blocks(8, 8, groups=2)),
            ValueError,
            r"SAOConv2d.from_blocks: blocks.values must have shape \(G, m/G, n/G, kh, kw\)",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), torch.zeros(16)),
            ValueError,
            r"bias must be a floating tensor of shape \(8,\)",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), torch.zeros(8, dtype=F64)),
            ValueError,
            r"bias \(torch.float64 on cpu\) must match blocks.values \(torch.float32",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), torch.zeros(8, dtype=torch.int64)),
            ValueError,
            r"bias must be a floating tensor",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), init="eco"),
            ValueError,
            r"init='eco' is not supported; allowed: 'sao', 'rg-n', 'rg-u'",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), activation="gelu"),
            ValueError,
            r"activation='gelu' is not supported",
        ),
        (
            lambda: SAOLinear.from_blocks(sk.sao_blocks(8, 16, groups=2), gain=float("nan")),
            ValueError,
            r"gain must be a finite float > 0, got nan",
        ),
    ],
)
def test_from_blocks_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


class CountingLinear(SAOLinear):
    """A subclass whose __init__ must run for every instance."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built_by_init = True


class CountingConv(SAOConv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built_by_init = True


def test_from_dense_goes_through_init():
    lin = nn.Linear(32, 16, dtype=F64)
    with torch.no_grad():
        sk.init.sao_(lin.weight, groups=4, generator=gen(8))
    layer = CountingLinear.from_dense(lin)
    assert type(layer) is CountingLinear and layer.built_by_init
    conv = nn.Conv2d(8, 16, 3, dtype=F64)
    with torch.no_grad():
        sk.init.sao_delta_(conv.weight, groups=2, generator=gen(9))
    layer = CountingConv.from_dense(conv)
    assert type(layer) is CountingConv and layer.built_by_init
    x = torch.randn(1, 8, 5, 5, generator=gen(10), dtype=F64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


def test_from_dense_keeps_frozen_flags_and_reset_redraws_the_same_groups():
    lin = nn.Linear(32, 16, dtype=F64)
    with torch.no_grad():
        sk.init.sao_(lin.weight, groups=4, generator=gen(11))
    lin.weight.requires_grad_(False)
    layer = SAOLinear.from_dense(lin)
    assert not layer.values.requires_grad and layer.bias.requires_grad
    assert layer.activation == "linear" and layer.init == "sao"
    before = layer.blocks().mask().clone()
    layer.reset_parameters(gen(12))
    assert layer.groups == 4 and not torch.equal(layer.blocks().mask(), before)


def test_bias_init_is_nn_linear_s_and_nn_conv2d_s():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the dense fan_in, drawn in float64 after the
    values from the same generator, for both layers."""
    lin = SAOLinear(400, 300, groups=4, generator=gen(13), dtype=F64)
    conv = SAOConv2d(40, 300, (3, 5), groups=4, generator=gen(14), dtype=F64)
    for layer, fan_in in ((lin, 400), (conv, 40 * 15)):
        bound = 1 / math.sqrt(fan_in)
        b = layer.bias.detach()
        assert b.abs().max() <= bound
        assert b.abs().max() > 0.9 * bound and abs(b.mean()) < 0.2 * bound  # spread over the range
    # the same generator stream: values first, then the bias
    g = gen(13)
    blocks = sk.sao_blocks(300, 400, groups=4, smaller_groups="contiguous", generator=g, dtype=F64)
    u = torch.rand(300, generator=g, dtype=F64)
    torch.testing.assert_close(lin.bias.detach(), (2 * u - 1) * (1.0 / math.sqrt(400)), rtol=0, atol=0)
    assert torch.equal(lin.values.detach(), blocks.values)


def test_blocks_of_the_layer_round_trip():
    layer = SAOConv2d(8, 16, 3, groups=4, generator=gen(15), dtype=F64)
    twin = SAOConv2d.from_blocks(layer.blocks(), layer.bias.detach())
    assert isinstance(twin.blocks(), GroupedBlockFormat)
    x = torch.randn(1, 8, 5, 5, generator=gen(16), dtype=F64)
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
