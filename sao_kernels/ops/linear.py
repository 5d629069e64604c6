"""Forward product of an SAO linear layer: ``Y[:, R_g] = X[:, C_g] @ V_g^T + b[R_g]``.

``torch.ops.sao_kernels.linear(x (T, n), values (G, a, c), in_index (n,) | None,
out_index (m,) | None, bias (m,) | None, block_size=1) -> y (T, m)``

R_g = out_index[g*a : (g+1)*a] and C_g = in_index[g*c : (g+1)*c] (None: contiguous groups).
Implementations (which one runs: ``sao_kernels.dispatch``):

* native (CPU, csrc/native_kernels.cpp): the column gather fused into the packing of each
  (token block, group) panel, oneDNN brgemm / BLAS micro-kernels, bias as the GEMM's initial C.
* triton (``ops/triton/gather_matmul.py``): the gather fused into the K-loop loads,
  the output placement and the bias into the epilogue store.
* torch (here): one gather of X's columns, a batched GEMM over the G groups (bias fused via
  baddbmm), one pass that writes the outputs in feature order.
* dense (here): the masked-dense reference.

Autograd: dX = ``linear_grad_input(dY)``, dV = ``linear_grad_values(dY, X)``, db = sum(dY);
forward mode: dY = linear(dX) + linear(X; dV) + db.  Both are written in C++ (csrc/ops.cpp)
and, for builds without the extension, here; the grad ops have autograd of their own, so
every derivative order works.  FlopCounterMode counts 2*T*m*n/G.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .. import dispatch as _dispatch
from . import _library
from ._composite import dense_weight, flops, gather_groups, saveable, scatter_groups, vmap_over_tokens
from ._validate import Problem, check_linear

NAME = "linear"


def linear_torch(x: Tensor, values: Tensor, p: Problem, bias: Optional[Tensor]) -> Tensor:
    """The structured torch composite: gather + (b)addbmm + ordered store."""
    in_index, out_index = p.in_index.index, p.out_index.index
    xg = gather_groups(x, in_index, p.G)  # (G, T, c)
    vt = values.transpose(1, 2)  # (G, c, a)
    if bias is None:
        yg = torch.bmm(xg, vt)
    else:
        b = bias if out_index is None else bias.index_select(0, out_index)
        yg = torch.baddbmm(b.view(p.G, 1, p.a), xg, vt)
    return scatter_groups(yg, out_index)


def linear_python(
    x: Tensor,
    values: Tensor,
    in_index: Optional[Tensor],
    out_index: Optional[Tensor],
    bias: Optional[Tensor],
    block_size: int = 1,
) -> Tensor:
    """The Python implementation: checks, backend choice, then triton / torch / dense."""
    p = check_linear(x, values, in_index, out_index, bias, block_size)
    name = _dispatch.select(x.device, x.dtype, tokens=x.shape[0], flops=2 * x.shape[0] * values.numel())
    if name == "dense":
        return F.linear(x, dense_weight(values, p), bias)
    if name == "triton":
        from .triton import grouped_gather_matmul

        return grouped_gather_matmul(
            x, p.in_index.index, values, p.out_index.index, bias, lhs_run=p.in_index.run, out_run=p.out_index.run
        )
    if name == "native":  # the C++ CPU kernel runs every native case before reaching Python
        raise RuntimeError("linear: the native kernels were selected but the C++ CPU kernel did not run them")
    return linear_torch(x, values, p, bias)


# ------------------------------------------------------------- autograd (no extension)
def _setup_context(ctx, inputs, output) -> None:
    x, values, in_index, out_index, bias, block_size = inputs
    in_index, out_index = saveable(in_index), saveable(out_index)
    ctx.save_for_backward(x, values, in_index, out_index)
    ctx.save_for_forward(x, values, in_index, out_index)
    ctx.has_bias, ctx.block_size = bias is not None, block_size


def _backward(ctx, grad):
    x, values, in_index, out_index = ctx.saved_tensors
    need = ctx.needs_input_grad[1:]  # [0] is the dispatch keyset
    ops = torch.ops.sao_kernels
    dx = ops.linear_grad_input(grad, values, in_index, out_index, ctx.block_size) if need[0] else None
    dv = ops.linear_grad_values(grad, x, in_index, out_index, values.shape[0], ctx.block_size) if need[1] else None
    db = grad.sum(0) if ctx.has_bias and need[4] else None
    return dx, dv, None, None, db, None


def _jvp(ctx, x_t, values_t, _ii_t, _oi_t, bias_t, _bs_t):
    x, values, in_index, out_index = ctx.saved_tensors  # (the save_for_forward ones)
    op, out = torch.ops.sao_kernels.linear, None
    if x_t is not None:
        out = op(x_t, values, in_index, out_index, None, ctx.block_size)
    if values_t is not None:
        t = op(x, values_t, in_index, out_index, None, ctx.block_size)
        out = t if out is None else out + t
    if bias_t is not None:
        out = bias_t.expand(x.shape[0], -1).clone() if out is None else out + bias_t
    return out


# ------------------------------------------------------------------- registration
_library.register(NAME, linear_python, _library.python_autograd(NAME, _setup_context, _backward, _jvp))


@torch.library.register_fake(f"{_library.NAMESPACE}::{NAME}")
def _(x, values, in_index, out_index, bias, block_size=1):
    p = check_linear(x, values, in_index, out_index, bias, block_size, check_data=False)
    return x.new_empty(x.shape[0], p.G * p.a)


torch.library.register_vmap(f"{_library.NAMESPACE}::{NAME}", vmap_over_tokens(torch.ops.sao_kernels.linear, (0,)))


@register_flop_formula(torch.ops.sao_kernels.linear)
def _flops(x_shape, values_shape, *args, out_shape=None, **kwargs) -> int:
    return flops(x_shape[0], values_shape)
