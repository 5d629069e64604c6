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
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence

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
from .summary import add_output_arguments, check_output_arguments

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


# --------------------------------------------------------------------------- bench
_SWEEP_ONLY = ("ops", "block_sizes", "backends", "conv_channels", "conv_size", "conv_batch", "autotune", "roofline")
_SUITE_ONLY = ("mlp_depth",)
_MODELS_ONLY = ("models",)
_NOT_MODELS = ("mlp_depth", "tokens", "features", "dtypes")
_TIERS_ONLY = ("tiers_out",)
_MODELS_OR_TIERS = ("quick",)


def _meta(device: str, args, argv: Sequence[str], prog: str) -> dict:
    from ..bench.machine import machine_label, machine_meta

    meta = machine_meta(device)
    meta["machine"] = args.machine or machine_label(meta)
    meta["command"] = " ".join([prog, *argv])
    return meta


def _print_skipped(skipped: list[dict]) -> None:
    from ..bench.results import skipped_lines

    for line in skipped_lines(skipped)[1:]:
        print(line, file=sys.stderr)


def _needed_bytes(cfg, args, sweep_suite: bool) -> dict[str, int]:
    from ..bench import cases, memory, sweep

    if sweep_suite:
        return memory.sweep_bytes(cfg, sweep.plan(cfg)[0])
    return memory.small_width_bytes(
        args.features or cases.SMALL_WIDTHS,
        args.tokens or cases.SMALL_TOKENS,
        args.groups or cases.SMALL_GROUPS,
        args.dtypes or ("float32",),
        cases.MLP_DEPTH if args.mlp_depth is None else args.mlp_depth,
        cases.MLP_WIDTH,
        cases.MLP_TOKENS,
        cases.MLP_GROUPS if args.groups is None else args.groups,
        cfg.timing().max_rounds,
    )


