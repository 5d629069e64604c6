"""The compact grouped block format of an SAO weight, and its conversions.

An SAO weight is a row- and column-permuted block diagonal, so a whole layer is

    values     (G, m/G, n/G, *kernel)  the only trainable tensor
    in_index   (n,) int64              input features in group order: group g reads
                                       in_index[g*n/G : (g+1)*n/G]
    out_index  (m,) int64              output features in group order

    W[out_index[g*m/G + i], in_index[g*n/G + k]] = values[g, i, k]    (all other W are 0)

so ``y[:, out_index[g*m/G + i]] = sum_k x[:, in_index[g*n/G + k]] * values[g, i, k]``.
``kernel`` is empty for a linear layer and (kh, kw) for a convolution (the mask is on
(out, in) channel pairs; every tap of a kept pair is stored).

``block_size`` b declares that both index vectors consist of aligned runs of b consecutive
features (``index[j*b : (j+1)*b] == index[j*b] + arange(b)`` with ``index[j*b] % b == 0``),
which is what lets a kernel read contiguous tiles; b = 1 declares nothing.

Tensors on the meta device (deferred initialisation) carry shapes and dtypes but no data:
the format checks their shapes, dtypes and devices and skips the data checks
(permutation, runs), which the real tensors get when they are filled or loaded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import is_int
from .sizes import divisors

__all__ = ["GroupedBlockFormat", "from_dense", "from_pruned"]


def _is_permutation(index: Tensor) -> bool:
    n = index.numel()
    return bool(torch.equal(torch.sort(index).values, torch.arange(n, device=index.device, dtype=index.dtype)))


def _is_identity(index: Tensor) -> bool:
    return bool(torch.equal(index, torch.arange(index.numel(), device=index.device, dtype=index.dtype)))


def _has_tiles(index: Tensor, block_size: int) -> bool:
    """True when ``index`` is made of aligned runs of ``block_size`` consecutive features."""
    if block_size == 1:
        return True
    if index.numel() % block_size:
        return False
    tiles = index.view(-1, block_size)
    start = tiles[:, :1]
    run = start + torch.arange(block_size, device=index.device, dtype=index.dtype)
    return bool(torch.equal(tiles, run)) and bool((start % block_size == 0).all())


@dataclass(frozen=True, eq=False)
class GroupedBlockFormat:
    """A permuted block-diagonal weight stored as G dense blocks plus two index maps.

    Attributes:
        values: (G, m/G, n/G) or (G, m/G, n/G, kh, kw) floating tensor.
        in_index: (n,) int64 permutation of range(n), input features in group order.
        out_index: (m,) int64 permutation of range(m), output features in group order.
        block_size: b >= 1; both indices are aligned runs of b consecutive features.

    Raises:
        ValueError / TypeError: on any inconsistency, naming the field.
    """

    values: Tensor
    in_index: Tensor
    out_index: Tensor
    block_size: int = 1

    def __post_init__(self) -> None:
        v, ii, oi, b = self.values, self.in_index, self.out_index, self.block_size
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise TypeError(f"values must be a floating-point tensor, got {type(v).__name__} {getattr(v, 'dtype', '')}")
        if v.dim() not in (3, 5):
            raise ValueError(f"values must have shape (G, m/G, n/G) or (G, m/G, n/G, kh, kw), got {tuple(v.shape)}")
        if min(v.shape[:3]) < 1:
            raise ValueError(f"values must have non-empty group dimensions, got {tuple(v.shape)}")
        if v.dim() == 5 and min(v.shape[3:]) < 1:
            raise ValueError(f"values must have a non-empty kernel (kh, kw >= 1), got {tuple(v.shape)}")
        # Data checks need data: meta tensors (deferred init) get the shape checks only.
        has_data = not (v.is_meta or getattr(ii, "is_meta", False) or getattr(oi, "is_meta", False))
        G, a, c = v.shape[:3]
        for name, idx, size in (("in_index", ii, G * c), ("out_index", oi, G * a)):
            if not isinstance(idx, Tensor) or idx.dtype != torch.int64:
                raise TypeError(f"{name} must be an int64 tensor, got {getattr(idx, 'dtype', type(idx).__name__)}")
            if idx.dim() != 1 or idx.numel() != size:
                raise ValueError(
                    f"{name} must have shape ({size},) to match values {tuple(v.shape)} "
                    f"(G={G} groups), got {tuple(idx.shape)}"
                )
            if idx.device != v.device:
                raise ValueError(f"{name} is on {idx.device} but values are on {v.device}; all must share a device")
            if has_data and not _is_permutation(idx):
                raise ValueError(f"{name} must be a permutation of range({size}) (each feature in exactly one group)")
        if not is_int(b) or b < 1:
            raise ValueError(f"block_size must be a positive int, got {b!r}")
        b = int(b)
        object.__setattr__(self, "block_size", b)  # a numpy integer becomes an int
        if a % b or c % b:
            raise ValueError(f"block_size={b} must divide both block sides m/G={a} and n/G={c}")
        for name, idx in (("in_index", ii), ("out_index", oi)):
            if has_data and not _has_tiles(idx, b):
                raise ValueError(f"{name} is not made of aligned runs of block_size={b} consecutive features")

    # ------------------------------------------------------------- op arguments
    def op_args(self) -> tuple[Tensor, Tensor | None, Tensor | None, int]:
        """``(values, in_index, out_index, block_size)`` as the ``torch.ops.sao_kernels`` ops take
        them, with an identity index given as None (the ops skip that gather).

        >>> y = torch.ops.sao_kernels.linear(x, *blocks.op_args()[:3], bias, blocks.block_size)
        """
        if self.values.is_meta:  # no data to look at: pass the indices as they are
            return self.values, self.in_index, self.out_index, self.block_size
        in_index = None if _is_identity(self.in_index) else self.in_index
        out_index = None if _is_identity(self.out_index) else self.out_index
        return self.values, in_index, out_index, self.block_size

    # ------------------------------------------------------------------ sizes
    @property
    def groups(self) -> int:
        """G, the number of blocks."""
        return self.values.shape[0]

    @property
    def out_features(self) -> int:
        return self.out_index.numel()

    @property
    def in_features(self) -> int:
        return self.in_index.numel()

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """() for a linear weight, (kh, kw) for a convolution."""
        return tuple(self.values.shape[3:])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the equivalent dense weight."""
        return (self.out_features, self.in_features, *self.kernel_size)

    @property
    def sparsity(self) -> float:
        """Fraction of zero (out, in) pairs: exactly 1 - 1/G."""
        return 1.0 - 1.0 / self.groups

    # ------------------------------------------------------------ conversions
    def mask(self) -> Tensor:
        """(m, n) bool mask of the kept (out, in) pairs."""
        G, a, c = self.values.shape[:3]
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        mask[self.out_index.view(G, a, 1), self.in_index.view(G, 1, c)] = True
        return mask

    def to_dense(self) -> Tensor:
        """The equivalent dense weight (m, n, *kernel); differentiable w.r.t. ``values``."""
        G, a, c = self.values.shape[:3]
        dense = self.values.new_zeros(self.shape)
        return dense.index_put((self.out_index.view(G, a, 1), self.in_index.view(G, 1, c)), self.values)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GroupedBlockFormat:
        """A copy with values moved/cast and indices moved (indices stay int64)."""
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
        return GroupedBlockFormat(
            self.values.to(device=device, dtype=dtype),
            self.in_index.to(device=device),
            self.out_index.to(device=device),
            self.block_size,
        )

    def to_bsr(self, blocksize: int | tuple[int, int], *, permuted: bool = False) -> Tensor:
        """torch sparse BSR tensor, for baseline benchmarks.

        Args:
            blocksize: BSR block (r, c) (an int means square); must divide the matrix.
            permuted: False gives the (m, n) weight itself (``.to_dense()`` round-trips
                exactly).  True gives the group-ordered block diagonal blockdiag(values)
                (m, n), so that ``y[:, out_index] = x[:, in_index] @ bsr.T``: the form in
                which BSR can skip the zero blocks at any ``block_size``.
        """
        if self.kernel_size:
            raise ValueError(f"to_bsr needs a linear (2-D) weight; this one has kernel dims {self.kernel_size}")
        if not isinstance(permuted, bool):
            raise TypeError(f"permuted must be a bool, got {permuted!r}")
        m, n = self.out_features, self.in_features
        if is_int(blocksize):
            pair: tuple = (blocksize, blocksize)
        elif isinstance(blocksize, (tuple, list)):
            pair = tuple(blocksize)
        else:
            pair = ()
        if len(pair) != 2 or not all(is_int(x) for x in pair):
            raise ValueError(
                f"blocksize must be an int or a pair (r, c) of ints dividing the weight shape {m}x{n}, "
                f"got {blocksize!r}"
            )
        r, c = int(pair[0]), int(pair[1])
        if r < 1 or c < 1 or m % r or n % c:
            raise ValueError(f"blocksize={blocksize!r} must be positive and divide the weight shape {m}x{n}")
        dense = torch.block_diag(*self.values.unbind(0)) if permuted else self.to_dense()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
            return dense.detach().to_sparse_bsr((r, c))

    def __repr__(self) -> str:
        return (
            f"GroupedBlockFormat(shape={self.shape}, groups={self.groups}, sparsity={self.sparsity:.4g}, "
            f"block_size={self.block_size}, dtype={self.values.dtype}, device={self.values.device})"
        )


