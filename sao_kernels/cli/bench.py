"""``python -m sao_kernels bench``: which flags belong to which suite, the memory check, and
running a suite into its results files (the parser is in ``sao_kernels.cli``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

from .summary import check_output_arguments

_SWEEP_ONLY = ("ops", "block_sizes", "backends", "conv_channels", "conv_size", "conv_batch", "autotune", "roofline")
_SUITE_ONLY = ("mlp_depth",)
_MODELS_ONLY = ("models", "frozen_weights")
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


def run_bench(args, argv: Sequence[str], prog: str) -> int:
    """``bench``: check the suite's flags, time it, write and summarise the results."""
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
    meta["frozen_weights"] = bool(args.frozen_weights)
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
            frozen_weights=args.frozen_weights,
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