def _bench(args, argv: Sequence[str], prog: str) -> int:
    from ..bench import machine, memory, results, sweep

    err = args.subparser.error
    sweep_suite = args.suite == "sweep"
    owner = {
        **dict.fromkeys(_SWEEP_ONLY, ("sweep",)),
        **dict.fromkeys(_SUITE_ONLY, ("small-width",)),
        **dict.fromkeys(_MODELS_ONLY, ("models",)),
        **dict.fromkeys(_TIERS_ONLY, ("tiers",)),
        **dict.fromkeys(_MODELS_OR_TIERS, ("models", "tiers")),
    }
    for name in _NOT_MODELS if args.suite == "models" else ():
        if getattr(args, name) not in (None, False):
            err(f"--{name.replace('_', '-')} does not apply to --suite models")
    for name, suites in owner.items():
        if args.suite not in suites and getattr(args, name) not in (None, False):
            flag = f"--{name.replace('_', '-')}"
            err(f"{flag} does not apply to --suite {args.suite}: {flag} applies to --suite {' / '.join(suites)} only")
    if args.suite == "tiers" and args.contention:
        err("--contention does not apply to --suite tiers")
    check_output_arguments(args, err)
    if args.cpu_tier:
        from ..bench import tiers

        reason = tiers.check_emulable(args.cpu_tier)
        if reason:
            err(f"--cpu-tier {args.cpu_tier}: {reason}")
        if tiers.env_mismatch(args.cpu_tier):  # the caps must be set before torch loads
            return tiers.run_under_tier(args.cpu_tier, argv)
    if args.suite == "tiers":
        from ..bench.tiers import bench_tiers

        return bench_tiers(args, argv, prog)
    device = args.device or ("cuda" if torch.cuda.is_available() and sweep_suite else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        err("--device cuda: CUDA is not available (torch.cuda.is_available() is False)")
    if args.suite == "small-width" and device != "cpu":
        err("--suite small-width runs on the CPU only")
    if args.contention_core is not None and not args.contention:
        err("--contention-core needs --contention")
    core = None
    if args.contention:
        cores = machine.usable_cores()
        core = cores[-1] if args.contention_core is None else args.contention_core
        if core not in cores:
            err(f"--contention-core {core}: not a usable core here; usable: {cores}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from sao_kernels.bench import extras

    try:  # the [bench] extra: speedup.png needs matplotlib, the progress bar tqdm; say so before measuring
        extras.check(("matplotlib",) + (() if args.no_progress else ("tqdm",)), "this command")
    except extras.MissingExtraError as e:
        print(f"{prog} bench: {e}", file=sys.stderr)
        return 1
    try:
        out = results.check_writable(args.out, "--out")
    except ValueError as e:
        err(str(e))

    if args.autotune:
        os.environ["SAO_KERNELS_AUTOTUNE"] = "1"
    cfg = sweep.default_config(device)
    for field in (
        "ops",
        "tokens",
        "features",
        "groups",
        "dtypes",
        "block_sizes",
        "backends",
        "conv_channels",
        "conv_size",
        "conv_batch",
        "min_run_time",
        "max_run_time",
    ):
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, tuple(value) if isinstance(value, list) else value)
    cfg.target_spread, cfg.flag_spread = args.target_spread, args.flag_spread
    cfg.contention, cfg.contention_core = args.contention, core
    if args.roofline is not None:
        cfg.roofline = args.roofline
    try:
        sweep.validate_config(cfg)
        memory.check_fits(_needed_bytes(cfg, args, sweep_suite), "this selection")
    except ValueError as e:  # memory.MemoryLimitError included: exit 2 before anything is allocated
        err(str(e))
    meta = _meta(device, args, argv, prog)
    meta["suite"] = args.suite
    meta["timing"] = cfg.timing().meta()
    if core is not None:
        meta["contention"] = {"core": core}
    try:
        with machine.recording_load(meta):
            run = {"sweep": _run_sweep, "small-width": _run_small_width, "models": _run_models}[args.suite]
            write = run(cfg, args, meta, out, not args.no_progress)
        paths = write()  # after the load average was recorded
    except sweep.NothingMeasured as e:
        print(f"{prog} bench: {e}", file=sys.stderr)
        _print_skipped(e.skipped)
        print(f"{prog} bench: nothing was written to {out}", file=sys.stderr)
        return 1
    from .summary import finish_bench

    return finish_bench(args, paths)


def _note_skipped(skipped: list[dict]) -> None:
    from .summary import skipped_line

    if skipped:
        print(skipped_line(skipped, "results.md"), file=sys.stderr)


def _run_sweep(cfg, args, meta: dict, out, progress: bool) -> Callable[[], dict]:
    from ..bench import sweep

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        result = sweep.run_sweep(cfg, progress=progress)
    _note_skipped(result.skipped)
    return lambda: sweep.write_sweep_results(result, meta, out, flag_spread=cfg.flag_spread, keep_previous=True)


def _run_small_width(cfg, args, meta: dict, out, progress: bool) -> Callable[[], dict]:
    from ..bench import cases

    widths = tuple(args.features or cases.SMALL_WIDTHS)
    tokens = tuple(args.tokens or cases.SMALL_TOKENS)
    groups = tuple(args.groups or cases.SMALL_GROUPS)
    dtypes = tuple(args.dtypes or ("float32",))
    depth = cases.MLP_DEPTH if args.mlp_depth is None else args.mlp_depth
    bar = None
    if progress:
        from sao_kernels.bench.extras import progress_bar

        bar = progress_bar(
            total=cases.suite_progress_total(widths, tokens, dtypes, depth, cfg.contention),
            desc="sao_kernels bench small-width",
            unit="config",
        )
    try:
        rows, skipped = cases.small_width_suite(
            cfg.timing(),
            widths=widths,
            tokens=tokens,
            groups=groups,
            dtypes=dtypes,
            depth=depth,
            depth_groups=(4,) if args.groups is None else groups,
            contention=cfg.contention,
            contention_core=cfg.contention_core,
            progress=(lambda label: bar.update(1)) if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    _note_skipped(skipped)
    return lambda: cases.write_case_results(
        rows,
        meta,
        out,
        stem="results",
        what="Small-width SAO vs dense",
        settings=cfg.timing(),
        plot_name="speedup.png",
        skipped=skipped,
        keep_previous=True,
    )


def _run_models(cfg, args, meta: dict, out, progress: bool) -> Callable[[], dict]:
    from ..bench import model_suite

    models = tuple(args.models or model_suite.MODELS)
    size = model_suite.QUICK if args.quick else model_suite.FULL
    meta["size"] = dataclasses.asdict(size)
    bar = None
    if progress:
        from sao_kernels.bench.extras import progress_bar

        bar = progress_bar(total=len(models), desc="sao_kernels bench models", unit="model")
    try:
        rows, skipped = model_suite.model_suite(
            cfg.timing(),
            models=models,
            groups=tuple(args.groups or model_suite.GROUPS),
            size=size,
            device=cfg.device,
            progress=(lambda label: bar.update(1)) if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    _note_skipped(skipped)
    if not rows:
        from ..bench.sweep import NothingMeasured

        raise NothingMeasured(skipped)
    return lambda: model_suite.write_model_results(
        rows, meta, out, settings=cfg.timing(), skipped=skipped, keep_previous=True
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or default_prog()
    args = build_parser(prog).parse_args(argv)
    if args.command == "bench":
        return _bench(args, argv, prog)
    if args.command == "info":
        from .info import run_info

        return run_info(args)
    from .report import run_report

    return run_report(args, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
