"""sao_kernels.bench.timing: interleaving, the stop rule, spread, the speed-up interval, flags."""

import math

import pytest

from sao_kernels.bench.timing import (
    Speedup,
    Stats,
    TimingSettings,
    compare,
    compare_to_baseline,
    comparison_columns,
    interleave,
    row_flags,
    speedup,
)


class FakeClock:
    """A clock that only moves when a fake candidate 'runs'."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def fake_fn(clock, durations, log, name):
    """A callable that logs its name and advances the clock by the next duration (cycled)."""
    state = {"i": 0}

    def fn():
        log.append(name)
        clock.t += durations[state["i"] % len(durations)]
        state["i"] += 1

    return fn


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_run_time", math.nan),
        ("min_run_time", math.inf),
        ("min_run_time", 0.0),
        ("min_run_time", -1.0),
        ("max_run_time", math.nan),
        ("max_run_time", 0.01),
        ("target_rel_iqr", math.nan),
        ("target_rel_iqr", 0.0),
        ("flag_rel_spread", -0.1),
        ("min_rounds", 2),
        ("min_rounds", 3.5),
        ("max_rounds", 4),
        ("min_run_time", True),
    ],
)
def test_settings_refuse_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TimingSettings(**{field: value})


def test_stats_summary():
    s = Stats((4.0, 1.0, 3.0, 2.0, 5.0), calls_per_round=7)
    assert (s.rounds, s.min_ms, s.median_ms, s.q1_ms, s.q3_ms, s.iqr_ms) == (5, 1.0, 3.0, 2.0, 4.0, 2.0)
    assert s.rel_iqr == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        Stats(())


def test_speedup_value_and_interval():
    base = Stats((10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 10.3))
    same = speedup(base, base)
    assert same.value == same.lo == same.hi == 1.0  # paired rounds: every resample's ratio is 1
    fast = speedup(base, Stats(tuple(t / 4 for t in base.samples_ms)))
    assert fast.value == pytest.approx(4.0) and fast.lo == pytest.approx(4.0) and fast.hi == pytest.approx(4.0)
    noisy = speedup(base, Stats((2.0, 3.0, 2.5, 5.0, 2.2, 4.0, 2.4)))
    assert noisy.lo < noisy.value < noisy.hi
    assert noisy.value == pytest.approx(10.0 / 2.5)
    with pytest.raises(ValueError, match="same rounds"):
        speedup(base, Stats((1.0, 2.0)))


def test_flags_trusted_noisy_and_suspect():
    quiet_sao, quiet_dense = Stats((1.0, 1.01, 0.99, 1.0, 1.0)), Stats((4.0, 4.02, 3.98, 4.0, 4.01))
    sp = speedup(quiet_dense, quiet_sao)
    assert row_flags(quiet_sao, quiet_dense, sp, 4.0, 0.10) == ("", "")
    noisy_sao = Stats((1.0, 1.6, 0.7, 1.0, 1.3))
    flag, reason = row_flags(noisy_sao, quiet_dense, speedup(quiet_dense, noisy_sao), 8.0, 0.10)
    assert flag == "noisy" and "SAO IQR" in reason and "limit 10%" in reason and "dense IQR" not in reason
    # Above the ideal with the whole interval above it: the baseline or the timing is wrong.
    flag, reason = row_flags(quiet_sao, quiet_dense, sp, 2.0, 0.10)
    assert flag == "suspect" and "4.00x > ideal 2x" in reason and "lies above" in reason
    # G = 1: any speed-up above 1 is suspect; inside the interval it is called likely noise.
    flag, reason = row_flags(quiet_sao, quiet_sao, Speedup(1.03, 0.97, 1.08), 1.0, 0.10)
    assert flag == "suspect" and "G = 1 saves no work" in reason and "likely noise" in reason
    # A wide interval alone makes a row noisy; no ideal means no suspect check.
    flag, reason = row_flags(quiet_sao, quiet_dense, Speedup(4.0, 2.0, 6.0), None, 0.10)
    assert flag == "noisy" and "interval 2.00-6.00x" in reason
    assert compare(quiet_dense, quiet_sao, ideal=2.0, flag_rel_spread=0.1).flag == "suspect"


def test_interleave_alternates_order_and_stops_when_quiet():
    clock, log = FakeClock(), []
    fns = {"a": fake_fn(clock, [1e-3], log, "a"), "b": fake_fn(clock, [2e-3], log, "b")}
    settings = TimingSettings(min_run_time=0.01, min_rounds=5)
    stats = interleave(fns, settings, clock=clock)
    # warm-up a, b; calibration a, b; then samples of 2 a-calls (2 ms) and 1 b-call per round.
    assert log[:4] == ["a", "b", "a", "b"]
    rounds = log[4:]
    assert rounds[:3] == ["a", "a", "b"] and rounds[3:6] == ["b", "a", "a"]
    assert stats["a"].calls_per_round == 2 and stats["b"].calls_per_round == 1
    # Quiet samples: stops as soon as min_rounds and min_run_time per candidate are reached.
    assert stats["a"].rounds == stats["b"].rounds == 5
    assert stats["a"].median_ms == pytest.approx(1.0) and stats["b"].median_ms == pytest.approx(2.0)
    assert speedup(stats["b"], stats["a"]).value == pytest.approx(2.0)


def test_interleave_stops_at_the_budget_when_noisy():
    clock, log = FakeClock(), []
    fns = {"a": fake_fn(clock, [1e-3, 5e-3, 2e-3], log, "a"), "b": fake_fn(clock, [2e-3], log, "b")}
    settings = TimingSettings(min_run_time=0.01, max_run_time=0.05, min_rounds=5, max_rounds=10_000)
    stats = interleave(fns, settings, clock=clock)
    assert stats["a"].rel_iqr > settings.target_rel_iqr  # it never got quiet ...
    assert 5 < stats["a"].rounds < 100  # ... so the budget, not max_rounds, ended it
    assert clock.t < 2 * (0.05 + 0.05)  # about budget x candidates of fake time


def test_interleave_respects_max_rounds():
    clock, log = FakeClock(), []
    fns = {"a": fake_fn(clock, [1e-3, 9e-3], log, "a")}
    stats = interleave(
        fns, TimingSettings(min_run_time=0.001, max_run_time=100.0, min_rounds=3, max_rounds=7), clock=clock
    )
    assert stats["a"].rounds == 7


def test_interleave_propagates_a_failing_warm_up():
    def broken():
        raise RuntimeError("kernel refused")

    with pytest.raises(RuntimeError, match="kernel refused"):
        interleave({"x": broken}, TimingSettings(min_run_time=0.001))
    with pytest.raises(ValueError, match="no callables"):
        interleave({}, TimingSettings())


def test_compare_to_baseline_real_timing_columns():
    import torch

    x = torch.randn(16, 16)
    out = compare_to_baseline(
        lambda: x @ x, {"same": lambda: x @ x}, TimingSettings(min_run_time=0.005), ideal={"same": 1.0}
    )
    fields = out["same"].fields()
    assert tuple(fields) == comparison_columns()
    assert {"ms_min", "ms_iqr", "ms_dense_min", "ms_dense_iqr", "speedup_lo", "speedup_hi", "rounds"} <= set(fields)
    assert fields["ms_min"] <= fields["ms"] and fields["ms_iqr"] >= 0 and fields["rounds"] >= 5
    assert fields["speedup_lo"] <= fields["speedup_hi"]
    assert tuple(out["same"].fields("_fwd")) == comparison_columns("_fwd")
    assert {"ms_fwd", "ms_fwd_dense_iqr", "speedup_fwd_lo", "rounds_fwd"} <= set(comparison_columns("_fwd"))


def test_settings_meta_records_the_resolved_budget():
    """One record of the settings for every results file (bench, report, tiers, scripts)."""
    implicit = TimingSettings(min_run_time=0.2, min_rounds=4, max_rounds=50, target_rel_iqr=0.03, flag_rel_spread=0.2)
    assert implicit.meta() == dict(
        min_run_time=0.2, max_run_time=1.0, min_rounds=4, max_rounds=50, target_rel_iqr=0.03, flag_rel_spread=0.2
    )
    assert TimingSettings(min_run_time=0.2, max_run_time=0.7).meta()["max_run_time"] == 0.7


def test_slow_median_flag_when_the_median_is_far_above_the_min():
    """Issue 24: on a busy machine medians sat at multiples of the thread wake-up time while
    the min stayed low; such rows are flagged, whichever side was slowed."""
    quiet = Stats((1.0,) * 11)
    stuck = Stats((1.0,) + (2.0, 2.01, 1.99, 2.0, 2.0) * 2)  # median 2x the min, IQR tiny: not "noisy"
    flag, reason = row_flags(stuck, quiet, speedup(quiet, stuck), 4.0, 0.10)
    assert flag == "slow-median" and "SAO median 2.0x its min" in reason and "limit 1.5x" in reason
    flag, reason = row_flags(quiet, stuck, speedup(stuck, quiet), 4.0, 0.10)
    assert flag == "slow-median" and "dense median 2.0x its min" in reason and "SAO median" not in reason
    below = Stats((1.0,) + (1.45, 1.45, 1.46, 1.44, 1.45) * 2)  # 1.45x: under the limit
    assert "slow-median" not in row_flags(below, quiet, speedup(quiet, below), 4.0, 0.5)[0]
