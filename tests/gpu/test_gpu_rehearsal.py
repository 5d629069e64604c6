"""benchmarks/gpu/run.sh --rehearsal: every stage of the GPU script on the CPU (Triton's
interpreter, tiny shapes), so that the first GPU minutes go to timing, not to Python errors.
About a minute on 2 cores (the interpreter's ~0.1 s per kernel launch dominates)."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGES = [
    "env",
    "build",
    "tests",
    "paths",
    "bench_bf16_64",
    "bench_bf16_128",
    "e2e_mlp",
    "bench_fp32_ieee_64",
    "bench_fp32_tf32_64",
    "bench_fp32_ieee_128",
    "bench_fp32_tf32_128",
]
BENCH_FILES = ("results.json", "results.csv", "results.md", "speedup.png")


def test_the_rehearsal_runs_every_stage_and_writes_its_outputs(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script itself must export it before Python starts
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--rehearsal", "out"],  # relative: the caller's cwd
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.tar.gz", "run.log", "summary.txt"]
    work = tmp_path / "work"
    with tarfile.open(out / "results.tar.gz") as tar:
        tar.extractall(work, filter="data")
    rows = [line.split("\t") for line in (work / "stages.tsv").read_text().splitlines()[1:]]
    assert [(name, status) for name, status, _ in rows] == [(name, "ok") for name in STAGES]
    for name in STAGES:
        assert (work / f"{name}.log").stat().st_size > 0, name
        assert "Traceback" not in (work / f"{name}.log").read_text(), name

    assert "no CUDA device: a rehearsal on the CPU" in (work / "env.log").read_text()
    assert "tests collected" in (work / "tests.log").read_text()
    paths = json.loads((work / "paths" / "paths.json").read_text())
    assert {r["path"] for r in paths["rows"]} == {"fused", "permute", "fused, split_k=1"}
    assert (work / "paths" / "paths.csv").read_text().startswith("dtype,precision,T,")
    for name in STAGES:
        if name.startswith("bench_"):
            assert sorted(p.name for p in (work / name).iterdir()) == sorted(BENCH_FILES), name
            data = json.loads((work / name / "results.json").read_text())
            # the Triton kernels ran (in the interpreter) next to the composite and, in bf16, the
            # torch._grouped_mm baseline (torch runs it on CPU too), with roofline columns
            backends = {"triton", "torch"} | ({"grouped_mm"} if "bf16" in name else set())
            assert {r["backend"] for r in data["results"]} == backends, name
            assert all(r["roofline_fraction"] > 0 for r in data["results"]), name
            reasons = {s["reason"] for s in data["skipped"]}
            assert "bsr is forward-only (no backward products)" in reasons, name  # skipped, with why
            if "bf16" in name:  # torch's CPU BSR product has no bf16 (on CUDA it is Triton's)
                assert any("not implemented for 'BFloat16'" in reason for reason in reasons), name
    (e2e_json,) = (work / "e2e").glob("e2e_mlp_cpu_*.json")
    e2e = json.loads(e2e_json.read_text())
    assert {(r["backend"], r["mode"], r["groups"]) for r in e2e["results"]} == {("triton", "train_step", 2)}

    summary = (out / "summary.txt").read_text()
    assert "launcher paths" in summary and "bench_bf16_64: 10 rows" in summary
    assert "linear_fwd_bwd T=16 128^2 G=2 b=16 triton" in summary
