"""Command line: ``python -m sao_kernels bench``, ``python -m sao_kernels report`` and
``python -m sao_kernels info`` (``info.py``).

Exit status: 0 when results were written, 1 when nothing could be measured (what was
skipped and why goes to stderr), 2 for a usage error (any bad flag value, an --out that
cannot be written, a --model that does not load, a --compare file that is not a results.json),
always before any measuring, 3 when ``bench --compare OLD.json --fail-threshold t`` found a
regression (the results are written all the same).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from .arguments import (
    choice_list,
    finite_float,
    fraction,
    limit_text,
    limited,
    limited_list,
    max_threads,
    nonnegative_int,
    seconds,
    threads,
)
from .summary import add_output_arguments

SUITES = ("sweep", "small-width", "models", "tiers")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from .. import __version__
    from ..bench.model_suite import MODELS
    from ..bench.sweep import BACKENDS, DTYPES, OPS
    from ..cpu import TIERS
    from .demo_models import BUILTIN

    parser = argparse.ArgumentParser(
        prog=prog,
        description="SAO sparse layers: microbenchmarks against dense and sparse baselines, per-layer reports, and "
        "what this installation runs with (info).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bench,report,info}")

    b = sub.add_parser(
        "bench",
        help="time SAO against dense and write results.{json,csv,md} and speedup.png",
        description="Time the SAO products against dense (and sparse baselines) in one process, interleaved, with "
        "spread (min / median / IQR), a 95% interval on every speed-up and flags on rows that cannot be trusted. "
        "--suite sweep (default): ops x shapes x G x dtype x block_size x backend; a few minutes on a 2-core CPU, "
        "the full sweep on CUDA.  --suite small-width: SAOLinear vs nn.Linear at widths 128 / 512, T 128 / 1024, and "
        "a 100-layer width-128 tanh MLP training step vs its dense twin.  --suite models: BERT, GPT-2, Llama, ViT "
        "(base width, 2 layers, from transformers configs) and a ResNet-style CNN, dense vs converted at G = 2/4/8: "
        "training step and inference latency at batch 1 and 8, with parameters and FLOPs.  --suite tiers: one table "
        "per CPU tier this machine can emulate (SAOLinear vs nn.Linear and the pre-gathered bmm bound; "
        "docs/cpu_tiers.md).  Comma-separated lists override defaults.",
    )
    b.set_defaults(subparser=b)
    b.add_argument("--suite", choices=SUITES, default="sweep", help="what to measure (default: sweep)")
    b.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where to run (default: cuda if available, else cpu; small-width: cpu)",
    )
    b.add_argument("--ops", type=choice_list(OPS), help=f"sweep: ops to measure, from: {', '.join(OPS)}")
    b.add_argument(
        "--tokens", type=limited_list("tokens"), help=f"token counts T in {limit_text('tokens')}, e.g. 16,512"
    )
    b.add_argument(
        "--features",
        type=limited_list("features"),
        help=f"square layer widths m = n in {limit_text('features')}, e.g. 1024,4096",
    )
    b.add_argument(
        "--groups",
        type=limited_list("groups"),
        help=f"group counts G (sparsity 1 - 1/G) in {limit_text('groups')}, e.g. 1,2,4,8",
    )
    b.add_argument("--dtypes", type=choice_list(tuple(DTYPES)), help=f"dtypes, from: {', '.join(DTYPES)}")
    b.add_argument(
        "--block-sizes",
        type=limited_list("block_sizes"),
        help=f"sweep: block_size values in {limit_text('block_sizes')} (1 = the paper's)",
    )
    b.add_argument(
        "--backends",
        type=choice_list(BACKENDS),
        help=f"sweep: implementations to time, from: {', '.join(BACKENDS)} (dense is always timed)",
    )
    b.add_argument(
        "--conv-channels",
        type=limited("conv_channels"),
        help=f"sweep: channels of the conv2d ops (square layer), in {limit_text('conv_channels')}",
    )
    b.add_argument(
        "--conv-size",
        type=limited("conv_size"),
        help=f"sweep: spatial size H = W of the conv2d ops, in {limit_text('conv_size')}",
    )
    b.add_argument(
        "--conv-batch",
        type=limited("conv_batch"),
        help=f"sweep: batch of the conv2d ops, in {limit_text('conv_batch')}",
    )
    b.add_argument(
        "--mlp-depth",
        type=limited("mlp_depth"),
        help=f"small-width: layers of the tanh MLP step, in {limit_text('mlp_depth')} (default 100; 0 leaves it out)",
    )
    b.add_argument("--models", type=choice_list(MODELS), help=f"models: which models, from: {', '.join(MODELS)}")
    b.add_argument(
        "--frozen-weights",
        action="store_true",
        help="models: run the inference modes inside sao_kernels.frozen_weights() (the native forward keeps "
        "its re-laid weights between calls; docs/cpu_engines.md)",
    )
    b.add_argument(
        "--quick",
        action="store_true",
        help="models: tiny configurations; tiers: small shapes and short timing (smoke tests, seconds)",
    )
    b.add_argument(
        "--min-run-time",
        type=seconds,
        help="seconds of timed calls per candidate before the spread is checked (default 0.2; 0.1 on cuda)",
    )
    b.add_argument(
        "--max-run-time",
        type=seconds,
        help="seconds per candidate after which rounds stop even if "
        "the spread is still wide (default 5 x --min-run-time)",
    )
    b.add_argument(
        "--target-spread",
        type=fraction,
        default=0.05,
        help="stop adding rounds once every IQR is at most this fraction of its median (default 0.05)",
    )
    b.add_argument(
        "--flag-spread",
        type=fraction,
        default=0.10,
        help="flag rows whose IQR or speed-up interval exceeds this fraction (default 0.10)",
    )
    b.add_argument(
        "--contention",
        action="store_true",
        help="measure everything a second time with a busy-loop process pinned on one core",
    )
    b.add_argument("--contention-core", type=nonnegative_int, help="the core for --contention (default: the last)")
    b.add_argument("--threads", type=threads, help=f"torch.set_num_threads, in [1, {max_threads()}] (default: torch's)")
    b.add_argument(
        "--roofline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sweep: add floor ms and roofline fraction columns, from a dense matmul and a copy timed at the "
        "start (default: on cuda only)",
    )
    b.add_argument("--machine", help="machine name recorded in the results (default: from the CPU / GPU name)")
    b.add_argument(
        "--autotune",
        action="store_true",
        help="autotune the Triton kernels' tiles per shape class (sets SAO_KERNELS_AUTOTUNE=1)",
    )
    b.add_argument(
        "--cpu-tier",
        choices=TIERS,
        help="emulate this CPU tier: re-run in a subprocess with SAO_KERNELS_CPU_ISA, DNNL_MAX_CPU_ISA, "
        "ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS set for it (tiers suite: only this tier)",
    )
    b.add_argument("--tiers-out", help=argparse.SUPPRESS)  # tiers: the exact folder (set by the parent run)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_arguments(b)  # --out, -q / -v, --compare, --fail-threshold

    r = sub.add_parser(
        "report",
        help="convert a model to SAO and report per-layer FLOPs, parameters and latency vs dense",
        description="Build a model, convert its Linear / Conv2d layers to SAO at --sparsity, and write "
        "report.{json,csv,md,png}: per-layer stored vs dense parameters, FLOPs (from FlopCounterMode) and the "
        "latency of each SAO layer vs its dense twin, timed interleaved, with spread and flags.",
    )
    r.set_defaults(subparser=r)
    r.add_argument(
        "--model",
        default="mlp",
        help=f"built-in ({', '.join(BUILTIN)}) or package.module:factory returning (model, inputs)",
    )
    r.add_argument(
        "--sparsity",
        type=finite_float(0.0, 1.0, lo_open=False, hi_open=True),
        default=0.875,
        help="target sparsity 1 - 1/G, in [0, 1) (default 0.875, G=8)",
    )
    r.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    r.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    r.add_argument(
        "--repeats",
        type=limited("repeats"),
        default=10,
        help=f"least interleaved rounds per latency measurement, in {limit_text('repeats')} (default 10)",
    )
    r.add_argument(
        "--min-run-time",
        type=seconds,
        default=0.1,
        help="seconds of timed calls per layer and mode before the spread is checked (default 0.1)",
    )
    r.add_argument("--flag-spread", type=fraction, default=0.10, help="flag rows whose spread exceeds this fraction")
    r.add_argument(
        "--threads",
        type=threads,
        help=f"torch.set_num_threads, in [1, {max_threads()}] (default: torch's; on a shared or 2-core machine "
        "1 often times steadier)",
    )
    r.add_argument("--no-latency", action="store_true", help="count FLOPs and parameters only")
    r.add_argument("--no-backward", action="store_true", help="forward only")
    r.add_argument("--out", default="sao_report", help="output folder (default: ./sao_report)")

    i = sub.add_parser(
        "info",
        help="print the version, torch, native extension, CPU tier, usable backends and Triton (for bug reports)",
        description="What this installation runs with: sao_kernels and torch versions, whether the native extension "
        "is loaded (and why not), the CPU model and ISA tier, the backends usable on each device and what auto "
        "picks per dtype, Triton and TRITON_INTERPRET, and the environment variables that change any of it.",
    )
    i.add_argument("--json", action="store_true", help="one JSON object (paste it into a bug report)")
    return parser


def default_prog() -> str:
    """'python -m sao_kernels' when run that way, else the console script's name."""
    return "python -m sao_kernels" if os.path.basename(sys.argv[0]) == "__main__.py" else "sao-kernels"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or default_prog()
    args = build_parser(prog).parse_args(argv)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args, argv, prog)
    if args.command == "info":
        from .info import run_info

        return run_info(args)
    from .report import run_report

    return run_report(args, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
