"""Time the Triton launcher paths against each other and against the cost model (GPU only).

For element-level index maps (block_size 1) the launchers choose between the fused gather and
permute-then-contiguous by ``sao_kernels.ops.triton.cost_model``, and at small T between one
pass and a K split (``tiles.gather_matmul_split``).  This forces each path in turn on the same
inputs, times it (``triton.testing.do_bench``: min / median / IQR of the timed calls), and
prints which path the planner picks and the model's predicted times, so the model's rates
can be checked against the measured crossover.

    python benchmarks/gpu/paths.py --out DIR        # ~1 min on an H100

``--device cpu`` (with ``TRITON_INTERPRET=1`` set before Python starts) runs the same paths in
Triton's interpreter, timed by the wall clock: the rehearsal of ``run.sh --rehearsal``, whose
numbers mean nothing (the cost model is then Ampere's, the interpreter's tiles are not a GPU's).
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import os
import statistics
import sys
import time

import torch
import triton
import triton.testing

from sao_kernels.ops.triton import cost_model, tiles
from sao_kernels.ops.triton._common import device_of, dot_precision, interpreting
from sao_kernels.ops.triton.gather_matmul import (
    choose_permutes,
    gather_traffic,
    grouped_gather_matmul,
    plan_gather_matmul,
)
from sao_kernels.ops.triton.grad_values import grouped_grad_values, plan_grad_values


def _bench_on(fn, device: str) -> dict:
    if device == "cuda":
        q = triton.testing.do_bench(fn, warmup=20, rep=80, quantiles=[0.0, 0.25, 0.5, 0.75])
    else:  # the interpreter (rehearsal): a few wall-clock calls, the same quantiles
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        q = [min(times), *statistics.quantiles(times, n=4, method="inclusive")]
    return dict(ms_min=q[0], ms=q[2], ms_iqr=q[3] - q[1])


def _perm(size: int, device: str) -> torch.Tensor:
    return torch.randperm(size, device=device)


def _model_ms(T, G, N, K, itemsize, precision, device, permute_in, permute_out) -> float:
    """The cost model's forward time for this path (element-level maps on both sides)."""
    traffic = gather_traffic(T, G, N, K, itemsize, tiles.gather_matmul_tiles(T, N, K, itemsize, precision, device))
    return 1e3 * cost_model.path_times(
        traffic, True, True, permute_in, permute_out, cost_model.rates_for(device.arch), precision
    )


def _measure(dtype: torch.dtype, T: int, G: int, width: int, where: str = "cuda") -> list[dict]:
    """Every path of the three products for one (dtype, T, G) square layer of ``width`` features
    on ``where`` ("cuda", or "cpu" for the interpreter)."""
    n = m = width
    x = torch.randn(T, n, device=where, dtype=dtype)
    dy = torch.randn(T, m, device=where, dtype=dtype)
    values = torch.randn(G, m // G, n // G, device=where, dtype=dtype)
    ii, oi = _perm(n, where), _perm(m, where)
    device, precision = device_of(x), dot_precision(dtype)
    dense_w = torch.randn(m, n, device=where, dtype=dtype)
    _bench = functools.partial(_bench_on, device=where)
    dense = _bench(lambda: x @ dense_w.t())
    chosen = tiles.gather_matmul_tiles(T, m // G, n // G, x.element_size(), precision, device)
    planner_fwd = "+".join(
        s.kernel.__name__ for s in plan_gather_matmul(x, ii, values, oi, None, device=device, precision=precision)[1]
    )
    planner_gv = "+".join(
        s.kernel.__name__ for s in plan_grad_values(dy, x, ii, oi, G, device=device, precision=precision)[1]
    )
    variants = [("fused", None), ("permute", None)] + ([("fused", 1)] if T <= tiles.SMALL_T else [])  # 1: no K split
    rows = []
    for gather, split in variants:
        label = gather + ("" if split is None else f", split_k={split}")
        fwd = _bench(functools.partial(grouped_gather_matmul, x, ii, values, oi, None, gather=gather, split_k=split))
        gin = _bench(
            functools.partial(
                grouped_gather_matmul, dy, oi, values.transpose(1, 2), ii, None, gather=gather, split_k=split
            )
        )
        gv = _bench(functools.partial(grouped_grad_values, dy, x, ii, oi, G, gather=gather, splits=split))
        model = _model_ms(
            T, G, m // G, n // G, x.element_size(), precision, device, gather == "permute", gather == "permute"
        )
        r = dict(
            dtype=str(dtype).replace("torch.", ""),
            precision=precision,
            T=T,
            width=n,
            G=G,
            path=label,
            fwd_ms=fwd["ms"],
            fwd_ms_min=fwd["ms_min"],
            fwd_ms_iqr=fwd["ms_iqr"],
            grad_input_ms=gin["ms"],
            grad_values_ms=gv["ms"],
            dense_fwd_ms=dense["ms"],
            fwd_model_ms=model,
            planner_fwd=planner_fwd,
            planner_grad_values=planner_gv,
            model_permutes=str(
                choose_permutes(T, G, m // G, n // G, x.element_size(), True, True, chosen, precision, device)
            ),
        )
        rows.append(r)
        print(
            f"{r['dtype']:<8} T={T:<5} G={G:<3} {label:<18} fwd {r['fwd_ms']:.4f} ms (min {r['fwd_ms_min']:.4f}, "
            f"IQR {r['fwd_ms_iqr']:.4f}; model {model:.4f}) grad_in {r['grad_input_ms']:.4f} "
            f"grad_v {r['grad_values_ms']:.4f} dense {dense['ms']:.4f} | planner: {planner_fwd}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", default="16,128,2048,8192")
    parser.add_argument("--groups", default="4,16")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: Triton's interpreter (a rehearsal)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1 for a rehearsal)")
    if args.device == "cpu" and not interpreting():
        parser.error("--device cpu runs Triton's interpreter: set TRITON_INTERPRET=1 before Python starts")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for dtype_name, T, G in itertools.product(
        args.dtypes.split(","), map(int, args.tokens.split(",")), map(int, args.groups.split(","))
    ):
        rows += _measure(getattr(torch, dtype_name), T, G, args.width, args.device)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, "paths.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    arch = device_of(torch.empty(1, device=args.device)).arch
    meta = dict(
        device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton's interpreter: a rehearsal)",
        torch=torch.__version__,
        triton=triton.__version__,
        rates=dict(vars(cost_model.rates_for(arch))),
    )
    with open(os.path.join(args.out, "paths.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
