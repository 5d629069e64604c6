"""The Triton kernels of the SAO products (launch plans: ``gather_matmul.py``, ``grad_values.py``).

Glossary (``sao_kernels.ops``): T tokens, G groups, a = m/G and c = n/G the block sides.
Kernel-local names: the gather-matmul kernel multiplies a (T, G*K) left operand ``lhs`` (X in the
forward, dY in grad-input) by the blocks ``v`` (G, N, K) into a (T, G*N) output, so (N, K) =
(a, c) in the forward and (c, a) in grad-input; the grad-values kernel's (A, C) are (a, c).

* :func:`gather_matmul_kernel`  ``out[t, out_index[g*N + j]] = sum_k lhs[t, lhs_index[g*K + k]] * v[g, j, k] (+ bias)``
* :func:`grad_values_kernel`    ``dv[g, i, j] = sum_t dy[t, out_index[g*A + i]] * x[t, in_index[g*C + j]]``
* :func:`split_reduce_kernel`   ``out[r, index[j]] = sum_s part[s, r, j] (+ bias)``: the fixed-order
  sum of split-K / split-T partials (deterministic: no atomics anywhere)
* :func:`gather_columns_kernel` ``dst[t, j] = src[t, index[j]]``: the permuted copy of the
  permute-then-contiguous path
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import dot_operand, element_offsets, group_features, run_mask, strided_offsets, zero_accumulator


@triton.jit(do_not_specialize=["T", "T_BUCKET"])
def gather_matmul_kernel(
    # -- pointers
    lhs_ptr,
    lhs_index_ptr,
    v_ptr,
    bias_ptr,
    out_ptr,
    out_index_ptr,
    # -- sizes: lhs is (T, G*K), v is (G, N, K), out is (T, G*N) (or (splits, T, G*N) partials)
    T,
    G,
    N,
    K,
    K_PER_SPLIT,
    # -- strides, in elements
    stride_lt,
    stride_lk,
    stride_vg,
    stride_vn,
    stride_vk,
    stride_os,
    stride_ot,
    stride_on,
    T_BUCKET,  # autotune key only
    # -- what is indexed: lhs's columns through lhs_index, out's columns through out_index
    HAS_LHS_INDEX: tl.constexpr,
    LHS_RUN: tl.constexpr,
    HAS_OUT_INDEX: tl.constexpr,
    OUT_RUN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    # -- layout: T_ALIGN > 1 when lhs is token-contiguous (strides (1, T)) and T a multiple of it;
    #    the power-of-two factors of the runtime strides (``_common.stride_align``)
    T_ALIGN: tl.constexpr,
    ALIGN_LT: tl.constexpr,
    ALIGN_LK: tl.constexpr,
    ALIGN_VN: tl.constexpr,
    ALIGN_VK: tl.constexpr,
    ALIGN_OT: tl.constexpr,
    # -- mask grains: K and N are multiples of them (the index run, or their power-of-two factor)
    K_GRAIN: tl.constexpr,
    N_GRAIN: tl.constexpr,
    # -- arithmetic
    ACC_FP64: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    WIDE: tl.constexpr,
    # -- tiles
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (token block, group, output block, K split) tile of
    ``out[t, out_index[g*N + j]] = sum_k lhs[t, lhs_index[g*K + k]] * v[g, j, k] (+ bias)``."""
    # -- program -> tile.  Token block outermost: the programs of one token block (all
    #    groups, all output blocks) run together, so that row block of ``lhs`` is read from HBM
    #    once and served to every group from L2.
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(N, BLOCK_N)
    splits = tl.cdiv(K, K_PER_SPLIT)
    per_token_block = G * blocks_n * splits
    pid_t = pid // per_token_block
    rest = pid % per_token_block
    g = rest // (blocks_n * splits)
    pid_n = (rest // splits) % blocks_n
    split = rest % splits

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_t = run_mask(offs_t, T, T_ALIGN, BLOCK_T)  # constant over T_ALIGN tokens: vector loads along T
    mask_n = run_mask(offs_n, N, N_GRAIN, BLOCK_N)
    lhs_rows = lhs_ptr + strided_offsets(offs_t, stride_lt, ALIGN_LT, WIDE)[:, None]
    v_cols = v_ptr + element_offsets(g, stride_vg, WIDE) + strided_offsets(offs_n, stride_vn, ALIGN_VN, WIDE)[None, :]

    # -- K loop over this split's range.  The gathered columns of the next K block are read
    #    one iteration ahead, so the gathered load of ``lhs`` never waits on an index load in
    #    its own iteration (that dependency halves the software pipeline's depth).
    k_lo = tl.multiple_of(split * K_PER_SPLIT, BLOCK_K)  # K_PER_SPLIT is a multiple of BLOCK_K (or K, split 0)
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    offs_k = k_lo + tl.arange(0, BLOCK_K)
    cols = group_features(lhs_index_ptr, g * K, offs_k, offs_k < k_hi, HAS_LHS_INDEX, LHS_RUN, K_GRAIN, BLOCK_K)
    acc = zero_accumulator(BLOCK_T, BLOCK_N, ACC_FP64)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = run_mask(offs_k, k_hi, K_GRAIN, BLOCK_K)
        lhs = tl.load(
            lhs_rows + strided_offsets(cols, stride_lk, ALIGN_LK, WIDE)[None, :],
            mask=mask_t[:, None] & mask_k[None, :],
            other=0.0,
        )
        v = tl.load(
            v_cols + strided_offsets(offs_k, stride_vk, ALIGN_VK, WIDE)[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        next_k = offs_k + BLOCK_K
        cols = group_features(lhs_index_ptr, g * K, next_k, next_k < k_hi, HAS_LHS_INDEX, LHS_RUN, K_GRAIN, BLOCK_K)
        acc = tl.dot(dot_operand(lhs, UPCAST), dot_operand(v, UPCAST), acc, input_precision=PRECISION)

    # -- epilogue: bias, placement of the outputs through out_index (aligned runs: vector stores)
    rows = group_features(out_index_ptr, g * N, offs_n, mask_n, HAS_OUT_INDEX, OUT_RUN, N_GRAIN, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    out_ptrs = (
        out_ptr
        + element_offsets(split, stride_os, WIDE)
        + strided_offsets(offs_t, stride_ot, ALIGN_OT, WIDE)[:, None]
        + element_offsets(rows, stride_on, WIDE)[None, :]
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


@triton.jit(do_not_specialize=["T", "T_BUCKET", "T_PER_SPLIT"])
def grad_values_kernel(
    # -- pointers
    dy_ptr,
    out_index_ptr,
    x_ptr,
    in_index_ptr,
    dv_ptr,
    # -- sizes: dy is (T, G*A), x is (T, G*C), dv is (G, A, C) (or (splits, G, A, C) partials)
    T,
    G,
    A,
    C,
    T_PER_SPLIT,
    # -- strides, in elements
    stride_dyt,
    stride_dyn,
    stride_xt,
    stride_xn,
    stride_ds,
    stride_dg,
    stride_da,
    stride_dc,
    T_BUCKET,  # autotune key only
    # -- what is indexed: dy's columns through out_index, x's through in_index
    HAS_OUT_INDEX: tl.constexpr,
    OUT_RUN: tl.constexpr,
    HAS_IN_INDEX: tl.constexpr,
    IN_RUN: tl.constexpr,
    # -- layout: T_ALIGN > 1 when dy or x is token-contiguous (strides (1, T)) and T a multiple of it;
    #    the power-of-two factors of the runtime strides (``_common.stride_align``)
    T_ALIGN: tl.constexpr,
    ALIGN_DYT: tl.constexpr,
    ALIGN_DYN: tl.constexpr,
    ALIGN_XT: tl.constexpr,
    ALIGN_XN: tl.constexpr,
    # -- mask grains: A and C are multiples of them (the index run, or their power-of-two factor)
    A_GRAIN: tl.constexpr,
    C_GRAIN: tl.constexpr,
    # -- arithmetic
    ACC_FP64: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    WIDE: tl.constexpr,
    # -- tiles
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """One (token split, group, A block, C block) tile of
    ``dv[g] = dy[t in split, R_g]^T @ x[t in split, C_g]``."""
    # -- program -> tile.  Split outermost: one token chunk feeds all groups from L2.
    pid = tl.program_id(0)
    blocks_a = tl.cdiv(A, BLOCK_A)
    blocks_c = tl.cdiv(C, BLOCK_C)
    per_split = G * blocks_a * blocks_c
    split = pid // per_split
    rest = pid % per_split
    g = rest // (blocks_a * blocks_c)
    pid_a = (rest // blocks_c) % blocks_a
    pid_c = rest % blocks_c

    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_a = run_mask(offs_a, A, A_GRAIN, BLOCK_A)
    mask_c = run_mask(offs_c, C, C_GRAIN, BLOCK_C)
    # The gathered columns are the same for every token: read once, outside the loop.
    rows = group_features(out_index_ptr, g * A, offs_a, mask_a, HAS_OUT_INDEX, OUT_RUN, A_GRAIN, BLOCK_A)
    cols = group_features(in_index_ptr, g * C, offs_c, mask_c, HAS_IN_INDEX, IN_RUN, C_GRAIN, BLOCK_C)
    dyT_rows = dy_ptr + strided_offsets(rows, stride_dyn, ALIGN_DYN, WIDE)[:, None]  # dY^T's rows: dY's columns R_g
    x_cols = x_ptr + strided_offsets(cols, stride_xn, ALIGN_XN, WIDE)[None, :]

    # -- reduction over this split's tokens
    t_lo = tl.multiple_of(split * T_PER_SPLIT, 16)  # T_PER_SPLIT is a multiple of 16
    t_hi = tl.minimum(t_lo + T_PER_SPLIT, T)
    acc = zero_accumulator(BLOCK_A, BLOCK_C, ACC_FP64)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = run_mask(offs_t, t_hi, T_ALIGN, BLOCK_T)
        # dY^T is read as an (A, T) tile straight away (not as tl.trans of a (T, A) tile): on
        # sm_80 that keeps its loads 16-byte cp.async into the software pipeline.
        dyT = tl.load(
            dyT_rows + strided_offsets(offs_t, stride_dyt, ALIGN_DYT, WIDE)[None, :],
            mask=mask_a[:, None] & mask_t[None, :],
            other=0.0,
        )
        x = tl.load(
            x_cols + strided_offsets(offs_t, stride_xt, ALIGN_XT, WIDE)[:, None],
            mask=mask_t[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc = tl.dot(dot_operand(dyT, UPCAST), dot_operand(x, UPCAST), acc, input_precision=PRECISION)

    # -- epilogue: the partial of this split (or dv itself, in its dtype, without splits)
    dv_ptrs = (
        dv_ptr
        + element_offsets(split, stride_ds, WIDE)
        + element_offsets(g, stride_dg, WIDE)
        + element_offsets(offs_a, stride_da, WIDE)[:, None]
        + element_offsets(offs_c, stride_dc, WIDE)[None, :]
    )
    tl.store(dv_ptrs, acc.to(dv_ptr.dtype.element_ty), mask=mask_a[:, None] & mask_c[None, :])


@triton.jit(do_not_specialize=["R"])
def split_reduce_kernel(
    # -- pointers
    part_ptr,
    bias_ptr,
    out_ptr,
    index_ptr,
    # -- sizes: part is (SPLITS, R, J), out is (R, J) with columns placed through index
    R,
    J,
    SPLITS,
    # -- strides, in elements
    stride_ps,
    stride_pr,
    stride_pj,
    stride_or,
    stride_oj,
    # -- what is indexed
    HAS_INDEX: tl.constexpr,
    RUN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    WIDE: tl.constexpr,
    J_GRAIN: tl.constexpr,  # J is a multiple of it (the index run, or J's power-of-two factor)
    ALIGN_PR: tl.constexpr,
    ALIGN_OR: tl.constexpr,  # power-of-two factors of the row strides
    # -- tiles
    BLOCK_R: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """``out[r, index[j]] = sum_s part[s, r, j] (+ bias[index[j]])``, summed in split order."""
    pid_r = tl.program_id(0)
    pid_j = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = run_mask(offs_j, J, J_GRAIN, BLOCK_J)
    mask = (offs_r < R)[:, None] & mask_j[None, :]
    parts = (
        part_ptr
        + strided_offsets(offs_r, stride_pr, ALIGN_PR, WIDE)[:, None]
        + element_offsets(offs_j, stride_pj, WIDE)[None, :]
    )
    acc = tl.load(parts, mask=mask, other=0.0)
    for s in range(1, SPLITS):
        acc += tl.load(parts + s * stride_ps, mask=mask, other=0.0)
    # Contiguous runs of J/G columns belong to one group: index[j] for the flat j.
    cols = group_features(index_ptr, 0, offs_j, mask_j, HAS_INDEX, RUN, J_GRAIN, BLOCK_J)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=mask_j, other=0.0).to(acc.dtype)[None, :]
    out_ptrs = (
        out_ptr
        + strided_offsets(offs_r, stride_or, ALIGN_OR, WIDE)[:, None]
        + element_offsets(cols, stride_oj, WIDE)[None, :]
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["T"])
def gather_columns_kernel(
    # -- pointers
    src_ptr,
    index_ptr,
    dst_ptr,
    # -- sizes: src and dst are (T, J)
    T,
    J,
    # -- strides, in elements (dst is contiguous)
    stride_st,
    stride_sj,
    stride_dt,
    ALIGN_ST: tl.constexpr,
    ALIGN_DT: tl.constexpr,
    WIDE: tl.constexpr,
    J_GRAIN: tl.constexpr,  # J is a multiple of it (its power-of-two factor, <= 16)
    # -- tiles
    BLOCK_T: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """``dst[t, j] = src[t, index[j]]`` for one block of BLOCK_T rows.

    One program walks all J columns of its rows, so the 32-byte sectors of those rows, once
    fetched for one gathered element, serve the other elements of the same sector from L1:
    each row is read about once from L2, and the stores are contiguous 16-byte vectors.
    """
    pid_t = tl.program_id(0)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    src_rows = src_ptr + strided_offsets(offs_t, stride_st, ALIGN_ST, WIDE)[:, None]
    dst_rows = dst_ptr + strided_offsets(offs_t, stride_dt, ALIGN_DT, WIDE)[:, None]
    for j0 in range(0, J, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = run_mask(offs_j, J, J_GRAIN, BLOCK_J)
        mask = mask_t[:, None] & mask_j[None, :]
        cols = tl.load(index_ptr + offs_j, mask=mask_j, other=0)
        tile = tl.load(src_rows + element_offsets(cols, stride_sj, WIDE)[None, :], mask=mask, other=0.0)
        tl.store(dst_rows + offs_j[None, :], tile, mask=mask)
