"""The three products on CPU, each against ``torch.bmm`` on pre-gathered blocks, per engine.

    python benchmarks/bench_cpu_products.py [--out benchmarks/results] [--dtypes bfloat16]
        [--engines auto bmm] [--shapes 4096x512x2 4096x512x4 4096x512x8 512x128x4 768x128x4]

For each shape ``FxTxG`` (a square SAOLinear(F, F, groups=G) layer at T tokens, its random
in_index, the identity out_index that SAOLinear makes) and dtype, the native ops
``linear`` (forward with bias), ``linear_grad_input`` and ``linear_grad_values`` run once per
engine (``SAO_KERNELS_LOWP_GEMM``: ``auto`` = what this machine picks, ``bmm`` = oneDNN's
at::bmm on packed blocks, ``dpbf16`` = the AVX512_BF16 micro-kernel, ``brgemm``), timed in the
same interleaved rounds as the bound: ``torch.bmm`` of the same GEMM on operands gathered and
laid out beforehand (X_g V_g^T, dY_g V_g, dY_g^T X_g).  "speed-up" is bound time / product time
(1 = as fast as the GEMM alone; issue 20 asks >= 0.9).  The per-product table of
docs/cpu_engines.md comes from here.  Writes ``cpu_products_<machine>_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os

import torch

from sao_kernels.bench import cases
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.timing import compare, interleave
from sao_kernels.cli.arguments import add_timing_arguments, script_setup
from sao_kernels.layers import SAOLinear

OPS = torch.ops.sao_kernels
PRODUCTS = ("forward", "grad_input", "grad_values")


def shape_arg(text: str) -> tuple[int, int, int]:
    try:
        f, t, g = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is FxTxG (features x tokens x groups), got {text!r}") from None
    if min(f, t, g) < 1 or f % g:
        raise argparse.ArgumentTypeError(f"F, T, G must be positive and G must divide F, got {text!r}")
    return f, t, g


def with_engine(engine: str, fn):
    def call():
        saved = os.environ.pop("SAO_KERNELS_LOWP_GEMM", None)
        if engine != "auto":
            os.environ["SAO_KERNELS_LOWP_GEMM"] = engine
        try:
            return fn()
        finally:
            os.environ.pop("SAO_KERNELS_LOWP_GEMM", None)
            if saved is not None:
                os.environ["SAO_KERNELS_LOWP_GEMM"] = saved

    return call


def measure(F: int, T: int, G: int, dtype_name: str, engines, timing, seed: int = 0) -> list[dict]:
    dtype = cases.DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    layer = SAOLinear(F, F, groups=G, generator=gen, dtype=dtype)
    v, ii, b = layer.values.detach(), layer.in_index, layer.bias.detach()
    oi = None if torch.equal(layer.out_index, torch.arange(F)) else layer.out_index
    x, dy = (torch.randn(T, F, generator=gen).to(dtype) for _ in range(2))
    c = F // G
    xg = x[:, ii].view(T, G, c).transpose(0, 1).contiguous()
    dyg = (dy if oi is None else dy[:, oi]).view(T, G, c).transpose(0, 1).contiguous()
    vt, dygt = v.transpose(1, 2).contiguous(), dyg.transpose(1, 2).contiguous()
    ops = {
        "forward": (lambda: OPS.linear(x, v, ii, oi, b, 1), lambda: torch.bmm(xg, vt)),
        "grad_input": (lambda: OPS.linear_grad_input(dy, v, ii, oi, 1), lambda: torch.bmm(dyg, v)),
        "grad_values": (lambda: OPS.linear_grad_values(dy, x, ii, oi, G, 1), lambda: torch.bmm(dygt, xg)),
    }
    rows = []
    with torch.no_grad():
        for product, (op, bound) in ops.items():
            fns = {"bound": bound, **{e: with_engine(e, op) for e in engines}}
            stats = interleave(fns, timing)
            for engine in engines:
                cmp = compare(
                    stats["bound"],
                    stats[engine],
                    ideal=None,
                    flag_rel_spread=timing.flag_rel_spread,
                    names=("product", "bound"),
                )
                rows.append(
                    dict(
                        case=f"{product} ({engine})",
                        shape=f"{F}x{F}",
                        mode=product,
                        backend=engine,
                        dtype=dtype_name,
                        width=F,
                        tokens=T,
                        depth=1,
                        groups=G,
                        contention=False,
                        **cmp.fields(),
                        ideal_speedup=1.0,
                        flag=cmp.flag,
                        flag_reason=cmp.flag_reason,
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=0.5)
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=["bfloat16"])
    parser.add_argument("--engines", nargs="+", choices=("auto", "bmm", "dpbf16", "brgemm"), default=["auto", "bmm"])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=shape_arg,
        default=[shape_arg(s) for s in ("4096x512x2", "4096x512x4", "4096x512x8", "512x128x4", "768x128x4")],
    )
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser, "cpu")
    rows = []
    with recording_load(meta), torch.inference_mode(False):
        for dtype_name in args.dtypes:
            for F, T, G in args.shapes:
                rows += measure(F, T, G, dtype_name, args.engines, timing)
                done = ", ".join(f"{r['case']} {r['speedup']:.2f}" for r in rows[-3 * len(args.engines) :])
                print(f"{F}x{F} T={T} G={G} {dtype_name}: {done}", flush=True)
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem("cpu_products", meta),
        what="The native products vs torch.bmm on pre-gathered blocks (speed-up = bound / product)",
        settings=timing,
        formats=("json", "md"),
        notes=[
            "Baseline ('dense' columns) = torch.bmm on operands gathered beforehand: the GEMM alone. "
            "backend = the engine (SAO_KERNELS_LOWP_GEMM; auto = this machine's choice). Issue 20 asks >= 0.9."
        ],
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