# ---------------------------------------------------------------------- detection
def largest_block_size(in_index: Tensor, out_index: Tensor, a: int, c: int) -> int:
    for b in reversed(divisors(math.gcd(a, c))):
        if _has_tiles(in_index, b) and _has_tiles(out_index, b):
            return b
    return 1


def from_pruned(weight: Tensor, mask: Tensor, *, block_size: int | None = None) -> GroupedBlockFormat:
    """Pack a masked dense weight (e.g. ``weight_orig``/``weight_mask`` left by
    ``torch.nn.utils.prune``) into the compact format.

    Args:
        weight: (m, n) or (m, n, kh, kw) dense weight; entries outside the mask are ignored.
        mask: (m, n) mask of (out, in) pairs, or a mask of the weight's own shape; for a
            convolution it must keep or drop whole kernels.
        block_size: the tile width to declare; None detects the largest that holds.

    Raises:
        ValueError: when the mask is not a row- and column-permuted block diagonal with
            G equal blocks, with the reason.
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() not in (2, 4):
        raise ValueError(
            f"weight must be a floating tensor of shape (m, n) or (m, n, kh, kw), got "
            f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}"
        )
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if weight.is_meta or mask.is_meta:
        raise ValueError("from_pruned needs weight and mask with data; they are on the meta device")
    m, n = weight.shape[:2]
    mask = mask.to(device=weight.device) != 0
    if mask.shape == weight.shape and weight.dim() == 4:
        pair = mask.flatten(2)
        if not torch.equal(pair.all(-1), pair.any(-1)):
            raise ValueError("mask keeps some taps of a kernel and drops others; SAO masks whole (out, in) kernels")
        mask = pair.any(-1)
    if mask.shape != (m, n):
        raise ValueError(f"mask must have shape {(m, n)} or {tuple(weight.shape)}, got {tuple(mask.shape)}")
    empty_rows = (~mask.any(1)).nonzero().flatten()
    if empty_rows.numel():
        raise ValueError(f"not SAO-structured: output row {int(empty_rows[0])} has no kept weight")
    empty_cols = (~mask.any(0)).nonzero().flatten()
    if empty_cols.numel():
        raise ValueError(f"not SAO-structured: input column {int(empty_cols[0])} has no kept weight")

    # Rows of one group share the same column set, and the sets of different groups are
    # disjoint and cover every column.
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    G = patterns.shape[0]
    overlap = (patterns.sum(0) > 1).nonzero().flatten()
    if overlap.numel():
        col = int(overlap[0])
        rows = mask[:, col].nonzero().flatten()
        first = next(int(r) for r in rows if not torch.equal(mask[r], mask[rows[0]]))
        raise ValueError(
            f"not a permuted block diagonal: rows {int(rows[0])} and {first} both use input {col} "
            "but keep different input sets"
        )
    row_counts = torch.bincount(inverse, minlength=G)
    col_counts = patterns.sum(1)
    if not bool((row_counts == row_counts[0]).all()) or not bool((col_counts == col_counts[0]).all()):
        raise ValueError(
            f"not SAO-structured: the {G} blocks have unequal sizes "
            f"(rows per block {sorted(set(row_counts.tolist()))}, inputs per block {sorted(set(col_counts.tolist()))})"
        )
    a, c = m // G, n // G
    # Order the groups by their smallest output row, and features ascending in each group.
    first_row = torch.full((G,), m, dtype=torch.int64, device=mask.device)
    first_row.scatter_reduce_(0, inverse, torch.arange(m, device=mask.device), reduce="amin")
    order = torch.argsort(first_row)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(G, device=mask.device)
    row_group = rank[inverse]
    out_index = torch.argsort(row_group * m + torch.arange(m, device=mask.device))
    col_group = rank[patterns.to(torch.int64).argmax(0)]
    in_index = torch.argsort(col_group * n + torch.arange(n, device=mask.device))
    values = weight[out_index.view(G, a, 1), in_index.view(G, 1, c)]
    if block_size is None:
        block_size = largest_block_size(in_index, out_index, a, c)
    return GroupedBlockFormat(values.contiguous(), in_index, out_index, block_size)


def from_dense(weight: Tensor, *, block_size: int | None = None) -> GroupedBlockFormat:
    """Pack a dense SAO-structured weight, detecting its groups from its non-zeros.

    An exact zero inside a block cannot be told apart from a pruned weight; pass the mask
    to :func:`from_pruned` in that case.
    """
    if not isinstance(weight, Tensor) or weight.dim() not in (2, 4):
        got = getattr(weight, "shape", weight)
        raise ValueError(f"weight must be a tensor of shape (m, n) or (m, n, kh, kw), got {got}")
    mask = weight != 0
    if weight.dim() == 4:
        mask = mask.flatten(2).any(-1)
    return from_pruned(weight, mask, block_size=block_size)
