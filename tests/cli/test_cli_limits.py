"""The command line at its limits: out-of-range flags, selections that cannot fit in memory,
and --model factories that give no usable model.  Each gets a clear message and a non-zero
exit before anything is allocated, never a crash, a raw traceback or exit 0 without files.
Cases that could crash the process run in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from sao_kernels import cli
from sao_kernels.bench import memory, sweep
from sao_kernels.cli import bench as cli_bench

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*argv, cwd):
    """``python -m sao_kernels ARGV`` in a subprocess that can import this module's factories."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(pathlib.Path(__file__).parent)]))
    return subprocess.run(
        [sys.executable, "-m", "sao_kernels", *argv], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


# ------------------------------------------------------------------ factories (--model)
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))


def frozen_mlp():
    model = _mlp()
    model.requires_grad_(False)
    return model, torch.randn(4, 16)


def first_layer_frozen():
    model = _mlp()
    model[0].requires_grad_(False)
    return model, torch.randn(4, 16)


def no_layers():
    return nn.Sequential(nn.Tanh(), nn.ReLU()), torch.randn(4, 16)


def meta_model():
    with torch.device("meta"):
        model = _mlp()
    return model, torch.randn(4, 16)


def meta_inputs():
    return _mlp(), torch.randn(4, 16, device="meta")


def exits():
    sys.exit(3)


def exits_zero():
    sys.exit(0)


# ----------------------------------------------------------------------------- bench
def test_huge_thread_count_is_a_usage_error_not_a_crash(tmp_path):
    proc = run_cli("bench", "--threads", "100000", "--tokens", "8", "--features", "32", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]  # was SIGSEGV (-11) in OpenMP's thread creation
    assert "--threads: expected an integer in [1, " in proc.stderr and "logical CPUs" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "sao_bench").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokens", "99999999999"], "--tokens: expected comma-separated integers in [1, 16777216]"),
        (["--features", "16,1000000000"], "--features: expected comma-separated integers in [1, 131072]"),
        (["--groups", "2,9999999"], "--groups"),
        (["--block-sizes", "999999999"], "--block-sizes"),
        (["--conv-channels", "99999999"], "--conv-channels: expected an integer in [1, 65536]"),
        (["--conv-size", "100000"], "--conv-size"),
        (["--conv-batch", "10000000"], "--conv-batch"),
        (["--suite", "small-width", "--mlp-depth", "10000000"], "--mlp-depth: expected an integer in [0, 10000]"),
        (["--threads", "-1"], "--threads"),
    ],
)
def test_out_of_range_flags_are_usage_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_bench, "_run_sweep", lambda *a, **k: pytest.fail("measured despite a bad flag"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv], prog="sao-kernels")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_report_repeats_is_bounded(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--repeats", "10000000000"], prog="sao-kernels")
    assert exc.value.code == 2 and "--repeats: expected an integer in [3, 100000]" in capsys.readouterr().err


def test_a_selection_too_large_for_memory_exits_2_before_allocating(tmp_path):
    # in range flag by flag, but 2**24 tokens x 8192 features is 512 GiB per activation: this
    # used to end in the allocator's traceback (or the OOM killer)
    proc = run_cli(
        "bench", "--device", "cpu", "--tokens", "16777216", "--features", "8192", "--no-progress", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "this selection needs about" in proc.stderr and "GiB of host memory" in proc.stderr
    assert "limit of" in proc.stderr and "MemAvailable" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("sao_bench/*"))


def test_the_memory_check_runs_before_the_sweep(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (4096, "a test's 4 KiB"))
    monkeypatch.setattr(cli_bench, "_run_sweep", lambda *a, **k: pytest.fail("measured despite the memory limit"))
    argv = ["bench", "--device", "cpu", "--tokens", "8", "--features", "32", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path / "o")], prog="sao-kernels")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "this selection needs about" in err
    assert "more than the limit of 3,072 B (75% of the 4,096 B a test's 4 KiB)" in err
    # the library entry point checks too
    cfg = sweep.SweepConfig(tokens=(8,), features=(32,), groups=(2,), ops=("linear_fwd",), backends=("torch",))
    with pytest.raises(memory.MemoryLimitError, match="this sweep needs about"):
        sweep.run_sweep(cfg, progress=False)


