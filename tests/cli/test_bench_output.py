"""What ``python -m sao_kernels bench`` prints and where it writes (issue 24, the newcomer's
path): one screen by default, -q / -v, combinations that can never run left out once, runs
kept side by side, --compare with --fail-threshold."""

import json

import pytest

from sao_kernels import cli
from sao_kernels.bench import sweep
from sao_kernels.cli import bench as cli_bench

TINY = [
    "bench",
    "--device",
    "cpu",
    "--tokens",
    "8",
    "--features",
    "32",
    "--min-run-time",
    "0.003",
    "--max-run-time",
    "0.01",
    "--no-progress",
    "--ops",
    "linear_fwd,linear_fwd_bwd",
    "--groups",
    "1,2",
    "--backends",
    "torch,bsr",
]


def test_summary_quiet_verbose_and_runs_kept_side_by_side(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(TINY + ["--out", str(out)]) == 0
    std = capsys.readouterr()
    lines = std.out.splitlines()
    assert "| speed-up over dense | G=1 | G=2 |" in lines and len(lines) <= 30
    assert any(line.startswith("| linear_fwd_bwd torch | ") for line in lines)
    assert "Flags:" not in std.out and "paired bootstrap" not in std.out  # footnotes only in the files
    assert lines[-1] == f"wrote {out}/results.{{json,csv,md}}, {out}/speedup.png"
    # bsr cannot run a backward: left out before timing, said once (one line), listed in the file
    notes = [line for line in std.err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 2 combinations can never run here and were left out before timing: 2 x bsr is forward-only "
        "(listed in results.md)"
    ]
    assert "bsr" not in std.out.split("| linear_fwd_bwd", 1)[1]
    first = (out / "results.json").read_text()
    assert "Left out before timing (these can never run here):" in (out / "results.md").read_text()

    assert cli.main(TINY + ["--out", str(out), "-q"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert len(quiet) == 1 and quiet[0].startswith("sweep: 6 rows, speed-up ")
    assert quiet[0].endswith(f"wrote {out}/results-2.{{json,csv,md}}, {out}/speedup-2.png")

    assert cli.main(TINY + ["--out", str(out), "--verbose"]) == 0
    verbose = capsys.readouterr().out
    assert "paired bootstrap interval" in verbose and "\n| linear_fwd | torch |" in verbose
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{n}.{ext}"
        for n in ("", "-2", "-3")
        for stem, ext in [("results", "json"), ("results", "csv"), ("results", "md"), ("speedup", "png")]
    )
    assert (out / "results.json").read_text() == first  # the first run's files were never replaced


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "-q", "-v"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_default_cpu_sweep_schedules_nothing_that_can_never_run():
    """The default sweep used to list 35 impossible combinations twice; they are never
    scheduled, every one is marked as left out before timing, and each has its reason."""
    cfg = sweep.default_config("cpu")
    jobs, skipped = sweep.plan(cfg)
    assert skipped and all(s["static"] for s in skipped)
    left_out = {(s["op"], s["backend"]) for s in skipped}
    for job, cands in jobs:
        assert all((job.op, backend) not in left_out for _, _, backend in cands)
    expected = 5 * (3 if "bsr" in cfg.backends else 0) + 5 * 2 * sum(b in cfg.backends for b in ("native", "bsr"))
    assert len(skipped) == expected  # bsr: 3 backward ops; native / bsr: 2 conv ops; x 5 group counts


def _old_results(path, data, factor):
    """A synthetic earlier run: this run's rows with every speed-up and interval x factor."""
    rows = [
        dict(r, speedup=r["speedup"] * factor, speedup_lo=r["speedup"] * factor, speedup_hi=r["speedup"] * factor)
        for r in data["results"]
    ]
    rows.append(dict(rows[0], op="conv2d_fwd"))  # a row the new run does not have
    path.write_text(json.dumps({"meta": dict(data["meta"], machine="older-box"), "results": rows}))
    return path


def test_compare_with_a_fail_threshold(tmp_path, capsys):
    out = tmp_path / "o"
    argv = TINY + ["--ops", "linear_fwd", "--backends", "torch", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    # an earlier run 10x faster than anything this one could show: every row regressed
    slow = _old_results(
        tmp_path / "fast_old.json", data, factor=10.0 * max(r["speedup_hi"] / r["speedup"] for r in data["results"])
    )
    assert cli.main(argv + ["--compare", str(slow), "--fail-threshold", "0.1"]) == 3
    std = capsys.readouterr()
    assert "compared with" in std.out and "2 matching rows, 2 regressions; 1 only in the old run, 0 only" in std.out
    assert "REGRESSION" in std.out and "FAILED: 2 row(s) slower than" in std.err
    md = (out / "compare.md").read_text()
    assert "older-box" in md and md.count("| REGRESSION |") == 2
    # an earlier run 10x slower: no regression, exit 0; the comparison is kept beside the first
    fast = _old_results(
        tmp_path / "slow_old.json", data, factor=0.1 * min(r["speedup_lo"] / r["speedup"] for r in data["results"])
    )
    assert cli.main(argv + ["-q", "--compare", str(fast), "--fail-threshold", "0.1"]) == 0
    assert "2 matching rows, 0 regressions" in capsys.readouterr().out
    assert (out / "compare-2.md").exists() and (out / "results-3.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fail-threshold", "0.1"], "--fail-threshold needs --compare"),
        (["--compare", "no/such/file.json"], "--compare: cannot read"),
        (["--compare", "x.json", "--fail-threshold", "1.5"], "--fail-threshold"),
        (["--suite", "tiers", "--compare", "x.json"], "--compare does not apply to --suite tiers"),
    ],
)
def test_compare_usage_errors_before_measuring(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.json").write_text('{"results": []}')
    monkeypatch.setattr(cli_bench, "_run_sweep", lambda *a, **k: pytest.fail("measured despite a bad flag"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_skipped_line_is_one_line_with_counts_and_short_reasons():
    from sao_kernels.cli.summary import skipped_line

    cfg = sweep.SweepConfig(
        features=(30,), groups=(1, 4, 8), ops=("linear_fwd", "linear_grad_input"), backends=("torch", "bsr")
    )
    _, skipped = sweep.plan(cfg)
    skipped.append(dict(what="x", reason="torch failed at warm-up (RuntimeError: boom)", backend="torch"))
    line = skipped_line(skipped, "results.md")
    assert "\n" not in line and line.startswith("note: 6 combinations were not measured (5 left out before timing")
    assert "4 x G and block_size that do not fit the width" in line and "1 x bsr is forward-only" in line
    assert "1 x torch failed at warm-up" in line and skipped_line([], "results.md") is None
