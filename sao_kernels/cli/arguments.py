"""Argument types and shared flags of the command line and the benchmark scripts: every
numeric flag is validated by argparse (finite, in range), so a bad value is a usage error
before anything runs.

The ranges of the integer flags (``LIMITS``) keep every size an int64 index and every loop
finite; what fits in memory is checked separately, for the whole selection, before anything
is allocated (``sao_kernels.bench.memory``).  ``--threads`` is at most ``max_threads()``:
``THREADS_PER_CORE`` x the machine's logical CPUs (more only oversubscribes the cores, and
torch.set_num_threads(100000) crashes the process when OpenMP cannot create the threads).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch

# ------------------------------------------------------------------ ranges
LIMITS = {
    "tokens": (1, 2**24),  # tokens T per product
    "features": (1, 2**17),  # layer widths m = n (a 2**17 square fp32 weight is 64 GiB)
    "groups": (1, 2**17),  # G (must also divide the width)
    "block_sizes": (1, 2**17),
    "conv_channels": (1, 2**16),
    "conv_size": (1, 2**12),  # H = W
    "conv_batch": (1, 2**16),
    "mlp_depth": (0, 10_000),
    "repeats": (3, 100_000),  # least interleaved rounds per measurement
    "layers": (1, 10_000),
}
THREADS_PER_CORE = 4


def max_threads() -> int:
    """The largest --threads: ``THREADS_PER_CORE`` x the logical CPUs of this machine."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def limit_text(name: str) -> str:
    """'[lo, hi]' of ``LIMITS[name]`` (for help texts)."""
    lo, hi = LIMITS[name]
    return f"[{lo}, {hi}]"


# ------------------------------------------------------------------ argparse types
def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}")
        return value

    parse.__name__ = f"integer in [{lo}, {hi}]"
    return parse


def int_list_in(lo: int, hi: int) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers, each in [lo, hi]."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers in [{lo}, {hi}], got {text!r}"
            ) from None
        if not values or any(not lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers in [{lo}, {hi}], got {text!r}")
        return values

    parse.__name__ = f"integers in [{lo}, {hi}]"
    return parse


def limited(name: str) -> Callable[[str], int]:
    """argparse type: an integer in ``LIMITS[name]``."""
    return int_in(*LIMITS[name])


def limited_list(name: str) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers in ``LIMITS[name]``."""
    return int_list_in(*LIMITS[name])


def threads(text: str) -> int:
    """argparse type: a thread count in [1, max_threads()]."""
    try:
        return int_in(1, max_threads())(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(
            f"{err} ({THREADS_PER_CORE} x the {os.cpu_count()} logical CPUs of this machine)"
        ) from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(1)(text)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(0)(text)


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def finite_float(
    lo: float, hi: float = math.inf, *, lo_open: bool = True, hi_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite float in (lo, hi] (brackets per ``lo_open`` / ``hi_open``);
    nan and inf are refused."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or math.isinf(hi) else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}") from None
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {text!r}")
        return value

    parse.__name__ = f"number in {span}"
    return parse


def choice_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated values from ``allowed``."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{','.join(bad) or text!r} not allowed; choose from {', '.join(allowed)}")
        return values

    return parse


seconds = finite_float(0.0, 3600.0)
fraction = finite_float(0.0, 1.0)


def add_timing_arguments(parser: argparse.ArgumentParser, *, min_run_time: float = 0.2) -> None:
    """--min-run-time, --max-run-time, --target-spread, --flag-spread, --threads, --machine,
    --out (the flags every benchmark script shares)."""
    parser.add_argument(
        "--min-run-time",
        type=seconds,
        default=min_run_time,
        help=f"seconds of timed calls per candidate before the spread is checked (default {min_run_time:g})",
    )
    parser.add_argument(
        "--max-run-time",
        type=seconds,
        help="seconds per candidate after which rounds stop even "
        "if the spread is still wide (default 5 x --min-run-time)",
    )
    parser.add_argument(
        "--target-spread",
        type=fraction,
        default=0.05,
        help="stop once every IQR is at most this fraction of its median (default 0.05)",
    )
    parser.add_argument(
        "--flag-spread",
        type=fraction,
        default=0.10,
        help="flag rows whose IQR or speed-up interval exceeds this fraction (default 0.10)",
    )
    parser.add_argument(
        "--threads", type=threads, help=f"torch.set_num_threads, in [1, {max_threads()}] (default: torch's)"
    )
    parser.add_argument("--machine", help="machine name for the results (default: from the CPU / GPU name)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: benchmarks/results)")


def script_setup(args: argparse.Namespace, parser: argparse.ArgumentParser, device: str = "cpu"):
    """Apply --threads, check --out up front, and return (TimingSettings, meta) for a
    benchmark script; usage errors exit 2 through ``parser.error``."""
    from ..bench.machine import machine_label, machine_meta
    from ..bench.results import check_writable
    from ..bench.timing import TimingSettings

    try:
        timing = TimingSettings(
            min_run_time=args.min_run_time,
            max_run_time=args.max_run_time,
            target_rel_iqr=args.target_spread,
            flag_rel_spread=args.flag_spread,
        )
        check_writable(args.out, "--out")
    except ValueError as e:
        parser.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = machine_meta(device)
    meta["machine"] = args.machine or machine_label(meta)
    meta["command"] = " ".join([parser.prog, *sys.argv[1:]])
    meta["timing"] = timing.meta()
    return timing, meta


# ------------------------------------------------------------------------- parser
