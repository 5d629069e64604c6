"""sao_kernels.bench.cases: layer / model comparisons, issue 13's small-width suite, contention."""

import json
import os

import pytest
import torch

from sao_kernels.bench import cases
from sao_kernels.bench.machine import machine_meta
from sao_kernels.bench.sweep import NothingMeasured
from sao_kernels.bench.timing import TimingSettings

FAST = TimingSettings(min_run_time=0.003, max_run_time=0.01, min_rounds=3)
TINY = dict(widths=(16,), tokens=(4,), groups=(2, 3), depth=3, depth_width=16, depth_tokens=4, depth_groups=(4,))


def test_small_width_suite_rows_and_skips():
    labels = []
    rows, skipped = cases.small_width_suite(FAST, progress=labels.append, **TINY)
    assert labels == ["linear 16 T=4 float32", "mlp3 float32"]
    assert {(r["case"], r["mode"], r["groups"]) for r in rows} == {
        ("linear", "fwd", 2),
        ("linear", "fwd_bwd", 2),
        ("mlp3", "fwd", 4),
        ("mlp3", "train_step", 4),
    }
    for r in rows:
        assert set(cases.CASE_FIELDS) <= set(r)
        assert r["contention"] is False and r["ideal_speedup"] == r["groups"] and r["rounds"] >= 3
        assert r["ms_min"] <= r["ms"] and r["speedup_lo"] <= r["speedup_hi"]
    assert [s["what"] for s in skipped] == ["linear 16x16 G=3"] and "G=3 on width 16" in skipped[0]["reason"]
    assert cases.suite_progress_total((16,), (4,), ("float32",), 3, False) == len(labels)


def test_nothing_valid_raises_before_timing():
    with pytest.raises(NothingMeasured):
        cases.small_width_suite(FAST, **dict(TINY, groups=(3,), depth_groups=(5,)))


def test_the_mlp_twins_compute_the_same_function():
    dense, saos = cases.tanh_mlp(3, 16, (4,), torch.float64, torch.Generator().manual_seed(0))
    x = torch.randn(5, 16, dtype=torch.float64)
    assert type(saos[4][0]).__name__ == "SAOLinear" and type(dense[0]).__name__ == "Linear"
    torch.testing.assert_close(dense(x), saos[4](x))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_contention_pass_and_files(tmp_path):
    rows, skipped = cases.small_width_suite(FAST, contention=True, **dict(TINY, depth=0, groups=(2,)))
    assert [r["contention"] for r in rows] == [False, False, True, True]
    meta = dict(machine_meta("cpu"), machine="m", contention={"core": 1})
    paths = cases.write_case_results(
        rows, meta, tmp_path, stem="small_width_m_2026-12-01", what="Small", settings=FAST, formats=("json", "md")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "small_width_m_2026-12-01.json",
        "small_width_m_2026-12-01.md",
    ]
    data = json.loads(paths["json"].read_text())
    assert len(data["results"]) == 4 and {"ms_iqr", "speedup_lo", "flag"} <= set(data["results"][0])
    md = paths["md"].read_text()
    assert "busy-loop process pinned on core 1" in md and md.count("| yes |") == 2
