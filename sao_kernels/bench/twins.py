"""Dense twins: the same function with dense ``nn.Linear`` / ``nn.Conv2d`` layers.

What every SAO measurement is compared with: the SAO layer's weight scattered into a dense
(m, n) weight, run by torch's dense kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import SAOConv2d, SAOLinear


def dense_equivalent(layer: nn.Module) -> nn.Module:
    """nn.Linear / nn.Conv2d with the SAO layer's dense weight and bias (a copy; frozen where
    the layer's are)."""
    w = layer.dense_weight().detach()
    if isinstance(layer, SAOLinear):
        dense = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, device=w.device, dtype=w.dtype)
    elif isinstance(layer, SAOConv2d):
        dense = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            1,
            layer.bias is not None,
            layer.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
    else:
        raise TypeError(f"dense_equivalent expects SAOLinear or SAOConv2d, got {type(layer).__name__}")
    with torch.no_grad():
        dense.weight.copy_(w)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    # frozen stays frozen: the twin computes the same gradients as the layer
    dense.weight.requires_grad_(layer.values.requires_grad)
    if layer.bias is not None:
        dense.bias.requires_grad_(layer.bias.requires_grad)
    dense.train(layer.training)
    return dense


def densify(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every SAO layer replaced by its dense equivalent."""
    if isinstance(model, (SAOLinear, SAOConv2d)):
        return dense_equivalent(model)
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (SAOLinear, SAOConv2d)):
                setattr(parent, name, dense_equivalent(child))
    return model
