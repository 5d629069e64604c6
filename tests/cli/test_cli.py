"""The command line: python -m sao_kernels bench / report (validation up front, exit codes, files)."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import sao_kernels
from sao_kernels import cli
from sao_kernels.cli import bench as cli_bench

TINY_BENCH = [
    "bench",
    "--device",
    "cpu",
    "--tokens",
    "8",
    "--features",
    "32",
    "--min-run-time",
    "0.005",
    "--no-progress",
]


def tiny_mlp():
    """A --model factory for these tests: (model, example input)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16)), torch.randn(4, 16)


def failing_factory():
    raise RuntimeError("factory failed on purpose")


def broken_forward():
    return nn.Linear(16, 16), torch.randn(4, 7)


def test_bench_writes_the_four_files_with_spread(tmp_path, capsys):
    out = tmp_path / "bench"
    code = cli.main(
        TINY_BENCH
        + [
            "--ops",
            "linear_fwd,conv2d_fwd",
            "--groups",
            "1,2",
            "--conv-channels",
            "8",
            "--conv-size",
            "4",
            "--conv-batch",
            "1",
            "--backends",
            "torch,bsr",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md", "speedup.png"]
    data = json.loads((out / "results.json").read_text())
    assert {(r["op"], r["backend"], r["groups"]) for r in data["results"]} == {
        ("linear_fwd", "torch", 1),
        ("linear_fwd", "torch", 2),
        ("linear_fwd", "bsr", 1),
        ("linear_fwd", "bsr", 2),
        ("conv2d_fwd", "torch", 1),
        ("conv2d_fwd", "torch", 2),
    }
    for r in data["results"]:
        assert {"ms_min", "ms_iqr", "ms_dense_iqr", "speedup_lo", "speedup_hi", "rounds", "flag"} <= set(r)
    meta = data["meta"]
    assert meta["load_before"] and meta["load_after"] and meta["command"].endswith(str(out))
    assert {"bsr has no convolution (conv ops run on: torch, masked_dense)"} == {s["reason"] for s in data["skipped"]}
    out_text = capsys.readouterr().out
    assert "\n| linear_fwd torch T=8 " in out_text and "Flags:" not in out_text  # the summary; the table: in the files


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--min-run-time", "nan"], "--min-run-time: expected a finite number"),
        (["bench", "--min-run-time", "inf"], "--min-run-time"),
        (["bench", "--min-run-time", "-1"], "--min-run-time"),
        (["bench", "--min-run-time", "0"], "--min-run-time"),
        (["bench", "--max-run-time", "nan"], "--max-run-time"),
        (["bench", "--min-run-time", "0.5", "--max-run-time", "0.1"], "max_run_time"),
        (["bench", "--target-spread", "2"], "--target-spread"),
        (["bench", "--flag-spread", "nan"], "--flag-spread"),
        (["bench", "--conv-channels", "0"], "--conv-channels"),
        (["bench", "--conv-channels", "abc"], "--conv-channels"),
        (["bench", "--conv-size", "-1"], "--conv-size"),
        (["bench", "--conv-batch", "1.5"], "--conv-batch"),
        (["bench", "--threads", "0"], "--threads"),
        (["bench", "--ops", "linear_fwd,matmul"], "matmul"),
        (["bench", "--groups", "0,2"], "--groups: expected comma-separated integers in [1, "),
        (["bench", "--dtypes", "float8"], "float8"),
        (["bench", "--backends", "cublas"], "cublas"),
        (["bench", "--device", "tpu"], "invalid choice"),
        (["bench", "--suite", "small-width", "--ops", "linear_fwd"], "--ops applies to --suite sweep only"),
        (["bench", "--mlp-depth", "3"], "--mlp-depth applies to --suite small-width only"),
        (["bench", "--contention-core", "0"], "--contention-core needs --contention"),
        (["bench", "--contention", "--contention-core", "4096"], "not a usable core"),
        (["report", "--model", "nonexistent"], "nonexistent"),
        (["report", "--model", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["report", "--model", "os:no_such_attr"], "has no callable 'no_such_attr'"),
        (["report", "--model", "os:getcwd"], "must return (model, example_inputs)"),
        (["report", "--model", "test_cli:failing_factory"], "failing_factory() raised RuntimeError"),
        (["report", "--model", "test_cli:broken_forward"], "fails on its example inputs"),
        (["report", "--model", ":"], "not a built-in"),
        (["report", "--sparsity", "1.5"], "--sparsity"),
        (["report", "--sparsity", "nan"], "--sparsity"),
        (["report", "--repeats", "2"], "--repeats"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_flags_give_a_usage_error(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default --out folders land here, never in the project
    monkeypatch.setattr(cli_bench, "_run_sweep", lambda *a, **k: pytest.fail("measured despite a bad flag"))
    with pytest.raises(SystemExit) as exc:
        cli.main(argv, prog="sao-kernels")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err and "Traceback" not in err
    if argv and argv[0] in ("bench", "report"):
        assert f"usage: sao-kernels {argv[0]}" in err  # the sub-command's usage, not the top level's


def test_nan_run_time_exits_quickly_in_a_subprocess():
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sao_kernels", "bench", "--min-run-time", "nan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--min-run-time" in proc.stderr
    assert "usage: python -m sao_kernels bench" in proc.stderr  # prog when run with -m
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("command", [["bench"] + TINY_BENCH[1:], ["report", "--model", "test_cli:tiny_mlp"]])
def test_unwritable_out_fails_before_measuring(command, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(cli_bench, "_run_sweep", lambda *a, **k: pytest.fail("measured before checking --out"))
    monkeypatch.setattr(sao_kernels.cli.layer_report, "report", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as exc:
        cli.main(command + ["--out", str(blocker / "sub")])
    assert exc.value.code == 2
    assert "--out: cannot write results to" in capsys.readouterr().err


def test_a_selection_that_measures_nothing_exits_1_and_says_why(tmp_path, capsys):
    out = tmp_path / "o"
    (out).mkdir()
    (out / "results.json").write_text('{"old": true}')
    code = cli.main(TINY_BENCH + ["--groups", "3", "--ops", "linear_fwd", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "nothing was measured" in err and "3 groups do not divide the larger dimension 32" in err
    assert (out / "results.json").read_text() == '{"old": true}'  # nothing written, nothing mixed
    code = cli.main(TINY_BENCH + ["--ops", "linear_fwd_bwd", "--backends", "bsr", "--out", str(out)])
    assert code == 1 and "bsr is forward-only" in capsys.readouterr().err


def test_small_width_suite_from_the_cli(tmp_path):
    out = tmp_path / "small"
    code = cli.main(
        [
            "bench",
            "--suite",
            "small-width",
            "--features",
            "16",
            "--tokens",
            "4",
            "--groups",
            "2",
            "--mlp-depth",
            "2",
            "--min-run-time",
            "0.003",
            "--max-run-time",
            "0.01",
            "--no-progress",
            "--machine",
            "testbox",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["machine"] == "testbox" and data["meta"]["suite"] == "small-width"
    assert {(r["case"], r["mode"]) for r in data["results"]} == {
        ("linear", "fwd"),
        ("linear", "fwd_bwd"),
        ("mlp2", "fwd"),
        ("mlp2", "train_step"),
    }
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_report_tiny_model(tmp_path):
    out = tmp_path / "rep"
    assert (
        cli.main(
            [
                "report",
                "--model",
                "test_cli:tiny_mlp",
                "--sparsity",
                "0.75",
                "--repeats",
                "3",
                "--min-run-time",
                "0.003",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in data["layers"]] == ["0", "2"] and all(r["groups"] == 4 for r in data["layers"])
    assert {"ms_fwd_iqr", "speedup_fwd_lo", "speedup_fwd_bwd_hi", "rounds_fwd", "flag"} <= set(data["layers"][0])
    assert data["meta"]["load_after"] and data["meta"]["machine"]
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json", "report.md", "report.png"]


def test_version_and_prog(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"], prog="sao-kernels")
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"sao-kernels {sao_kernels.__version__}")
    proc = subprocess.run(
        [sys.executable, "-m", "sao_kernels", "bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m sao_kernels bench")
    for flag in (
        "--ops",
        "--tokens",
        "--features",
        "--groups",
        "--dtypes",
        "--block-sizes",
        "--backends",
        "--out",
        "--suite",
        "--contention",
        "--max-run-time",
        "--flag-spread",
    ):
        assert flag in proc.stdout


def test_report_that_converts_nothing_fails_clearly(tmp_path, capsys):
    """Issue 22: --sparsity 0.7 reaches no 1024x1024 layer; that is an error, not an empty report."""
    out = tmp_path / "rep"
    assert cli.main(["report", "--model", "mlp", "--sparsity", "0.7", "--no-latency", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "report: --sparsity 0.7 converted no layer of mlp (4 Linear / Conv2d layer(s), e.g. 0: sparsity=0.7" in err
    assert "sparsities every layer of it can reach: 0.5, 0.75, 0.875" in err
    assert not (out / "report.json").exists()


def test_report_builtin_mlp_without_latency(tmp_path):
    out = tmp_path / "rep"
    assert (
        cli.main(["report", "--model", "mlp", "--sparsity", "0.75", "--no-latency", "--no-backward", "--out", str(out)])
        == 0
    )
    data = json.loads((out / "report.json").read_text())
    assert len(data["layers"]) == 4 and all(r["groups"] == 4 for r in data["layers"])
    assert all("ms_fwd" not in r for r in data["layers"])
    assert (out / "report.png").exists() and (out / "report.csv").exists() and (out / "report.md").exists()


def test_report_threads_and_reruns_kept(tmp_path, capsys):
    """report --threads sets torch's threads and records them; a re-run keeps the first report."""
    out = tmp_path / "rep"
    argv = ["report", "--model", "test_cli:tiny_mlp", "--sparsity", "0.75", "--repeats", "3"]
    argv += ["--min-run-time", "0.003", "--no-backward", "--out", str(out)]
    before = torch.get_num_threads()
    try:
        assert cli.main(argv + ["--threads", "1"]) == 0
        assert json.loads((out / "report.json").read_text())["meta"]["threads"] == 1
        assert "1 torch threads" in (out / "report.md").read_text()
    finally:
        torch.set_num_threads(before)
    assert cli.main(argv) == 0
    assert json.loads((out / "report.json").read_text())["meta"]["threads"] == 1  # kept
    assert (out / "report-2.json").exists() and f"{out}/report-2.json" in capsys.readouterr().out
