"""Grad-input product of an SAO linear layer: ``dX[:, C_g] = dY[:, R_g] @ V_g``.

``torch.ops.sao_kernels.linear_grad_input(grad_out (T, m), values (G, a, c),
in_index | None, out_index | None, block_size=1) -> dx (T, n)``

Each input feature belongs to exactly one group, so every dX element is written once: no
atomics, no zero-fill pass.  native: the forward's grouped GEMM with V in place of V^T;
triton: the forward's ``grouped_gather_matmul`` kernel with V read transposed (strides
swapped, no copy), dY's columns gathered through ``out_index`` and dX's placed through
``in_index``; torch: gather dY, bmm, ordered store of dX.

Autograd (it is linear in dY and V): d(dY) = ``linear(g)``, dV = ``linear_grad_values(dY, g)``;
forward mode: linear_grad_input(dY_t; V) + linear_grad_input(dY; V_t).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .. import dispatch as _dispatch
from . import _library
from ._composite import dense_weight, flops, gather_groups, saveable, scatter_groups, vmap_over_tokens
from ._validate import Problem, check_linear_grad_input

NAME = "linear_grad_input"


def linear_grad_input_torch(grad_out: Tensor, values: Tensor, p: Problem) -> Tensor:
    """The structured torch composite: gather dY + bmm + ordered store of dX."""
    dyg = gather_groups(grad_out, p.out_index.index, p.G)  # (G, T, a)
    return scatter_groups(torch.bmm(dyg, values), p.in_index.index)


def linear_grad_input_python(
    grad_out: Tensor, values: Tensor, in_index: Optional[Tensor], out_index: Optional[Tensor], block_size: int = 1
) -> Tensor:
    """The Python implementation: checks, backend choice, then triton / torch / dense."""
    p = check_linear_grad_input(grad_out, values, in_index, out_index, block_size)
    T = grad_out.shape[0]
    name = _dispatch.select(grad_out.device, grad_out.dtype, tokens=T, flops=2 * T * values.numel())
    if name == "dense":
        return grad_out @ dense_weight(values, p)
    if name == "triton":
        from .triton import grouped_gather_matmul

        return grouped_gather_matmul(
            grad_out,
            p.out_index.index,
            values.transpose(1, 2),
            p.in_index.index,
            None,
            lhs_run=p.out_index.run,
            out_run=p.in_index.run,
        )
    if name == "native":  # the C++ CPU kernel runs every native case before reaching Python
        raise RuntimeError(
            "linear_grad_input: the native kernels were selected but the C++ CPU kernel did not run them"
        )
    return linear_grad_input_torch(grad_out, values, p)


# ------------------------------------------------------------- autograd (no extension)
def _setup_context(ctx, inputs, output) -> None:
    grad_out, values, in_index, out_index, block_size = inputs
    in_index, out_index = saveable(in_index), saveable(out_index)
    ctx.save_for_backward(grad_out, values, in_index, out_index)
    ctx.save_for_forward(grad_out, values, in_index, out_index)
    ctx.block_size = block_size


def _backward(ctx, ggrad):
    grad_out, values, in_index, out_index = ctx.saved_tensors
    need = ctx.needs_input_grad[1:]  # [0] is the dispatch keyset
    ops = torch.ops.sao_kernels
    d_grad = ops.linear(ggrad, values, in_index, out_index, None, ctx.block_size) if need[0] else None
    d_values = (
        ops.linear_grad_values(grad_out, ggrad, in_index, out_index, values.shape[0], ctx.block_size)
        if need[1]
        else None
    )
    return d_grad, d_values, None, None, None


def _jvp(ctx, grad_out_t, values_t, _ii_t, _oi_t, _bs_t):
    grad_out, values, in_index, out_index = ctx.saved_tensors  # (the save_for_forward ones)
    op, out = torch.ops.sao_kernels.linear_grad_input, None
    if grad_out_t is not None:
        out = op(grad_out_t, values, in_index, out_index, ctx.block_size)
    if values_t is not None:
        t = op(grad_out, values_t, in_index, out_index, ctx.block_size)
        out = t if out is None else out + t
    return out


# ------------------------------------------------------------------- registration
_library.register(NAME, linear_grad_input_python, _library.python_autograd(NAME, _setup_context, _backward, _jvp))


@torch.library.register_fake(f"{_library.NAMESPACE}::{NAME}")
def _(grad_out, values, in_index, out_index, block_size=1):
    p = check_linear_grad_input(grad_out, values, in_index, out_index, block_size, check_data=False)
    return grad_out.new_empty(grad_out.shape[0], p.G * p.c)


torch.library.register_vmap(
    f"{_library.NAMESPACE}::{NAME}", vmap_over_tokens(torch.ops.sao_kernels.linear_grad_input, (0,))
)


@register_flop_formula(torch.ops.sao_kernels.linear_grad_input)
def _flops(grad_shape, values_shape, *args, out_shape=None, **kwargs) -> int:
    return flops(grad_shape[0], values_shape)
