"""Grad-values: the plan and the launcher of ``grad_values_kernel``.

``dV_g = dY[:, R_g]^T @ X[:, C_g]``, a reduction over tokens, deterministic: no atomics.  One
program per (token split, group, A block, C block) with both gathers (dY's columns through
``out_index``, X's through ``in_index``) fused into the loads.  With one split the kernel
writes dV in its dtype; with several, float32 partials per split are summed in a fixed order
by ``split_reduce_kernel``.  Element-level index maps at large T may take the
permute-then-contiguous path (``cost_model.py``): the operand is copied into group order
first and read without a gather.
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
from ._index import as_int32
from ._steps import gather_columns_step, split_reduce_step
from .gather_matmul import GATHER_CHOICES, run_hint
from .kernels import grad_values_kernel

_tuned: dict = {}


def _tuned_kernel(itemsize: int, precision: str, arch: int):
    key = (itemsize, precision, arch)
    if key not in _tuned:
        configs = [
            triton.Config(t.constexprs(), num_warps=t.num_warps, num_stages=t.num_stages)
            for t in _tiles.grad_values_autotune(itemsize, precision, arch)
        ]
        _tuned[key] = triton.autotune(
            configs=configs,
            key=[
                "T_BUCKET",
                "G",
                "A",
                "C",
                "T_PER_SPLIT",
                "HAS_OUT_INDEX",
                "OUT_RUN",
                "HAS_IN_INDEX",
                "IN_RUN",
                "PRECISION",
                "stride_dyt",
                "stride_dyn",
                "stride_xt",
                "stride_xn",
            ],
        )(grad_values_kernel)
    return _tuned[key]


def choose_permutes(
    T: int,
    G: int,
    A: int,
    C: int,
    itemsize: int,
    gather_dy: bool,
    gather_x: bool,
    tiles,
    precision: str,
    device: Device,
) -> tuple[bool, bool]:
    """(permute dY first, permute X first) for element-level index maps: each operand is a
    gathered input of ``cost_model`` (dY re-read by the cdiv(C, BLOCK_C) column blocks, X by the
    cdiv(A, BLOCK_A) row blocks), decided one at a time with the other as the rest."""
    if not (gather_dy or gather_x) or device.interpreter:
        return False, False
    rates = cost_model.rates_for(device.arch)
    flops = 2.0 * T * G * A * C
    sides = [
        (gather_dy, T * G * A, triton.cdiv(C, tiles["BLOCK_C"]), T * G * C, triton.cdiv(A, tiles["BLOCK_A"])),
        (gather_x, T * G * C, triton.cdiv(A, tiles["BLOCK_A"]), T * G * A, triton.cdiv(C, tiles["BLOCK_C"])),
    ]
    choice = []
    for gathered, size, rereads, other_size, other_rereads in sides:
        traffic = cost_model.GatherTraffic(
            T=T,
            K_all=size // T,
            rereads=rereads,
            out_rows=G * A,
            out_cols=C,
            itemsize=itemsize,
            flops=flops,
            rest_l2=float(other_size * other_rereads * itemsize),
            rest_hbm=float(other_size * itemsize),
        )
        choice.append(cost_model.choose_permutes(traffic, gathered, False, rates, precision)[0])
    return choice[0], choice[1]


def plan_grad_values(
    grad_out: Tensor,
    x: Tensor,
    in_index: Optional[Tensor],
    out_index: Optional[Tensor],
    groups: int,
    *,
    in_run: int = 1,
    out_run: int = 1,
    device: Device,
    precision: str = "ieee",
    gather: str = "auto",
    splits: Optional[int] = None,
    autotune: bool = False,
) -> tuple[Tensor, list[Step]]:
    """dV (allocated, not yet written) and the launches that compute it; works on meta tensors.
    Arguments as :func:`grouped_grad_values` plus ``device``, ``precision``, ``gather`` and
    ``autotune`` as in ``gather_matmul.plan_gather_matmul``; ``splits`` forces the token splits."""
    if gather not in GATHER_CHOICES:
        raise ValueError(f"grouped_grad_values: gather must be one of {GATHER_CHOICES}, got {gather!r}")
    T, m = grad_out.shape
    n = x.shape[1]
    G = groups
    A, C = m // G, n // G
    dv = poison(x.new_empty(G, A, C))
    if T == 0:
        return dv.zero_() if dv.device.type != "meta" else dv, []
    itemsize = x.element_size()
    in_run, out_run = run_hint(in_index, in_run), run_hint(out_index, out_run)
    tiles = _tiles.grad_values_tiles(T, G, A, C, itemsize, precision, device)
    tuned = autotune and not device.interpreter
    # The split count must not depend on the autotuner's pick: plan it for 64 x 64 tiles then.
    block_a, block_c = (64, 64) if tuned else (tiles["BLOCK_A"], tiles["BLOCK_C"])
    tile_count = G * triton.cdiv(A, block_a) * triton.cdiv(C, block_c)
    if splits is None:
        splits = _tiles.grad_values_splits(T, tile_count, tiles["BLOCK_T"], device)
    t_per_split = triton.cdiv(triton.cdiv(T, max(1, splits)), 16) * 16
    splits = triton.cdiv(T, t_per_split)

    gather_dy, gather_x = out_index is not None and out_run == 1, in_index is not None and in_run == 1
    if gather == "permute":
        permute_dy, permute_x = gather_dy, gather_x
    elif gather == "fused":
        permute_dy = permute_x = False
    else:
        permute_dy, permute_x = choose_permutes(T, G, A, C, itemsize, gather_dy, gather_x, tiles, precision, device)

    steps: list[Step] = []
    out_index, in_index = as_int32(out_index), as_int32(in_index)
    if permute_dy:
        dy_grouped = poison(grad_out.new_empty(T, m))
        steps.append(gather_columns_step(grad_out, out_index, dy_grouped, device))
        grad_out, out_index, out_run = dy_grouped, None, 1
    if permute_x:
        x_grouped = poison(x.new_empty(T, n))
        steps.append(gather_columns_step(x, in_index, x_grouped, device))
        x, in_index, in_run = x_grouped, None, 1

    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # One split: the kernel writes dV in its dtype.  Several: float32 partials, then the sum.
    part = dv.unsqueeze(0) if splits == 1 else poison(torch.empty(splits, G, A, C, device=x.device, dtype=acc_dtype))
    args = dict(
        dy_ptr=grad_out,
        out_index_ptr=out_index if out_index is not None else part,
        x_ptr=x,
        in_index_ptr=in_index if in_index is not None else part,
        dv_ptr=part,
        T=T,
        G=G,
        A=A,
        C=C,
        T_PER_SPLIT=t_per_split,
        stride_dyt=grad_out.stride(0),
        stride_dyn=grad_out.stride(1),
        stride_xt=x.stride(0),
        stride_xn=x.stride(1),
        stride_ds=part.stride(0),
        stride_dg=part.stride(1),
        stride_da=part.stride(2),
        stride_dc=part.stride(3),
        T_BUCKET=_tiles.tokens_bucket(T),
        HAS_OUT_INDEX=out_index is not None,
        OUT_RUN=out_run,
        HAS_IN_INDEX=in_index is not None,
        IN_RUN=in_run,
        T_ALIGN=token_alignment(T, grad_out, x),
        ALIGN_DYT=stride_align(grad_out.stride(0)),
        ALIGN_DYN=stride_align(grad_out.stride(1)),
        ALIGN_XT=stride_align(x.stride(0)),
        ALIGN_XN=stride_align(x.stride(1)),
        A_GRAIN=max(out_run, stride_align(A)),
        C_GRAIN=max(in_run, stride_align(C)),
        **arithmetic_flags(x.dtype, device, precision),
        WIDE=needs_wide_offsets(grad_out, x, part),
    )
    n_splits = splits

    def grid(b: dict) -> tuple:
        return (n_splits * G * triton.cdiv(A, b["BLOCK_A"]) * triton.cdiv(C, b["BLOCK_C"]),)

    steps.append(
        Step(
            grad_values_kernel,
            args,
            tiles,
            grid,
            tuned=_tuned_kernel(itemsize, precision, device.arch) if tuned else None,
        )
    )
    if splits > 1:
        steps.append(split_reduce_step(part.view(splits, G * A, C), dv.view(G * A, C), None, 1, None, device))
    return dv, steps


def grouped_grad_values(
    grad_out: Tensor,
    x: Tensor,
    in_index: Optional[Tensor],
    out_index: Optional[Tensor],
    groups: int,
    *,
    in_run: int = 1,
    out_run: int = 1,
    gather: str = "auto",
    splits: Optional[int] = None,
) -> Tensor:
    """Triton launcher: dV (G, m/G, n/G) with ``dV[g] = dY[:, R_g]^T @ X[:, C_g]``.

    Args:
        grad_out: (T, m) dY, any strides.  x: (T, n) X, any strides.
        in_index / out_index: int64 permutations (None: identity), X's and dY's columns in group order.
        groups: G.  in_run / out_run: the index maps' verified aligned run lengths.
        gather: "auto" (cost model), "fused" or "permute".  splits: force the token splits.

    Returns:
        (G, m/G, n/G) in x's dtype, bitwise reproducible (fixed-order reduction, no atomics).
    """
    check_dtype("linear_grad_values", x.dtype)
    device = device_of(x)
    dv, steps = plan_grad_values(
        grad_out,
        x,
        in_index,
        out_index,
        groups,
        in_run=in_run,
        out_run=out_run,
        device=device,
        precision=dot_precision(x.dtype),
        gather=gather,
        splits=splits,
        autotune=autotune_enabled(),
    )
    run_steps(steps, x)
    return dv
