"""Grad-values product of an SAO linear layer: ``dV_g = dY[:, R_g]^T @ X[:, C_g]``.

``torch.ops.sao_kernels.linear_grad_values(grad_out (T, m), x (T, n), in_index | None,
out_index | None, groups, block_size=1) -> dvalues (G, a, c)``

A reduction over tokens, deterministic on every backend (no atomics; fixed reduction
orders).  native: X packed once in group order, per-(group, row block) GEMMs over all tokens;
triton (``ops/triton/grad_values.py``): both gathers fused into the loads, float32
partials per token split summed in a fixed order; torch: two gathers and one batched GEMM.

Autograd (bilinear in dY and X): d(dY) = ``linear(X; g)``, dX = ``linear_grad_input(dY; g)``;
forward mode: linear_grad_values(dY_t, X) + linear_grad_values(dY, X_t).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .. import dispatch as _dispatch
from . import _library
from ._composite import block_coords, flops, gather_groups, saveable, vmap_over_tokens
from ._validate import Problem, check_linear_grad_values

NAME = "linear_grad_values"


def linear_grad_values_torch(grad_out: Tensor, x: Tensor, p: Problem) -> Tensor:
    """The structured torch composite: two gathers + bmm over tokens."""
    dyg = gather_groups(grad_out, p.out_index.index, p.G)  # (G, T, a)
    xg = gather_groups(x, p.in_index.index, p.G)  # (G, T, c)
    return torch.bmm(dyg.transpose(1, 2), xg)


def linear_grad_values_python(
    grad_out: Tensor,
    x: Tensor,
    in_index: Optional[Tensor],
    out_index: Optional[Tensor],
    groups: int,
    block_size: int = 1,
) -> Tensor:
    """The Python implementation: checks, backend choice, then triton / torch / dense."""
    p = check_linear_grad_values(grad_out, x, in_index, out_index, groups, block_size)
    T = x.shape[0]
    name = _dispatch.select(x.device, x.dtype, tokens=T, flops=2 * T * grad_out.shape[1] * x.shape[1] // groups)
    if name == "dense":
        rows, cols = block_coords(p, x.device)
        return (grad_out.t() @ x)[rows, cols]
    if name == "triton":
        from .triton import grouped_grad_values

        return grouped_grad_values(
            grad_out, x, p.in_index.index, p.out_index.index, p.G, in_run=p.in_index.run, out_run=p.out_index.run
        )
    if name == "native":  # the C++ CPU kernel runs every native case before reaching Python
        raise RuntimeError(
            "linear_grad_values: the native kernels were selected but the C++ CPU kernel did not run them"
        )
    return linear_grad_values_torch(grad_out, x, p)


# ------------------------------------------------------------- autograd (no extension)
def _setup_context(ctx, inputs, output) -> None:
    grad_out, x, in_index, out_index, groups, block_size = inputs
    in_index, out_index = saveable(in_index), saveable(out_index)
    ctx.save_for_backward(grad_out, x, in_index, out_index)
    ctx.save_for_forward(grad_out, x, in_index, out_index)
    ctx.groups, ctx.block_size = groups, block_size


def _backward(ctx, gv):
    grad_out, x, in_index, out_index = ctx.saved_tensors
    need = ctx.needs_input_grad[1:]  # [0] is the dispatch keyset
    ops = torch.ops.sao_kernels
    d_grad = ops.linear(x, gv, in_index, out_index, None, ctx.block_size) if need[0] else None
    d_x = ops.linear_grad_input(grad_out, gv, in_index, out_index, ctx.block_size) if need[1] else None
    return d_grad, d_x, None, None, None, None


def _jvp(ctx, grad_out_t, x_t, _ii_t, _oi_t, _groups_t, _bs_t):
    grad_out, x, in_index, out_index = ctx.saved_tensors  # (the save_for_forward ones)
    op, out = torch.ops.sao_kernels.linear_grad_values, None
    if grad_out_t is not None:
        out = op(grad_out_t, x, in_index, out_index, ctx.groups, ctx.block_size)
    if x_t is not None:
        t = op(grad_out, x_t, in_index, out_index, ctx.groups, ctx.block_size)
        out = t if out is None else out + t
    return out


# ------------------------------------------------------------------- registration
_library.register(NAME, linear_grad_values_python, _library.python_autograd(NAME, _setup_context, _backward, _jvp))


@torch.library.register_fake(f"{_library.NAMESPACE}::{NAME}")
def _(grad_out, x, in_index, out_index, groups, block_size=1):
    p = check_linear_grad_values(grad_out, x, in_index, out_index, groups, block_size, check_data=False)
    return x.new_empty(p.G, p.a, p.c)


# grad-values sums over tokens, so a batch cannot fold into them: one call per batch element.
torch.library.register_vmap(
    f"{_library.NAMESPACE}::{NAME}", vmap_over_tokens(torch.ops.sao_kernels.linear_grad_values, ())
)


@register_flop_formula(torch.ops.sao_kernels.linear_grad_values)
def _flops(grad_shape, x_shape, in_index_shape, out_index_shape, groups, *args, out_shape=None, **kwargs) -> int:
    T, m = grad_shape
    return flops(T, (groups, m // groups, x_shape[1] // groups))