@pytest.mark.parametrize(
    "fields",
    [
        dict(ops=("linear_fwd",), backends=("torch", "bsr")),
        dict(ops=("linear_fwd_bwd",), backends=("torch", "masked_dense"), groups=(1, 2, 4)),
        dict(ops=("conv2d_fwd_bwd",), backends=("torch", "masked_dense"), conv_channels=64, conv_size=16),
    ],
)
def test_the_estimate_bounds_the_measured_peak(fields, tmp_path):
    """The peak resident memory the sweep adds (after the same sweep on tiny shapes loaded
    the libraries) stays under the estimate, and within 8x of it (so it is not vacuous).
    At most 10 rounds, so that the timing's own memory (a bootstrap over up to 1000 rounds,
    which the estimate counts) does not hide the tensors'."""
    cfg = dict(tokens=(2048,), features=(1024,), groups=(2, 4), conv_batch=4, min_run_time=0.002, max_run_time=0.01)
    cfg.update(fields)
    code = f"""
import dataclasses, json
import torch
from sao_kernels.bench import memory, sweep
class Config(sweep.SweepConfig):
    def timing(self):
        return dataclasses.replace(super().timing(), min_rounds=3, max_rounds=10)
cfg = Config(**{cfg!r})
estimate = memory.sweep_bytes(cfg, sweep.plan(cfg)[0])["cpu"]
# the same ops on tiny shapes first: libraries and their workspaces are loaded once per process
tiny = Config(**dict({cfg!r}, tokens=(8,), features=(32,), conv_channels=4, conv_size=4))
sweep.run_sweep(tiny, progress=False)
def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
except OSError:
    pass  # then VmHWM counts since exec: the tiny sweep's peak is far below the real one's
rss = status_kib("VmRSS") * 1024
sweep.run_sweep(cfg, progress=False)
peak = status_kib("VmHWM") * 1024
print(json.dumps(dict(estimate=estimate, added=peak - rss)))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < got["added"] <= got["estimate"] <= 8 * got["added"], got


# ---------------------------------------------------------------------------- report
def report_argv(model, out):
    return ["report", "--model", f"test_cli_limits:{model}", "--repeats", "3", "--min-run-time", "0.002"] + [
        "--out",
        str(out),
    ]


def test_report_of_a_frozen_model_is_forward_only_and_says_so(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(report_argv("frozen_mlp", out), prog="sao-kernels") == 0
    assert "note: forward-only report: the model's output does not require grad" in capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())
    assert "frozen" in data["meta"]["forward_only"]
    assert [r["name"] for r in data["layers"]] == ["0", "2"]
    assert all(r["ms_fwd"] > 0 and "ms_fwd_bwd" not in r for r in data["layers"])
    assert all(r["flops_fwd_bwd"] is None for r in data["layers"])  # no backward: not counted
    assert "**Forward only**" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json", "report.md", "report.png"]


def test_report_with_a_frozen_first_layer(tmp_path):
    out = tmp_path / "rep"
    assert cli.main(report_argv("first_layer_frozen", out), prog="sao-kernels") == 0
    first, second = json.loads((out / "report.json").read_text())["layers"]
    # the frozen first layer (input needs no grad) has no backward; the second one has
    assert first["ms_fwd"] > 0 and first.get("ms_fwd_bwd") is None
    assert second["ms_fwd_bwd"] > 0 and second["ms_fwd_bwd_dense"] > 0
    # its dense twin is frozen too: the same (zero) backward FLOPs beyond the forward
    assert first["flops_fwd_bwd"] == first["flops_fwd"] and first["flops_fwd_bwd_dense"] == first["flops_fwd_dense"]


def test_report_of_a_model_without_layers_exits_1(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(report_argv("no_layers", out), prog="sao-kernels") == 1
    err = capsys.readouterr().err
    assert "nothing to report: test_cli_limits:no_layers has no Linear / Conv2d layer" in err
    assert not list(out.glob("*"))


@pytest.mark.parametrize(
    "model, message",
    [
        ("meta_model", "its parameters / buffers (0.weight, 0.bias, 2.weight, ...) are on the meta device"),
        ("meta_inputs", "its example inputs are on the meta device"),
    ],
)
def test_report_of_a_meta_model_is_a_usage_error(model, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(report_argv(model, tmp_path / "rep"), prog="sao-kernels")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("factory, code", [("exits", 3), ("exits_zero", 0)])
def test_a_factory_that_calls_sys_exit_is_named(factory, code, tmp_path):
    proc = run_cli(*report_argv(factory, tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # was its own code, 0 with no files
    assert f"model 'test_cli_limits:{factory}': {factory}() called sys.exit({code})" in proc.stderr
    assert "Traceback" not in proc.stderr
