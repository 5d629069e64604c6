"""Triton helpers the kernels share: feature numbers through an index map, offsets, accumulators.

Glossary (``sao_kernels.ops``): T tokens, G groups, a = m/G and c = n/G the block sides, b =
``block_size``; an index map lists the features of group g at ``[g*side, (g+1)*side)``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def group_features(
    index_ptr, base, offs, mask, HAS_INDEX: tl.constexpr, RUN: tl.constexpr, GRAIN: tl.constexpr, BLOCK: tl.constexpr
):
    """The features at positions ``base + offs`` of an index map (``base + offs`` itself for
    the identity map), for a BLOCK-long range ``offs`` that starts at a multiple of BLOCK.

    With aligned runs of RUN consecutive features (RUN a power of two, verified by the ops'
    argument checks) only each run's first entry is read, and the compiler is told that the
    features come in contiguous, aligned groups of min(RUN, BLOCK): the loads and stores
    through them vectorise (16-byte accesses from 16-byte runs).  For the identity map it is
    told that ``base`` (g times the block side) is a multiple of GRAIN, a power of two dividing
    the side: Triton cannot know it when the side is not a multiple of 16.
    """
    if HAS_INDEX:
        if RUN > 1:
            starts = tl.load(index_ptr + base + (offs // RUN) * RUN, mask=mask, other=0)
            feats = starts + offs % RUN
            if RUN < BLOCK:
                feats = tl.max_contiguous(tl.multiple_of(feats, RUN), RUN)
            else:
                feats = tl.max_contiguous(tl.multiple_of(feats, BLOCK), BLOCK)
        else:
            feats = tl.load(index_ptr + base + offs, mask=mask, other=0)
    else:
        feats = base + offs
        if GRAIN > 1:
            if GRAIN < BLOCK:
                feats = tl.multiple_of(feats, GRAIN)
            else:
                feats = tl.multiple_of(feats, BLOCK)
    return feats


@triton.jit
def run_mask(offs, limit, GRAIN: tl.constexpr, BLOCK: tl.constexpr):
    """``offs < limit`` for a BLOCK-long range ``offs`` (starting at a multiple of BLOCK) and a
    ``limit`` that is a multiple of min(GRAIN, BLOCK), computed per such group, so that the
    compiler sees the mask constant over each group and can vectorise the accesses it guards.
    (Per element, it cannot, unless ``limit`` is a kernel argument specialised as a multiple of
    16.)  GRAIN: an index map's run length, or the power-of-two factor of ``limit``."""
    if GRAIN > 1:
        if GRAIN < BLOCK:
            mask = (offs // GRAIN) < (limit // GRAIN)
        else:
            mask = (offs // BLOCK) < (limit // BLOCK)
    else:
        mask = offs < limit
    return mask


@triton.jit
def element_offsets(idx, stride, WIDE: tl.constexpr):
    """``idx * stride`` in int64 when some offset into the tensor passes int32, else in int32."""
    if WIDE:
        offsets = idx.to(tl.int64) * stride
    else:
        offsets = idx * stride
    return offsets


@triton.jit
def strided_offsets(idx, stride, ALIGN: tl.constexpr, WIDE: tl.constexpr):
    """``idx * stride`` (:func:`element_offsets`), with the compiler told that the products are
    multiples of ALIGN, the stride's power-of-two factor (at most 16, see
    ``_common.stride_align``).  Triton learns only divisibility by 16 of an integer argument,
    so a row stride like 200 would otherwise hide that every row starts 16-byte aligned, and
    the loads of the row would not vectorise."""
    offsets = element_offsets(idx, stride, WIDE)
    if ALIGN > 1:
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit
def zero_accumulator(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_FP64: tl.constexpr):
    """A (BLOCK_M, BLOCK_N) float32 accumulator (float64 for float64 inputs)."""
    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return acc


@triton.jit
def dot_operand(tile, UPCAST: tl.constexpr):
    """A loaded tile as ``tl.dot`` takes it (float32 for 16-bit tiles in the interpreter)."""
    if UPCAST:
        operand = tile.to(tl.float32)
    else:
        operand = tile
    return operand
