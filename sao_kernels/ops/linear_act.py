"""An SAO linear layer followed by an elementwise activation, as one op:
``y = act(x W^T + b)``, act in ``ACTIVATIONS``.

``torch.ops.sao_kernels.linear_act(x (T, n), values (G, a, c), in_index, out_index, bias,
block_size=1, activation="tanh") -> y (T, m)``

What ``sao_kernels.fuse_chains`` runs in place of an ``SAOLinear`` and the activation after it.

* CPU with the native extension (csrc/linear_act.cpp): tanh, ReLU and GELU in the native
  kernels' epilogue (GELU where no gradient needs its pre-activation); one autograd node whose
  backward forms ``dPre = dY * act'`` and the bias gradient in one pass (tanh' from the saved
  output, the ReLU mask from the output, GELU from the saved pre-activation), then the
  grad-input and grad-values ops.
* Everywhere else (CUDA, other devices, no extension, tracing under torch.compile): the torch
  composite below, registered as the op's CompositeImplicitAutograd kernel: ``linear`` then the
  activation, each differentiated by its own autograd (the unfused computation).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _library

NAME = "linear_act"
ACTIVATIONS = ("tanh", "relu", "gelu")
SCHEMA = (
    "(Tensor x, Tensor values, Tensor? in_index, Tensor? out_index, Tensor? bias, int block_size=1, "
    'str activation="tanh") -> Tensor'
)


def check_activation(activation: object) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"linear_act: activation={activation!r} is not supported; allowed: {', '.join(map(repr, ACTIVATIONS))}"
        )
    return activation


def linear_act_composite(
    x: Tensor,
    values: Tensor,
    in_index: Optional[Tensor],
    out_index: Optional[Tensor],
    bias: Optional[Tensor],
    block_size: int = 1,
    activation: str = "tanh",
) -> Tensor:
    """``linear`` then the activation (the unfused computation, differentiable through both)."""
    check_activation(activation)
    return activate(torch.ops.sao_kernels.linear(x, values, in_index, out_index, bias, block_size), activation)


def activate(y: Tensor, activation: str) -> Tensor:
    """The activation named ``activation`` (one of ``ACTIVATIONS``) applied to ``y``."""
    if activation == "tanh":
        return torch.tanh(y)
    return torch.relu(y) if activation == "relu" else F.gelu(y)


if not _library.NATIVE:
    _library.LIB.define(NAME + SCHEMA)
# (with the extension, its CPU and AutogradCPU kernels take precedence over this one there)
_library.LIB.impl(NAME, linear_act_composite, "CompositeImplicitAutograd")
for _device_type in _library.AUTOCAST_DEVICES:
    _library.register_autocast(NAME, _device_type)
