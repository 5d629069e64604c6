"""Functional forms of the SAO layers (what the modules call).

``sao_linear`` runs the registered ``torch.ops.sao_kernels.linear`` op on any leading dims;
``sao_conv2d`` runs a channel gather plus a grouped convolution (``groups=G``), so the
convolution does 1/G of the dense work through cuDNN / oneDNN.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _extension
from . import dispatch as _dispatch
from .ops import autocast_eligible, check_block_size, check_index  # (importing ops registers the ops)
from .ops.linear_act import activate, check_activation

_linear_op = torch.ops.sao_kernels.linear.default
# The same op without torch.ops' Python layer (see csrc/ops.cpp, py_linear): for plain tensors
# outside tracing / compiling, where the layer's per-call cost matters most.
_linear_fast = getattr(importlib.import_module("sao_kernels._C"), "linear", None) if _extension.available() else None
_is_compiling = torch.compiler.is_compiling
_strided = torch.strided
_any_autocast = torch._C._is_any_autocast_enabled
_tracing = torch._C._get_tracing_state


def _refuse_jit_trace(op: str) -> None:
    # A trace records one run's Python control flow (input rank, the index checks, identity
    # shortcuts) as constants: the traced graph would go stale, silently, for other shapes or
    # after the indices change.  torch.compile and torch.export guard or check these instead.
    if _tracing() is not None:
        raise RuntimeError(
            f"{op}: torch.jit.trace is not supported for SAO layers (a trace would bake in the input's rank "
            "and the index maps' checks and shortcuts, and go stale silently); use torch.compile(model) or "
            "torch.export.export(model, args) instead"
        )


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast_result(t: Tensor, cast: Optional[torch.dtype]) -> torch.dtype:
    """``t``'s dtype after autocast to ``cast`` (None: autocast off for its device), by the
    rule the ops' autocast kernels apply (ops/_library.py)."""
    return cast if cast is not None and autocast_eligible(t, t.device.type) else t.dtype


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
    ``torch.autocast`` the op follows autocast's rule for ``F.linear``: floating arguments
    other than float64 run in the autocast dtype.  Every argument is checked by the op.
    """
    # The hot path: a plain 2-D tensor, no autocast, not compiling: straight to the C++ entry
    # point, which checks every argument itself (the op's messages name in_features too) and
    # returns NotImplemented for a sparse input or under torch.jit.trace (handled below).
    if type(x) is Tensor and _linear_fast is not None and not _any_autocast() and not _is_compiling() and x.dim() == 2:
        y = _linear_fast(x, values, in_index, out_index, bias, block_size)
        if y is not NotImplemented:
            return y
    _refuse_jit_trace("sao_linear")
    if isinstance(x, Tensor) and (x.is_nested or x.layout is not _strided):
        return _sao_linear_unstrided(x, values, in_index, out_index, bias, block_size)
    if not isinstance(x, Tensor) or x.dim() == 0 or not isinstance(values, Tensor) or values.dim() != 3:
        raise ValueError(
            f"sao_linear: input must be a tensor of shape (*, in_features) and values (G, m/G, n/G); got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__} and "
            f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}"
        )
    n = values.shape[0] * values.shape[2]
    if x.shape[-1] != n:
        raise ValueError(f"sao_linear: input's last dimension must be in_features={n}, got shape {tuple(x.shape)}")
    # Under autocast the op casts its arguments by autocast's rules (ops/_library.py) and
    # checks the dtypes it is left with.
    if _autocast_dtype(x.device.type) is None and x.dtype != values.dtype:
        raise TypeError(f"sao_linear: input dtype {x.dtype} does not match the layer's dtype {values.dtype}")
    op = _linear_fast if _linear_fast is not None and type(x) is Tensor and not _is_compiling() else _linear_op
    if x.dim() == 2:
        return op(x, values, in_index, out_index, bias, block_size)
    lead = x.shape[:-1]
    y = op(x.reshape(-1, n), values, in_index, out_index, bias, block_size)
    return y.view(*lead, y.shape[-1])


_linear_act_op = torch.ops.sao_kernels.linear_act.default
_linear_act_fast = (
    getattr(importlib.import_module("sao_kernels._C"), "linear_act", None) if _extension.available() else None
)


def sao_linear_act(
    x: Tensor,
    values: Tensor,
    in_index: Optional[Tensor] = None,
    out_index: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    block_size: int = 1,
    activation: str = "tanh",
) -> Tensor:
    """``activation(sao_linear(x, ...))`` as one op (``torch.ops.sao_kernels.linear_act``:
    ``activation`` "tanh", "relu" or "gelu"), on any leading dims: y (*, m) from x (*, n).
    Nested and sparse inputs take the two steps."""
    check_activation(activation)
    if (
        type(x) is Tensor
        and _linear_act_fast is not None
        and not _any_autocast()
        and not _is_compiling()
        and x.dim() == 2
    ):
        y = _linear_act_fast(x, values, in_index, out_index, bias, block_size, activation)
        if y is not NotImplemented:
            return y
    if not isinstance(x, Tensor) or x.is_nested or x.layout is not _strided or x.dim() == 0:
        return activate(sao_linear(x, values, in_index, out_index, bias, block_size), activation)
    _refuse_jit_trace("sao_linear_act")
    if x.dim() == 2:
        return _linear_act_op(x, values, in_index, out_index, bias, block_size, activation)
    lead = x.shape[:-1]
    y = _linear_act_op(x.reshape(-1, x.shape[-1]), values, in_index, out_index, bias, block_size, activation)
    return y.view(*lead, y.shape[-1])


def _sao_linear_unstrided(x, values, in_index, out_index, bias, block_size) -> Tensor:
    """What nn.Linear does with a jagged nested tensor (a jagged output of the same
    structure) and a sparse one (a dense output): the product runs on the jagged tensor's
    packed values / on the densified input.  Other layouts are refused by name."""
    if x.is_nested:
        if x.layout is not torch.jagged:
            raise ValueError(
                f"sao_linear: input is a nested tensor of layout {x.layout}; nested inputs must have layout "
                "torch.jagged (torch.nested.nested_tensor(..., layout=torch.jagged))"
            )
        y = sao_linear(x.values(), values, in_index, out_index, bias, block_size)
        return torch.nested.nested_tensor_from_jagged(y, x.offsets(), x.lengths(), jagged_dim=x._ragged_idx)
    if x.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        # The output is dense either way (as nn.Linear's); densifying costs T*n, the product T*m*n/G.
        return sao_linear(x.to_dense(), values, in_index, out_index, bias, block_size)
    raise ValueError(f"sao_linear: input has layout {x.layout}; supported: strided, sparse, jagged nested")


def _traced_index_check(index: Optional[Tensor], size: int) -> Optional[Tensor]:
    """Under torch.compile: assert (in the graph) that ``index`` is a permutation of range(size)."""
    if index is None:
        return None
    if index.dtype != torch.int64 or index.dim() != 1 or index.shape[0] != size:
        raise ValueError(
            f"sao_conv2d: index maps must be int64 of shape ({size},), got {index.dtype} {tuple(index.shape)}"
        )
    in_range = ((index >= 0) & (index < size)).all()
    torch._assert_async(in_range, "sao_conv2d: an index map has entries outside its range")
    counts = torch.zeros(size, dtype=torch.int64, device=index.device).scatter_add_(
        0, index.clamp(0, size - 1), torch.ones_like(index)
    )
    torch._assert_async((counts == 1).all(), "sao_conv2d: an index map is not a permutation (duplicated entries)")
    return index


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
    _refuse_jit_trace(op)
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
    # The dtypes F.conv2d will see: under autocast, its casts (autocast's own rule).
    cast = _autocast_dtype(x.device.type)
    x_dtype, v_dtype = _autocast_result(x, cast), _autocast_result(values, cast)
    if x_dtype != v_dtype:
        under = f" (under torch.autocast to {cast})" if cast is not None else ""
        raise TypeError(f"{op}: input dtype {x_dtype} does not match the layer's dtype {v_dtype}{under}")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dim() != 1 or bias.shape[0] != m:
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"{op}: bias must have shape ({m},) or be None, got {got}")
        if bias.device != values.device:
            raise ValueError(
                f"{op}: bias is on {bias.device} but values are on {values.device}; all must share a device"
            )
        if _autocast_result(bias, cast) != v_dtype:
            raise TypeError(f"{op}: bias has dtype {bias.dtype} but values have {values.dtype}; they must match")
    b = check_block_size(op, block_size, a, c)
    if values.is_meta:
        # Meta tensors carry no data: shapes, dtypes and devices only (as nn.Conv2d on meta).
        in_index = check_index(op, "in_index", in_index, n, values.device, b, check_data=False).index
        out_index = check_index(op, "out_index", out_index, m, values.device, b, check_data=False).index
    elif torch.compiler.is_compiling():
        # Data-dependent checks would break the graph: traced asserts instead (a bad index
        # still raises, with torch's assertion message), and no identity shortcut.
        in_index = _traced_index_check(in_index, n)
        out_index = _traced_index_check(out_index, m)
    else:
        in_index = check_index(op, "in_index", in_index, n, values.device, b).index
        out_index = check_index(op, "out_index", out_index, m, values.device, b).index
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
