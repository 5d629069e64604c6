"""``python -m sao_kernels report``: the per-layer FLOP / latency report of a model
(``--model``), converted at ``--sparsity`` (the parser is in ``sao_kernels.cli``)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import torch


def _nothing_converted(prog: str, args, summary) -> str:
    """Why ``report`` stops: no layer reached --sparsity, and the sparsities that would."""
    from ..sizes import valid_sparsities

    shapes = {row.shape[:2] for row in summary.rows if len(row.shape) >= 2}
    common = set.intersection(*(set(valid_sparsities(m, n)) for m, n in shapes)) - {0.0} if shapes else set()
    hint = (
        f"; sparsities every layer of it can reach: {', '.join(f'{s:g}' for s in sorted(common)[:6])}" if common else ""
    )
    return (
        f"{prog} report: --sparsity {args.sparsity:g} converted no layer of {args.model} "
        f"({len(summary.rows)} Linear / Conv2d layer(s), e.g. {summary.rows[0].path or '(root)'}: "
        f"{summary.rows[0].reason}){hint}"
        if summary.rows
        else f"{prog} report: {args.model} has no Linear / Conv2d layer to convert"
    )


def _reported_types() -> tuple[type, ...]:
    from ..layers import SAOConv2d, SAOLinear

    return (torch.nn.Linear, torch.nn.Conv2d, SAOLinear, SAOConv2d)


def run_report(args, argv: Sequence[str], prog: str) -> int:
    """``python -m sao_kernels report``: returns the exit status."""
    from ..bench import results
    from ..bench.timing import TimingSettings
    from ..conversion import ReinitializedWarning, conversion_summary, convert
    from .demo_models import load_model
    from .layer_report import report

    err = args.subparser.error
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        err("--device cuda: CUDA is not available (torch.cuda.is_available() is False)")
    from sao_kernels.bench import extras

    try:  # the [bench] extra: report.png needs matplotlib; say so before measuring
        extras.check(("matplotlib",), "this command")
    except extras.MissingExtraError as e:
        print(f"{prog} report: {e}", file=sys.stderr)
        return 1
    try:
        out = results.check_writable(args.out, "--out")
    except ValueError as e:
        err(str(e))
    try:
        model, inputs = load_model(args.model)
    except ValueError as e:
        err(f"--model: {e}")
    if not any(isinstance(m, _reported_types()) for m in model.modules()):
        print(f"{prog} report: nothing to report: {args.model} has no Linear / Conv2d layer", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    try:
        model = model.to(device=device, dtype=dtype)
        inputs = tuple(
            t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
            for t in ((inputs,) if torch.is_tensor(inputs) else inputs)
        )
    except Exception as e:  # noqa: BLE001 - a model that cannot move is a bad --model
        err(f"--model {args.model}: cannot move it or its inputs to {device} {args.dtype} ({type(e).__name__}: {e})")
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:  # noqa: BLE001 - a model that cannot run its own inputs is a bad --model
        err(f"--model {args.model}: the model fails on its example inputs ({type(e).__name__}: {e})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # (the models here are freshly built: that their weights are re-initialised is expected)
        warnings.simplefilter("ignore", ReinitializedWarning)
        model = convert(model, sparsity=args.sparsity, on_empty="ignore")
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    if not conversion_summary(model).converted:
        print(_nothing_converted(prog, args, conversion_summary(model)), file=sys.stderr)
        return 1
    timing = TimingSettings(
        min_run_time=args.min_run_time,
        min_rounds=args.repeats,
        max_rounds=max(1000, args.repeats),
        flag_rel_spread=args.flag_spread,
    )
    rep = report(
        model,
        inputs,
        measure_latency=not args.no_latency,
        backward=not args.no_backward,
        name=args.model,
        timing=timing,
    )
    if rep.meta.get("forward_only"):
        print(f"note: forward-only report: {rep.meta['forward_only']}", file=sys.stderr)
    if not rep.rows:
        print(
            f"{prog} report: nothing to report: {args.model} has no Linear / Conv2d layer used by its forward",
            file=sys.stderr,
        )
        return 1
    rep.meta["command"] = " ".join([prog, *argv])  # (the load, threads and machine label: report() records them)
    paths = rep.save(out, keep_previous=True)  # a re-run into the same --out keeps the earlier report
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
