"""Functional forms of the SAO layers (what the modules call).

``sao_linear`` runs the registered ``torch.ops.sao_kernels.linear`` op on any leading dims;
``sao_conv2d`` runs a channel gather plus a grouped convolution (``groups=G``), so the
convolution does 1/G of the dense work through cuDNN / oneDNN.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch as _dispatch
from . import ops  # noqa: F401  (registers torch.ops.sao_kernels.*)
from .ops._validate import check_block_size, check_index

_linear_op = torch.ops.sao_kernels.linear.default


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def sao_linear(
    x: Tensor,
    values: Tensor,
    in_index: Optional[Tensor] = None,
    out_index: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    block_size: int = 1,
) -> Tensor:
    """y (*, m) from x (*, n) through G blocks values (G, m/G, n/G).

    ``in_index`` / ``out_index`` give the features of each group in group order (None means
    contiguous groups; an identity index costs nothing either: the op detects it).  Under
    ``torch.autocast`` the op runs in the autocast dtype.  Every argument is checked by the op.
    """
    # The op checks everything else; what is checked here is what only this level knows
    # (leading dims, the autocast dtype), kept to a few attribute reads: this is the hot path.
    if not isinstance(x, Tensor) or x.dim() == 0 or not isinstance(values, Tensor) or values.dim() != 3:
        raise ValueError(
            f"sao_linear: input must be a tensor of shape (*, in_features) and values (G, m/G, n/G); got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__} and "
            f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}"
        )
    n = values.shape[0] * values.shape[2]
    if x.shape[-1] != n:
        raise ValueError(f"sao_linear: input's last dimension must be in_features={n}, got shape {tuple(x.shape)}")
    cast = _autocast_dtype(x.device.type)
    if cast is not None:
        x, values = x.to(cast), values.to(cast)
        bias = bias.to(cast) if bias is not None else None
    elif x.dtype != values.dtype:
        raise TypeError(f"sao_linear: input dtype {x.dtype} does not match the layer's dtype {values.dtype}")
    if x.dim() == 2:
        return _linear_op(x, values, in_index, out_index, bias, block_size)
    lead = x.shape[:-1]
    y = _linear_op(x.reshape(-1, n), values, in_index, out_index, bias, block_size)
    return y.view(*lead, y.shape[-1])


def sao_conv2d(
    x: Tensor,
    values: Tensor,
    in_index: Optional[Tensor] = None,
    out_index: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] | str = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    *,
    block_size: int = 1,
) -> Tensor:
    """y (B, m, H', W') from x (B, n, H, W) through values (G, m/G, n/G, kh, kw).

    Padding modes other than zeros must be applied to ``x`` before the call (as
    ``nn.Conv2d`` does).  Input channels are gathered into group order, a grouped
    convolution runs all G blocks, and the output channels are put back in order.  There
    is no Triton or native convolution: every backend but ``dense`` (the masked-dense
    reference) runs this path.  The index maps are checked like the linear ops' (range,
    permutation, ``block_size`` runs).
    """
    op = "sao_conv2d"
    if not isinstance(values, Tensor) or values.dim() != 5 or not values.is_floating_point():
        got = f"{values.dtype} {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{op}: values must be a floating tensor of shape (G, m/G, n/G, kh, kw), got {got}")
    G, a, c, kh, kw = values.shape
    n, m = G * c, G * a
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or x.shape[-3] != n:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{op}: input must be (B, {n}, H, W) or ({n}, H, W), got shape {got}")
    if x.device != values.device:
        raise ValueError(f"{op}: input is on {x.device} but the layer is on {values.device}")
    cast = _autocast_dtype(x.device.type)
    if cast is None and x.dtype != values.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} does not match the layer's dtype {values.dtype}")
    b = check_block_size(op, block_size, a, c)
    in_index = check_index(op, "in_index", in_index, n, values.device, b).index
    out_index = check_index(op, "out_index", out_index, m, values.device, b).index
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != m):
        raise ValueError(f"{op}: bias must have shape ({m},) or be None, got {tuple(bias.shape)}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if _dispatch.select_conv2d() == "dense":
        # The masked-dense reference: the full (m, n, kh, kw) weight, no savings.
        rows = (out_index if out_index is not None else torch.arange(m, device=x.device)).view(G, a, 1)
        cols = (in_index if in_index is not None else torch.arange(n, device=x.device)).view(G, 1, c)
        weight = values.new_zeros(m, n, kh, kw).index_put((rows, cols), values)
        y = F.conv2d(x, weight, bias, stride, padding, dilation)
        return y.squeeze(0) if unbatched else y
    if in_index is not None:
        x = x.index_select(1, in_index)
    bias_g = bias if (bias is None or out_index is None) else bias.index_select(0, out_index)
    y = F.conv2d(x, values.reshape(m, c, kh, kw), bias_g, stride, padding, dilation, G)
    if out_index is not None:
        out = torch.empty_like(y)
        out[:, out_index] = y  # a checked permutation: every channel written once
        y = out
    return y.squeeze(0) if unbatched else y
