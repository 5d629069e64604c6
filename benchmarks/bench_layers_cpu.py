"""SAOLinear / SAOConv2d vs nn.Linear / nn.Conv2d on CPU, fwd and fwd+bwd, interleaved.

    python benchmarks/bench_layers_cpu.py [--out benchmarks/results] [--min-run-time 1.0] [--groups 2 4 8 16]

Linear: 4096 x 4096, T = 512 (float32, or --dtypes); conv: 256 -> 256 channels, 3x3, padding 1,
8 x 32 x 32, float32; G in {2, 4, 8, 16}.  For each layer kind and mode, the dense layer and the SAO layers at every
G are timed in the same interleaved rounds (sao_kernels.bench); every row carries min / median /
IQR of both sides, the speed-up with its 95 % interval and flags.  Writes
``layers_cpu_<machine>_<date>.json`` and ``.md`` into --out.
"""

from __future__ import annotations

import argparse

import torch

from sao_kernels.bench import cases
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.cli.arguments import add_timing_arguments, limited, script_setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=1.0)
    parser.add_argument("--groups", type=limited("groups"), nargs="+", default=[2, 4, 8, 16], help="G values")
    parser.add_argument("--features", type=limited("features"), default=4096, help="linear width (square)")
    parser.add_argument("--tokens", type=limited("tokens"), default=512, help="linear tokens T")
    parser.add_argument("--conv-channels", type=limited("conv_channels"), default=256, help="conv channels (square)")
    parser.add_argument("--conv-size", type=limited("conv_size"), default=32, help="conv H = W")
    parser.add_argument("--conv-batch", type=limited("conv_batch"), default=8, help="conv batch")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=sorted(cases.DTYPES),
        help="dtypes of the linear layers (the conv runs float32)",
    )
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser)
    gen = torch.Generator().manual_seed(0)
    n, T, C, H, B = args.features, args.tokens, args.conv_channels, args.conv_size, args.conv_batch
    try:
        with recording_load(meta):
            rows = []
            for dtype_name in args.dtypes:
                dtype = cases.DTYPES[dtype_name]
                dense, saos = cases.linear_layers(n, args.groups, dtype, gen)
                x = torch.randn(T, n, generator=gen).to(dtype)
                base = dict(
                    case="linear",
                    shape=f"{n}x{n}, T={T}",
                    backend="auto",
                    dtype=dtype_name,
                    width=n,
                    tokens=T,
                    depth=1,
                    contention=False,
                )
                rows += cases.layer_rows(dense, saos, x, timing, base=base, generator=gen)
            dense, saos = cases.conv_layers(C, 3, args.groups, torch.float32, gen)
            x = torch.randn(B, C, H, H, generator=gen)
            base = dict(
                case="conv",
                shape=f"{C}->{C} 3x3, {B}x{H}x{H}",
                backend="auto",
                dtype="float32",
                width=C,
                tokens=B * H * H,
                depth=1,
                contention=False,
            )
            rows += cases.layer_rows(dense, saos, x, timing, base=base, generator=gen)
    except ValueError as err:  # a G that does not divide a width: resolve_sizes names it
        parser.error(str(err))
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem("layers_cpu", meta),
        what="SAO layers vs dense",
        settings=timing,
        formats=("json", "md"),
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
