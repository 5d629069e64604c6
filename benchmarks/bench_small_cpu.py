"""Issue 13's small-width cases on CPU: where a fixed per-call cost dominates 1/G of a small GEMM.

    python benchmarks/bench_small_cpu.py [--contention] [--machine NAME] [--out benchmarks/results]

SAOLinear(w, w, groups=G) vs nn.Linear(w, w) at w in {128, 512}, T in {128, 1024}, G in
{2, 4, 8}, forward and forward + backward; and a 100-layer width-128 tanh MLP (every Linear
SAO at G = 4) vs its dense twin, forward and a training step (forward, backward, SGD).  With
--contention everything is measured a second time while a busy-loop process is pinned on one
core.  All SAO / dense pairs are timed interleaved (sao_kernels.bench).  Writes
``small_width_<machine>_<date>.json`` and ``.md`` into --out.  ``python -m sao_kernels bench
--suite small-width`` runs the same cases into a results folder.
"""

from __future__ import annotations

import argparse

from sao_kernels.bench import cases
from sao_kernels.bench.machine import recording_load, results_stem, usable_cores
from sao_kernels.bench.sweep import NothingMeasured
from sao_kernels.cli.arguments import add_timing_arguments, limited, nonnegative_int, script_setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=0.5)
    parser.add_argument("--widths", type=limited("features"), nargs="+", default=list(cases.SMALL_WIDTHS))
    parser.add_argument("--tokens", type=limited("tokens"), nargs="+", default=list(cases.SMALL_TOKENS))
    parser.add_argument("--groups", type=limited("groups"), nargs="+", default=list(cases.SMALL_GROUPS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(cases.DTYPES))
    parser.add_argument("--mlp-depth", type=limited("mlp_depth"), default=cases.MLP_DEPTH, help="0 leaves the MLP out")
    parser.add_argument("--mlp-groups", type=limited("groups"), nargs="+", default=list(cases.MLP_GROUPS))
    parser.add_argument("--contention", action="store_true", help="also measure with a busy loop on one core")
    parser.add_argument("--contention-core", type=nonnegative_int, help="core of the busy loop (default: the last)")
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser)
    if args.contention:
        core = usable_cores()[-1] if args.contention_core is None else args.contention_core
        if core not in usable_cores():
            parser.error(f"--contention-core {core}: not a usable core; usable: {usable_cores()}")
        meta["contention"] = {"core": core}
    elif args.contention_core is not None:
        parser.error("--contention-core needs --contention")
    try:
        with recording_load(meta):
            rows, skipped = cases.small_width_suite(
                timing,
                widths=args.widths,
                tokens=args.tokens,
                groups=args.groups,
                dtypes=args.dtypes,
                depth=args.mlp_depth,
                depth_groups=args.mlp_groups,
                contention=args.contention,
                contention_core=meta.get("contention", {}).get("core"),
                progress=lambda label: print(f"measured {label}", flush=True),
            )
    except NothingMeasured as err:
        print(f"{parser.prog}: {err}: " + "; ".join(sorted({s["reason"] for s in err.skipped})))
        return 1
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem("small_width", meta),
        what="Small-width SAO vs dense",
        settings=timing,
        formats=("json", "md"),
        skipped=skipped,
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
