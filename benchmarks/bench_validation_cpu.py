"""Per-call cost of the ops' argument checks on CPU (issue 12): 4096 x 4096, G = 8.

    python benchmarks/bench_validation_cpu.py [--out benchmarks/results]

The checks (shape, dtype, device, index range / permutation / identity / runs) run on every
call.  Their cost is isolated as the difference between a call with both index maps and one
without (None: nothing to check), at T = 0 (no product: dispatch + checks only), and set next
to the whole forward at T = 16 and T = 512.  Measured for the C++ CPU kernel (the default,
native) and for the Python implementation (the torch composite: what CUDA tensors and builds
without the extension run).  Timings are interleaved medians (sao_kernels.bench).
"""

from __future__ import annotations

import argparse
import json

import torch

import sao_kernels as sk
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.results import write_outputs
from sao_kernels.bench.timing import interleave
from sao_kernels.cli.arguments import add_timing_arguments, script_setup

OPS = torch.ops.sao_kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=0.5)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--groups", type=int, default=8)
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser)
    n, G = args.features, args.groups
    g = torch.Generator().manual_seed(0)
    v = torch.randn(G, n // G, n // G, generator=g)
    ii, oi = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    lines = [
        f"Argument-check cost per call, {n} x {n}, G = {G}, float32, {meta.get('cpu')}, "
        f"{meta.get('threads')} threads, torch {meta.get('torch')}, {meta.get('date')}.",
        "",
        "| backend | T | with both index maps (ms) | without (ms) | difference (us) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    with recording_load(meta):
        for backend in ("native", "torch"):
            for T in (0, 16, 512):
                x = torch.randn(T, n, generator=g)
                with sk.backend(backend):
                    stats = interleave(
                        {
                            "with": lambda x=x: OPS.linear(x, v, ii, oi, None, 1),
                            "without": lambda x=x: OPS.linear(x, v, None, None, None, 1),
                        },
                        timing,
                    )
                w, wo = stats["with"].median_ms, stats["without"].median_ms
                rows.append(
                    dict(
                        backend=backend,
                        tokens=T,
                        ms_with=w,
                        ms_without=wo,
                        us_checks=(w - wo) * 1e3,
                        iqr_with=stats["with"].iqr_ms,
                        iqr_without=stats["without"].iqr_ms,
                        rounds=stats["with"].rounds,
                    )
                )
                lines.append(f"| {backend} | {T} | {w:.4f} | {wo:.4f} | {(w - wo) * 1e3:.1f} |")
    lines += [
        "",
        "At T = 0 the difference is the checks alone (plus, with indices, nothing else: no product "
        "runs); at T > 0 it also holds the gathers the index maps cause.",
    ]
    stem = results_stem("validation_cpu", meta)
    md = "\n".join(lines) + "\n"
    doc = json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    write_outputs(args.out, {f"{stem}.md": lambda p: p.write_text(md), f"{stem}.json": lambda p: p.write_text(doc)})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
