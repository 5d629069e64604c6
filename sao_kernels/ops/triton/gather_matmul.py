"""Forward and grad-input: the plan and the launcher of ``gather_matmul_kernel``.

``out[:, out_index[g*N + j]] = sum_k lhs[:, lhs_index[g*K + k]] * v[g, j, k] (+ bias)``; one program
per (token block, group, output block[, K split]), the gather of ``lhs``'s columns fused into the
K-loop loads, the placement of the outputs (and the bias) fused into the epilogue store.

    forward:     lhs = X (T, n),  v = V (G, a, c),          lhs_index = in_index,  out_index = out_index
    grad input:  lhs = dY (T, m), v = V^T view (G, c, a),   lhs_index = out_index, out_index = in_index

Paths (chosen by :func:`plan_gather_matmul`, see ``tiles.py`` and ``cost_model.py``):

* fused (default): gathers and scatters in the kernel.  With aligned runs of b >= 2 features
  the compiler is told so and loads / stores vectorise.
* small T (<= ``tiles.SMALL_T``): narrower output blocks, then a K split whose float32
  partials ``split_reduce_kernel`` sums in a fixed order (with the bias and the scatter), so
  the grid covers the GPU; deterministic.
* permute-then-contiguous (element-level maps, large T, when the cost model says so): a copy
  of ``lhs`` in group order (``gather_columns_kernel``), the gather-free kernel, and for the
  output the mirror: results in group order, then one copy through the inverse permutation.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from .._composite import poison
from . import cost_model
from . import tiles as _tiles
from ._common import (
    Device,
    Step,
    arithmetic_flags,
    autotune_enabled,
    check_dtype,
    device_of,
    dot_precision,
    needs_wide_offsets,
    run_steps,
    stride_align,
    token_alignment,
)
from ._index import as_int32, inverse_int32
from ._steps import gather_columns_step, split_reduce_step
from .kernels import gather_matmul_kernel

GATHER_CHOICES = ("auto", "fused", "permute")
_tuned: dict = {}


def run_hint(index: Optional[Tensor], run: int) -> int:
    """The verified run length as a kernel hint: a power of two >= 2, else 1 (no hint)."""
    return run if index is not None and run > 1 and run & (run - 1) == 0 else 1


def _tuned_kernel(itemsize: int, precision: str, arch: int):
    key = (itemsize, precision, arch)
    if key not in _tuned:
        configs = [
            triton.Config(t.constexprs(), num_warps=t.num_warps, num_stages=t.num_stages)
            for t in _tiles.gather_matmul_autotune(itemsize, precision, arch)
        ]
        _tuned[key] = triton.autotune(
            configs=configs,
            key=[
                "T_BUCKET",
                "G",
                "N",
                "K",
                "HAS_LHS_INDEX",
                "LHS_RUN",
                "HAS_OUT_INDEX",
                "OUT_RUN",
                "HAS_BIAS",
                "PRECISION",
                "stride_lt",
                "stride_lk",
                "stride_vn",
                "stride_vk",
            ],
        )(gather_matmul_kernel)
    return _tuned[key]


def gather_traffic(T: int, G: int, N: int, K: int, itemsize: int, tiles: _tiles.Tiles) -> cost_model.GatherTraffic:
    """This kernel's traffic for ``cost_model``: the gathered (T, G*K) operand is re-read by the
    cdiv(N, BLOCK_N) output blocks of its group; the values are read once per token block (from
    HBM once); the (T, G*N) output is written once."""
    values = G * N * K * itemsize
    return cost_model.GatherTraffic(
        T=T,
        K_all=G * K,
        rereads=triton.cdiv(N, tiles["BLOCK_N"]),
        out_rows=T,
        out_cols=G * N,
        itemsize=itemsize,
        flops=2.0 * T * G * N * K,
        rest_l2=float(triton.cdiv(T, tiles["BLOCK_T"]) * values),
        rest_hbm=float(values),
    )


def choose_permutes(
    T: int,
    G: int,
    N: int,
    K: int,
    itemsize: int,
    gather_lhs: bool,
    scatter_out: bool,
    tiles: _tiles.Tiles,
    precision: str,
    device: Device,
) -> tuple[bool, bool]:
    """(permute ``lhs`` first, permute the output after) for element-level index maps: the
    cheapest under ``cost_model`` with :func:`gather_traffic`."""
    if not (gather_lhs or scatter_out) or device.interpreter:
        return False, False
    return cost_model.choose_permutes(
        gather_traffic(T, G, N, K, itemsize, tiles),
        gather_lhs,
        scatter_out,
        cost_model.rates_for(device.arch),
        precision,
    )


def plan_gather_matmul(
    lhs: Tensor,
    lhs_index: Optional[Tensor],
    v: Tensor,
    out_index: Optional[Tensor],
    bias: Optional[Tensor],
    *,
    lhs_run: int = 1,
    out_run: int = 1,
    device: Device,
    precision: str = "ieee",
    gather: str = "auto",
    split_k: Optional[int] = None,
    autotune: bool = False,
) -> tuple[Tensor, list[Step]]:
    """The output (allocated, not yet written) and the launches that compute it.

    Args: as :func:`grouped_gather_matmul`, plus ``device`` (what to plan for), ``precision``
    (``tl.dot``'s input precision), ``gather`` ("auto": the cost model; "fused"; "permute": copy
    element-level-indexed operands), ``split_k`` (force a K split; None: the heuristic) and
    ``autotune``.  Works on meta tensors.
    """
    if gather not in GATHER_CHOICES:
        raise ValueError(f"grouped_gather_matmul: gather must be one of {GATHER_CHOICES}, got {gather!r}")
    T = lhs.shape[0]
    G, N, K = v.shape
    out = poison(lhs.new_empty(T, G * N))
    if T == 0:
        return out, []
    itemsize = lhs.element_size()
    lhs_run, out_run = run_hint(lhs_index, lhs_run), run_hint(out_index, out_run)
    tiles = _tiles.gather_matmul_tiles(T, N, K, itemsize, precision, device)
    tiles, splits = _tiles.gather_matmul_split(T, G, N, K, itemsize, tiles, device)
    if split_k is not None:  # forced (tests, benchmarks): narrower K blocks if needed to split at all
        if triton.cdiv(K, tiles["BLOCK_K"]) < split_k:
            blocks = dict(tiles.constexprs(), BLOCK_K=_tiles.pow2_tile(triton.cdiv(K, split_k), hi=tiles["BLOCK_K"]))
            tiles = _tiles.Tiles(tuple(blocks.items()), tiles.num_warps, tiles.num_stages)
        splits = max(1, min(split_k, triton.cdiv(K, tiles["BLOCK_K"])))
    tuned = autotune and splits == 1 and not device.interpreter

    gather_lhs, scatter_out = lhs_index is not None and lhs_run == 1, out_index is not None and out_run == 1
    if gather == "permute":
        permute_lhs, permute_out = gather_lhs, scatter_out
    elif gather == "fused":
        permute_lhs = permute_out = False
    else:
        permute_lhs, permute_out = choose_permutes(
            T, G, N, K, itemsize, gather_lhs, scatter_out, tiles, precision, device
        )

    steps: list[Step] = []
    if precision == "tf32" and v.stride(2) != 1 and triton.cdiv(T, tiles["BLOCK_T"]) >= 8:
        # tf32 MMAs take K-major operands only: a transposed V (grad-input) would be copied into
        # shared memory 4 bytes at a time by every program.  With V re-read by >= 8 token blocks,
        # one K-contiguous copy (2 |V| bytes) is the cheaper side.
        v = v.contiguous()
    lhs_index = as_int32(lhs_index)
    if permute_lhs:  # lhs in group order: one bandwidth-bound copy, then no gather
        lhs_grouped = poison(lhs.new_empty(T, G * K))
        steps.append(gather_columns_step(lhs, lhs_index, lhs_grouped, device))
        lhs, lhs_index, lhs_run = lhs_grouped, None, 1
    # Where the product lands: ``out`` through out_index, or a group-order buffer copied after.
    bias = bias.contiguous() if bias is not None else None
    if permute_out:
        dest, dest_index, dest_run = poison(lhs.new_empty(T, G * N)), None, 1
        dest_bias = bias.index_select(0, out_index) if bias is not None else None
    else:
        dest, dest_index, dest_run, dest_bias = out, as_int32(out_index), out_run, bias

    acc_dtype = torch.float64 if lhs.dtype == torch.float64 else torch.float32
    if splits > 1:  # float32 partials in group order; the reduction adds the bias and places them
        k_per_split = triton.cdiv(triton.cdiv(K, splits), tiles["BLOCK_K"]) * tiles["BLOCK_K"]
        splits = triton.cdiv(K, k_per_split)
        part = poison(torch.empty(splits, T, G * N, dtype=acc_dtype, device=lhs.device))
        kernel_out, kernel_index, kernel_run, kernel_bias = part, None, 1, None
    else:
        k_per_split = K
        kernel_out, kernel_index, kernel_run, kernel_bias = dest, dest_index, dest_run, dest_bias
    out3 = kernel_out if kernel_out.dim() == 3 else kernel_out.unsqueeze(0)

    args = dict(
        lhs_ptr=lhs,
        lhs_index_ptr=lhs_index if lhs_index is not None else lhs,
        v_ptr=v,
        bias_ptr=kernel_bias if kernel_bias is not None else lhs,
        out_ptr=kernel_out,
        out_index_ptr=kernel_index if kernel_index is not None else lhs,
        T=T,
        G=G,
        N=N,
        K=K,
        K_PER_SPLIT=k_per_split,
        stride_lt=lhs.stride(0),
        stride_lk=lhs.stride(1),
        stride_vg=v.stride(0),
        stride_vn=v.stride(1),
        stride_vk=v.stride(2),
        stride_os=out3.stride(0),
        stride_ot=out3.stride(1),
        stride_on=out3.stride(2),
        T_BUCKET=_tiles.tokens_bucket(T),
        HAS_LHS_INDEX=lhs_index is not None,
        LHS_RUN=lhs_run,
        HAS_OUT_INDEX=kernel_index is not None,
        OUT_RUN=kernel_run,
        HAS_BIAS=kernel_bias is not None,
        T_ALIGN=token_alignment(T, lhs),
        ALIGN_LT=stride_align(lhs.stride(0)),
        ALIGN_LK=stride_align(lhs.stride(1)),
        ALIGN_VN=stride_align(v.stride(1)),
        ALIGN_VK=stride_align(v.stride(2)),
        ALIGN_OT=stride_align(out3.stride(1)),
        K_GRAIN=max(lhs_run, stride_align(K)),
        N_GRAIN=max(kernel_run, stride_align(N)),
        **arithmetic_flags(lhs.dtype, device, precision),
        WIDE=needs_wide_offsets(lhs, v, kernel_out),
    )
    n_splits = splits

    def grid(b: dict) -> tuple:
        return (triton.cdiv(T, b["BLOCK_T"]) * G * triton.cdiv(N, b["BLOCK_N"]) * n_splits,)

    steps.append(
        Step(
            gather_matmul_kernel,
            args,
            tiles,
            grid,
            tuned=_tuned_kernel(itemsize, precision, device.arch) if tuned else None,
        )
    )
    if splits > 1:
        steps.append(split_reduce_step(part, dest, dest_index, dest_run, dest_bias, device))
    if permute_out:  # out[:, out_index[j]] = dest[:, j]  <=>  out[:, i] = dest[:, inv[i]]
        steps.append(gather_columns_step(dest, inverse_int32(out_index), out, device))
    return out, steps


def grouped_gather_matmul(
    lhs: Tensor,
    lhs_index: Optional[Tensor],
    v: Tensor,
    out_index: Optional[Tensor],
    bias: Optional[Tensor],
    *,
    lhs_run: int = 1,
    out_run: int = 1,
    gather: str = "auto",
    split_k: Optional[int] = None,
) -> Tensor:
    """Triton launcher: ``out[:, out_index[g*N + j]] = sum_k lhs[:, lhs_index[g*K + k]] * v[g, j, k] + bias``.

    Args:
        lhs: (T, G*K) activations (X, or dY for grad-input), any strides.
        lhs_index: (G*K,) int64 permutation: the columns of ``lhs`` in group order; None: identity.
        v: (G, N, K) blocks, any strides (a transposed view is how grad-input calls it).
        out_index: (G*N,) int64 permutation: output features in group order; None: identity.
        bias: (G*N,) in feature order, any stride, or None.
        lhs_run / out_run: the index maps' verified aligned run lengths (``ops._validate``):
            powers of two >= 2 give vectorised gathers / scatters.
        gather: "auto" (cost model), "fused" or "permute" (tests and benchmarks).
        split_k: force this many K splits (tests and benchmarks); None: the heuristic.

    Returns:
        (T, G*N) in ``lhs``'s dtype; float32 accumulation (float64 for float64 inputs), tf32 only
        when torch allows tf32 matmuls.
    """
    check_dtype("grouped_gather_matmul", lhs.dtype)
    device = device_of(lhs)
    out, steps = plan_gather_matmul(
        lhs,
        lhs_index,
        v,
        out_index,
        bias,
        lhs_run=lhs_run,
        out_run=out_run,
        device=device,
        precision=dot_precision(lhs.dtype),
        gather=gather,
        split_k=split_k,
        autotune=autotune_enabled(),
    )
    run_steps(steps, lhs)
    return out
