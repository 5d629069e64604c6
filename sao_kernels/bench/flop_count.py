"""FLOP counting that sees SAO layers: ``torch.utils.flop_counter.FlopCounterMode`` (which
counts the registered sparse ops through their flop formulas) with torch's grouped-
convolution backward formula corrected (SAOConv2d runs a grouped convolution)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop, conv_flop_count

__all__ = ["flop_counter", "grouped_conv_backward_flop"]

# torch registers its formulas wrapped by shape_wrapper; __wrapped__ is the shape-level one.
_torch_conv_backward_flop = getattr(conv_backward_flop, "__wrapped__", conv_backward_flop)


def grouped_conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape,
    **kwargs,
) -> int:
    """torch's convolution_backward flop formula with ``groups`` honoured.

    torch's formula (2.11 - 2.13) counts the weight gradient of a grouped convolution as if
    it were dense (it ignores ``groups``), G times too many for SAOConv2d's grouped conv.
    The weight-gradient part is divided by ``groups``; everything else is torch's own.
    """
    flops = _torch_conv_backward_flop(
        grad_out_shape,
        x_shape,
        w_shape,
        bias,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups,
        output_mask,
        out_shape,
        **kwargs,
    )
    if groups > 1 and output_mask[1] and not transposed:

        def t(shape):
            return [shape[1], shape[0]] + list(shape[2:])

        dense_wgrad = conv_flop_count(t(x_shape), t(grad_out_shape), t(list(out_shape[1])), transposed=False)
        flops -= dense_wgrad - dense_wgrad // groups
    return flops


def flop_counter(**kwargs) -> FlopCounterMode:
    """FlopCounterMode with the grouped-convolution backward formula corrected."""
    return FlopCounterMode(custom_mapping={torch.ops.aten.convolution_backward: grouped_conv_backward_flop}, **kwargs)
