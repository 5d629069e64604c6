"""Interleaved timing with spread, speed-ups with a confidence interval, and row flags.

Every comparison in sao_kernels' benchmarks goes through :func:`interleave`: the candidates
(e.g. an SAO layer at G = 2, 4, 8 and its dense twin) are timed in rounds, one sample of
each per round, the order reversed every other round (A B C, C B A, A B C, ...), so that
drift, thermal state and other processes' load hit every candidate alike.  Rounds are added
until every candidate's relative IQR is at most ``target_rel_iqr`` (after at least
``min_rounds`` rounds and ``min_run_time`` seconds per candidate) or the budget of
``max_run_time`` seconds per candidate is spent.

A sample is the mean time of ``calls_per_round`` back-to-back calls (chosen once per
candidate so that a sample lasts about ``min_run_time / min_rounds``); the garbage collector
is off during a sample, and on CUDA the device is synchronised before and after it (wall
time, no L2 flush between calls: the state a training loop sees).

Speed-up = baseline median / candidate median.  Its spread is a 95 % paired bootstrap
confidence interval: rounds are resampled with replacement (the baseline and candidate
samples of one round stay together, since they were taken moments apart) and the ratio of
medians is recomputed; the 2.5 / 97.5 percentiles are the interval.  :func:`row_flags`
marks a row ``noisy`` when either side's IQR or the interval's half-width exceeds
``flag_rel_spread`` of the median, ``suspect`` when the speed-up exceeds the ideal
(G, the work ratio; 1 at G = 1, where no work is saved), and ``slow-median`` when either
side's median is more than ``MEDIAN_OVER_MIN`` x its fastest round: most rounds were slowed
by something outside the op (on a shared or 2-core machine, typically other processes or the
thread pool waking up: medians stuck at multiples of a few ms), while the min is closer to
the undisturbed time.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

MAX_CALLS_PER_ROUND = 1_000_000
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# A median this far above the fastest round means most rounds were disturbed (issue 24: on a
# busy 2-core machine, medians sat at multiples of ~8 ms, the thread pool's wake-up).
MEDIAN_OVER_MIN = 1.5


# ------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class TimingSettings:
    """How long :func:`interleave` measures and when it flags a row.

    Attributes:
        min_run_time: seconds of timed calls per candidate before the stop rule is checked.
        max_run_time: seconds per candidate after which rounds stop even if still noisy
            (None: 5 x ``min_run_time``).
        target_rel_iqr: stop once every candidate's IQR / median is at most this.
        min_rounds: rounds always run (>= 3, so that quartiles mean something).
        max_rounds: hard cap on rounds.
        flag_rel_spread: a row whose IQR / median (either side) or whose speed-up interval
            half-width / speed-up exceeds this is flagged ``noisy``.
    """

    min_run_time: float = 0.2
    max_run_time: float | None = None
    target_rel_iqr: float = 0.05
    min_rounds: int = 5
    max_rounds: int = 1000
    flag_rel_spread: float = 0.10

    def __post_init__(self) -> None:
        def bad(field: str, value: object, allowed: str) -> None:
            raise ValueError(f"{field}: {value!r} is not allowed; allowed: {allowed}")

        def finite_positive(field: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                bad(field, value, "a finite number > 0")

        finite_positive("min_run_time", self.min_run_time)
        if self.max_run_time is not None:
            finite_positive("max_run_time", self.max_run_time)
            if self.max_run_time < self.min_run_time:
                bad("max_run_time", self.max_run_time, f"a number >= min_run_time ({self.min_run_time})")
        finite_positive("target_rel_iqr", self.target_rel_iqr)
        finite_positive("flag_rel_spread", self.flag_rel_spread)
        for field, lo in (("min_rounds", 3), ("max_rounds", 3)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                bad(field, value, f"an integer >= {lo}")
        if self.max_rounds < self.min_rounds:
            bad("max_rounds", self.max_rounds, f"an integer >= min_rounds ({self.min_rounds})")

    @property
    def budget(self) -> float:
        """Seconds per candidate after which rounds stop."""
        return self.max_run_time if self.max_run_time is not None else 5.0 * self.min_run_time

    def meta(self) -> dict:
        """The settings as a results file records them (``meta["timing"]``), the budget resolved."""
        return dict(
            min_run_time=self.min_run_time,
            max_run_time=self.budget,
            min_rounds=self.min_rounds,
            max_rounds=self.max_rounds,
            target_rel_iqr=self.target_rel_iqr,
            flag_rel_spread=self.flag_rel_spread,
        )


# ---------------------------------------------------------------------------- stats
@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-round times of one candidate (ms per call) and their summary."""

    samples_ms: tuple[float, ...]
    calls_per_round: int = 1

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("Stats: samples_ms is empty")

    def _q(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples_ms), q))

    @property
    def rounds(self) -> int:
        return len(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return float(min(self.samples_ms))

    @property
    def median_ms(self) -> float:
        return self._q(50)

    @property
    def q1_ms(self) -> float:
        return self._q(25)

    @property
    def q3_ms(self) -> float:
        return self._q(75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def rel_iqr(self) -> float:
        """IQR / median (0 for a single sample)."""
        med = self.median_ms
        return self.iqr_ms / med if med > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class Speedup:
    """baseline median / candidate median, with a 95 % paired bootstrap interval [lo, hi]."""

    value: float
    lo: float
    hi: float

    @property
    def rel_half_width(self) -> float:
        return (self.hi - self.lo) / (2 * self.value) if self.value > 0 else math.inf


def speedup(baseline: Stats, candidate: Stats, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Speedup:
    """Speed-up of ``candidate`` over ``baseline`` (higher = candidate faster) and its interval.

    The two must come from the same interleaved rounds (same length): round i of one is
    paired with round i of the other when rounds are resampled.
    """
    base, cand = np.asarray(baseline.samples_ms), np.asarray(candidate.samples_ms)
    if base.shape != cand.shape:
        raise ValueError(
            f"speedup: baseline and candidate must come from the same rounds, got {base.size} and {cand.size} samples"
        )
    value = float(np.median(base) / np.median(cand))
    idx = np.random.default_rng(seed).integers(0, base.size, size=(resamples, base.size))
    ratios = np.median(base[idx], axis=1) / np.median(cand[idx], axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return Speedup(value, float(lo), float(hi))


def row_flags(
    candidate: Stats,
    baseline: Stats,
    sp: Speedup,
    ideal: float | None,
    flag_rel_spread: float,
    *,
    names: tuple[str, str] = ("SAO", "dense"),
) -> tuple[str, str]:
    """(flag, reason): flag is "" (trusted) or the comma-joined codes of "noisy", "suspect"
    and "slow-median".

    noisy: either side's IQR / median, or the speed-up interval's half-width / speed-up,
    exceeds ``flag_rel_spread``.  suspect: the speed-up exceeds ``ideal`` (G: no sparse
    product saves more than G x the work; at G = 1 it saves none); the reason says whether
    the whole interval lies above the ideal (then the baseline or the timing is wrong) or
    not (then it is likely noise).  slow-median: either side's median exceeds
    ``MEDIAN_OVER_MIN`` x its min (most rounds were slowed by something outside the op).
    """
    codes, reasons = [], []
    noisy = [
        f"{name} IQR {100 * s.rel_iqr:.0f}% of its median"
        for name, s in zip(names, (candidate, baseline))
        if s.rel_iqr > flag_rel_spread
    ]
    if sp.rel_half_width > flag_rel_spread:
        noisy.append(f"speed-up interval {sp.lo:.2f}-{sp.hi:.2f}x is +-{100 * sp.rel_half_width:.0f}%")
    if noisy:
        codes.append("noisy")
        reasons.append(f"noisy: {', '.join(noisy)} (limit {100 * flag_rel_spread:.0f}%)")
    if ideal is not None and sp.value > ideal:
        codes.append("suspect")
        why = "G = 1 saves no work" if ideal == 1 else f"at most {ideal:g}x less work"
        if sp.lo > ideal:
            tail = f"the whole interval {sp.lo:.2f}-{sp.hi:.2f}x lies above it: check the baseline and the timing"
        else:
            tail = f"the interval {sp.lo:.2f}-{sp.hi:.2f}x includes it: likely noise"
        reasons.append(f"suspect: speed-up {sp.value:.2f}x > ideal {ideal:g}x ({why}); {tail}")
    slow = [
        f"{name} median {s.median_ms / s.min_ms:.1f}x its min"
        for name, s in zip(names, (candidate, baseline))
        if s.min_ms > 0 and s.median_ms > MEDIAN_OVER_MIN * s.min_ms
    ]
    if slow:
        codes.append("slow-median")
        reasons.append(
            f"slow-median: {', '.join(slow)} (limit {MEDIAN_OVER_MIN:g}x): most rounds were slowed by something "
            "outside the op (other processes, thread wake-up); the min is closer to the undisturbed time"
        )
    return ",".join(codes), "; ".join(reasons)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A candidate against a baseline timed in the same interleaved rounds."""

    candidate: Stats
    baseline: Stats
    speedup: Speedup
    ideal: float | None
    flag: str
    flag_reason: str

    def fields(self, tag: str = "") -> dict:
        """Flat result columns, named by :func:`comparison_columns` (``tag``: e.g. "_fwd")."""
        c, b, s = self.candidate, self.baseline, self.speedup
        values = (c.median_ms, c.min_ms, c.iqr_ms, b.median_ms, b.min_ms, b.iqr_ms, s.value, s.lo, s.hi, c.rounds)
        return dict(zip(comparison_columns(tag), values, strict=True))


def comparison_columns(tag: str = "") -> tuple[str, ...]:
    """The columns of :meth:`Comparison.fields`, in order, the one definition every results
    table takes its timing columns from: ms{tag} (candidate median), ms{tag}_min,
    ms{tag}_iqr, ms{tag}_dense (baseline median), ..._min, ..._iqr, speedup{tag},
    speedup{tag}_lo, speedup{tag}_hi (its 95 % interval), rounds{tag}.  Flags and the ideal
    are the caller's (``results.FLAG_FIELDS``)."""
    return (
        f"ms{tag}",
        f"ms{tag}_min",
        f"ms{tag}_iqr",
        f"ms{tag}_dense",
        f"ms{tag}_dense_min",
        f"ms{tag}_dense_iqr",
        f"speedup{tag}",
        f"speedup{tag}_lo",
        f"speedup{tag}_hi",
        f"rounds{tag}",
    )


def compare(
    baseline: Stats,
    candidate: Stats,
    *,
    ideal: float | None,
    flag_rel_spread: float,
    names: tuple[str, str] = ("SAO", "dense"),
) -> Comparison:
    """Speed-up of ``candidate`` over ``baseline`` with its interval and flags."""
    sp = speedup(baseline, candidate)
    flag, reason = row_flags(candidate, baseline, sp, ideal, flag_rel_spread, names=names)
    return Comparison(candidate, baseline, sp, ideal, flag, reason)


# --------------------------------------------------------------------------- timing
def _synchronizer(device: torch.device | str) -> Callable[[], None]:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _time_calls(fn: Callable[[], object], calls: int, sync: Callable[[], None], clock: Callable[[], float]) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (gc off, device synchronised)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sync()
        start = clock()
        for _ in range(calls):
            fn()
        sync()
        return clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def interleave(
    fns: Mapping[str, Callable[[], object]],
    settings: TimingSettings = TimingSettings(),
    *,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Stats]:
    """Time every callable of ``fns`` in interleaved rounds; one :class:`Stats` per name.

    Each callable is called once to warm up (compilation, allocator, caches) before any
    timing; an exception there propagates.  See the module docstring for the stop rule.
    """
    names = list(fns)
    if not names:
        raise ValueError("interleave: no callables to time")
    sync = _synchronizer(device)
    for fn in fns.values():
        fn()
        sync()
    sample_s = settings.min_run_time / settings.min_rounds
    calls = {}
    for name, fn in fns.items():
        one = max(_time_calls(fn, 1, sync, clock), 1e-9)
        calls[name] = int(min(MAX_CALLS_PER_ROUND, max(1, sample_s // one)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    for r in range(settings.max_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            t = _time_calls(fns[name], calls[name], sync, clock)
            samples[name].append(1e3 * t / calls[name])
            spent[name] += t
        if r + 1 < settings.min_rounds:
            continue
        if max(spent.values()) >= settings.budget:
            break  # the budget is spent, noisy or not: row_flags will say so
        if min(spent.values()) < settings.min_run_time:
            continue
        if all(Stats(tuple(s)).rel_iqr <= settings.target_rel_iqr for s in samples.values()):
            break
    return {name: Stats(tuple(samples[name]), calls[name]) for name in names}


def median_ms(fn: Callable[[], object], *, min_run_time: float = 0.2, device: torch.device | str = "cpu") -> float:
    """Median ms per call of ``fn`` timed alone (no baseline: for calibration such as the
    roofline peaks, never for a speed-up)."""
    return interleave({"fn": fn}, TimingSettings(min_run_time=min_run_time), device=device)["fn"].median_ms


def compare_to_baseline(
    baseline: Callable[[], object],
    candidates: Mapping[str, Callable[[], object]],
    settings: TimingSettings,
    *,
    ideal: Mapping[str, float | None] | None = None,
    device: torch.device | str = "cpu",
    names: tuple[str, str] = ("SAO", "dense"),
) -> dict[str, Comparison]:
    """Time ``baseline`` and every candidate interleaved; a :class:`Comparison` per candidate."""
    key = "__baseline__"
    if key in candidates:
        raise ValueError(f"compare_to_baseline: {key!r} is reserved")
    stats = interleave({key: baseline, **candidates}, settings, device=device)
    ideal = ideal or {}
    return {
        name: compare(
            stats[key], stats[name], ideal=ideal.get(name), flag_rel_spread=settings.flag_rel_spread, names=names
        )
        for name in candidates
    }
