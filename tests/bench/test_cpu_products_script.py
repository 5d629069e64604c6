"""benchmarks/bench_cpu_products.py on tiny shapes: every (product, engine) row, the bad-shape refusal."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_cpu_products.py"


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_every_product_and_engine_gets_a_row(tmp_path):
    proc = run("--shapes", "64x16x2", "96x40x3", "--min-run-time", "0.01", "--out", str(tmp_path), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("cpu_products_*.json")
    rows = json.loads(json_path.read_text())["results"]
    got = [(r["width"], r["tokens"], r["groups"], r["mode"], r["backend"]) for r in rows]
    want = [
        (f, t, g, p, e)
        for f, t, g in ((64, 16, 2), (96, 40, 3))
        for p in ("forward", "grad_input", "grad_values")
        for e in ("auto", "bmm")
    ]
    assert got == want
    assert all(r["speedup"] > 0 and r["ms"] > 0 for r in rows)


def test_a_bad_shape_is_refused(tmp_path):
    proc = run("--shapes", "100x8x3", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "G must divide F" in proc.stderr
