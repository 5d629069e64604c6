"""Launch steps of the helper kernels: the permuted copy and the fixed-order split reduction."""

from __future__ import annotations

from typing import Optional

import triton
from torch import Tensor

from . import tiles as _tiles
from ._common import Device, Step, needs_wide_offsets, stride_align
from .kernels import gather_columns_kernel, split_reduce_kernel


def gather_columns_step(src: Tensor, index: Tensor, dst: Tensor, device: Device) -> Step:
    """``dst[t, j] = src[t, index[j]]`` (dst contiguous, index int32): one pass over src."""
    T, J = dst.shape
    tiles = _tiles.gather_columns_tiles(J, src.element_size(), device)
    args = dict(
        src_ptr=src,
        index_ptr=index,
        dst_ptr=dst,
        T=T,
        J=J,
        stride_st=src.stride(0),
        stride_sj=src.stride(1),
        stride_dt=dst.stride(0),
        ALIGN_ST=stride_align(src.stride(0)),
        ALIGN_DT=stride_align(dst.stride(0)),
        WIDE=needs_wide_offsets(src, dst),
        J_GRAIN=stride_align(J),
    )
    return Step(gather_columns_kernel, args, tiles, lambda b: (triton.cdiv(T, b["BLOCK_T"]),))


def split_reduce_step(
    part: Tensor, out: Tensor, index: Optional[Tensor], run: int, bias: Optional[Tensor], device: Device
) -> Step:
    """``out[r, index[j]] = sum_s part[s, r, j] (+ bias[index[j]])`` in split order.

    ``part`` is (S, R, J); ``out`` (R, J) any strides; ``index`` None or (J,) int32; ``bias``
    None or (J,) contiguous, in ``out``'s column order.
    """
    S, R, J = part.shape
    tiles = _tiles.split_reduce_tiles(J, device)
    args = dict(
        part_ptr=part,
        bias_ptr=bias if bias is not None else out,
        out_ptr=out,
        index_ptr=index if index is not None else part,
        R=R,
        J=J,
        SPLITS=S,
        stride_ps=part.stride(0),
        stride_pr=part.stride(1),
        stride_pj=part.stride(2),
        stride_or=out.stride(0),
        stride_oj=out.stride(1),
        HAS_INDEX=index is not None,
        RUN=run if index is not None else 1,
        HAS_BIAS=bias is not None,
        WIDE=needs_wide_offsets(part, out),
        J_GRAIN=max(run if index is not None else 1, stride_align(J)),
        ALIGN_PR=stride_align(part.stride(1)),
        ALIGN_OR=stride_align(out.stride(0)),
    )
    return Step(
        split_reduce_kernel, args, tiles, lambda b: (triton.cdiv(R, b["BLOCK_R"]), triton.cdiv(J, b["BLOCK_J"]))
    )
