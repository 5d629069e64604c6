"""What the three ops' torch paths share: group-order gathers, the masked-dense reference
weight, the flop count and the vmap rule.  (Glossary: ``sao_kernels/ops/_validate.py``.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

from ._validate import Problem


def poison(t: Tensor) -> Tensor:
    """Fill a fresh output with NaN when ``SAO_KERNELS_POISON=1`` (tests), so that any element a
    kernel fails to write shows up as NaN instead of stale memory.  The one definition: the
    torch composites and the Triton launchers call it; the native kernels read the same
    variable.  Meta tensors (the Triton planners' inputs) hold nothing to fill."""
    if os.environ.get("SAO_KERNELS_POISON", "0") == "1" and t.is_floating_point() and t.device.type != "meta":
        t.fill_(float("nan"))
    return t


def gather_groups(t: Tensor, index: Optional[Tensor], groups: int) -> Tensor:
    """(T, G*k) activation -> (G, T, k) view in group order (one gather when index is set)."""
    T, n = t.shape
    if index is not None:
        t = t.index_select(1, index)
    # explicit sizes, not -1: with T == 0 a -1 is ambiguous and view/reshape raise
    return t.reshape(T, groups, n // groups).transpose(0, 1)


def scatter_groups(grouped: Tensor, index: Optional[Tensor]) -> Tensor:
    """(G, T, k) result in group order -> (T, G*k) in feature order (one pass)."""
    G, T, k = grouped.shape
    by_token = grouped.transpose(0, 1)  # (T, G, k) view
    if index is None:
        return by_token.reshape(T, G * k)
    out = poison(grouped.new_empty(T, G * k))
    out[:, index.view(G, k)] = by_token  # index is a checked permutation: every column written once
    return out


def saveable(index: Optional[Tensor]) -> Optional[Tensor]:
    """An index map to save for backward: inference tensors cannot be saved, so they are
    copied (O(n); indices are never differentiated)."""
    return index.clone() if index is not None and index.is_inference() else index


def block_coords(p: Problem, device: torch.device) -> tuple[Tensor, Tensor]:
    """(G, a, 1) rows and (G, 1, c) columns of every block entry in the (m, n) weight."""
    rows, cols = p.out_index.index, p.in_index.index
    rows = (rows if rows is not None else torch.arange(p.G * p.a, device=device)).view(p.G, p.a, 1)
    cols = (cols if cols is not None else torch.arange(p.G * p.c, device=device)).view(p.G, 1, p.c)
    return rows, cols


def dense_weight(values: Tensor, p: Problem) -> Tensor:
    """(m, n) masked-dense equivalent of the blocks (the ``dense`` reference backend)."""
    rows, cols = block_coords(p, values.device)
    return values.new_zeros(p.G * p.a, p.G * p.c).index_put((rows, cols), values)


def flops(tokens: int, values_shape) -> int:
    """2 * T * m * n / G: every one of the three products does this many flops."""
    G, a, c = values_shape[:3]
    return 2 * tokens * G * a * c


def vmap_over_tokens(op: Callable, activation_args: tuple[int, ...]) -> Callable:
    """A ``torch.library.register_vmap`` rule for an op whose rows (tokens) are independent.

    When only the activations in positions ``activation_args`` are batched, the batch folds
    into the token dimension: one call of the op.  Anything else (batched values, bias or
    index maps) runs the op once per batch element.
    """

    def rule(info, in_dims, *args):
        batched = [i for i, d in enumerate(in_dims) if d is not None]
        if batched and set(batched) <= set(activation_args):
            moved = list(args)
            for i in batched:
                moved[i] = args[i].movedim(in_dims[i], 0)
            B, T = info.batch_size, moved[batched[0]].shape[1]
            for i in activation_args:
                if in_dims[i] is None:  # an unbatched activation beside a batched one
                    moved[i] = args[i].expand(B, *args[i].shape)
                moved[i] = moved[i].reshape(B * T, moved[i].shape[-1])
            out = op(*moved)
            return out.view(B, T, out.shape[-1]), 0
        outs = []
        for b in range(info.batch_size):
            outs.append(op(*(a.select(d, b) if d is not None else a for a, d in zip(args, in_dims))))
        return torch.stack(outs), 0

    return rule
