"""``python -m sao_kernels bench --suite tiers`` (sao_kernels/bench/tiers.py): one table per
CPU tier, each measured in a subprocess under the tier's caps, in --quick mode."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from sao_kernels import cpu
from sao_kernels.bench import tiers
from sao_kernels.bench.timing import TimingSettings
from sao_kernels.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (cpu.ENV_VAR, *cpu.LIBRARY_ENV_VARS)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "sao_kernels",
        "bench",
        "--suite",
        "tiers",
        "--quick",
        "--no-progress",
        "--threads",
        "1",
    ]
    cmd += args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_quick_suite_writes_one_table_per_emulable_tier(tmp_path):
    proc = _cli("--groups", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("tiers_") and cpu.cpu_model() and folder.name.count("_") >= 2
    for tier in cpu.emulable_tiers():
        data = json.loads((folder / f"{tier}.json").read_text())
        meta, rows = data["meta"], data["results"]
        # the file names the CPU model and the tier, and the tier is what ran
        assert meta["cpu"] == cpu.cpu_model() and meta["tier"] == tier
        assert meta["cpu_tiers"]["tier"] == tier and meta["cpu_tiers"]["cap"] == tier
        assert meta["cpu_tiers"]["dnnl_max_cpu_isa"] == cpu.tier_env(tier)["DNNL_MAX_CPU_ISA"]
        md = (folder / f"{tier}.md").read_text()
        assert f"CPU tier `{tier}`" in md and meta["cpu"] in md
        assert (folder / f"{tier}.csv").is_file()
        seen = {(r["dtype"], r["mode"], r["groups"]) for r in rows}
        assert seen == {(d, m, 2) for d in ("float32", "bfloat16") for m in tiers.MODES}
        for r in rows:
            assert r["tier"] == tier and r["tokens"] == tiers.MODE_TOKENS.get(r["mode"], 64)
            assert r["ms"] > 0 and r["ms_dense"] > 0 and r["ms_bmm"] > 0
            assert r["speedup"] == pytest.approx(r["ms_dense"] / r["ms"], rel=0.5)  # ratio of medians
            assert r["vs_bmm"] == pytest.approx(r["ms_bmm"] / r["ms"], rel=1e-9)
            assert r["target"] == pytest.approx((0.8 if r["mode"].startswith("decode") else 0.85) * 2)
            # each timed block records the cross-core probe around it (this machine has two cores)
            assert r["cross_core_before"] > 0 and r["cross_core_after"] > 0
        assert "| cross-core |" in md


def test_slow_candidates_are_timed_once_and_flagged(monkeypatch):
    """A candidate whose first call exceeds slow_call is recorded from that call alone, and
    its rows say so (no interval)."""
    cfg = tiers.TierConfig(width=64, tokens=8, groups=(2,), dtypes=("float32",), modes=("fwd",), slow_call=1e-9)
    rows = tiers.measure_tier("x", cfg, TimingSettings(min_run_time=0.001, min_rounds=3))
    (row,) = rows
    assert row["flag"] == "once" and "timed by one call" in row["flag_reason"]
    assert row["dense_once"] and row["speedup_lo"] is None and row["vs_bmm_lo"] is None


def test_bound_computes_the_same_products():
    """The bmm bound of the forward computes the layer's output in group order (it is a bound
    on the same work, not on something else)."""
    from sao_kernels.layers import SAOLinear

    g = torch.Generator().manual_seed(0)
    fns = tiers._steps("fwd", 5, 32, torch.float64, (4,), g)
    assert set(fns) == {"dense", "G=4", "bmm G=4"}
    layer = SAOLinear(32, 32, groups=4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.randn(5, 32, dtype=torch.float64)
    ii = layer.in_index if layer.in_index is not None else torch.arange(32)
    oi = layer.out_index if layer.out_index is not None else torch.arange(32)
    xg = x[:, ii].view(5, 4, 8).transpose(0, 1)
    yg = torch.bmm(xg, layer.values.detach().transpose(1, 2))  # (G, T, a)
    y = torch.empty(5, 32, dtype=torch.float64)
    y[:, oi] = yg.transpose(0, 1).reshape(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(y + layer.bias, layer(x))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mlp-depth", "3"], "--mlp-depth applies to --suite small-width only"),
        (["--backends", "torch"], "--backends applies to --suite sweep only"),
        (["--tokens", "8,16"], "--suite tiers takes one value"),
        (["--dtypes", "float64"], "float64 not allowed for --suite tiers"),
        (["--features", "100", "--groups", "3"], "do not divide the width 100"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--suite", "tiers", "--out", str(tmp_path), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_quick_and_tiers_out_belong_to_the_tiers_suite(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "sweep", "--quick", "--out", str(tmp_path)])
    assert "--quick applies to --suite models / tiers only" in capsys.readouterr().err


def test_a_tier_above_this_cpu_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cpu, "hardware_tier", lambda: "avx2")
    assert tiers.check_emulable("avx2") is None and tiers.check_emulable("scalar") is None
    reason = tiers.check_emulable("avx512")
    assert reason and "tier is avx2" in reason
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--suite", "tiers", "--cpu-tier", "amx", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--cpu-tier amx: this CPU's tier is avx2" in capsys.readouterr().err


def test_cpu_tier_reexecutes_only_when_the_caps_differ(monkeypatch):
    tier = cpu.emulable_tiers()[0]
    for k, v in cpu.tier_env(tier).items():
        monkeypatch.setenv(k, v)
    assert tiers.env_mismatch(tier) == {}
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "SSE41")
    assert tiers.env_mismatch(tier) == {"DNNL_MAX_CPU_ISA": cpu.tier_env(tier)["DNNL_MAX_CPU_ISA"]}


def test_baselines_too_slow_to_time_are_left_out_with_the_estimate():
    """At T above the probe size, a baseline whose probe implies a call over 10 x slow_call is
    not timed at all (dense bf16 on a tier without a bf16 GEMM); the row says why."""
    cfg = tiers.TierConfig(width=64, tokens=32, groups=(2,), dtypes=("float32",), modes=("fwd",), slow_call=1e-9)
    (row,) = tiers.measure_tier("x", cfg, TimingSettings(min_run_time=0.001, min_rounds=3))
    assert row["ms_dense"] is None and row["speedup"] is None and row["ms_bmm"] is None and row["vs_bmm"] is None
    assert "untimed" in row["flag"] and "dense not timed: a 8-token call implies" in row["flag_reason"]
    assert row["ms"] > 0


def test_cpu_tier_flag_reexecutes_under_the_caps(tmp_path):
    """--cpu-tier from a plain environment re-runs the command with the tier's four caps set
    (before torch loads), and that run measures that tier only."""
    tier = cpu.emulable_tiers()[0]
    proc = _cli("--cpu-tier", tier, "--dtypes", "float32", "--groups", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (folder,) = tmp_path.iterdir()
    assert [p.name for p in sorted(folder.iterdir())] == [f"{tier}.{s}" for s in ("csv", "json", "md")]
    meta = json.loads((folder / f"{tier}.json").read_text())["meta"]
    info = meta["cpu_tiers"]
    assert meta["tier"] == info["tier"] == tier
    for name in cpu.LIBRARY_ENV_VARS:
        assert info[name.lower()] == cpu.tier_env(tier)[name]
