"""benchmarks/pretrained_study.py --quick: the whole study's code path on tiny settings."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pretrained_study.py"


def test_pretrained_study_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("pretrained_*.json")
    data = json.loads(json_path.read_text())
    groups = data["settings"]["groups"]
    variants = ["dense", "keep", "keep+orth", "random-kept", "sao-reinit", "magnitude"]
    assert [t["name"] for t in data["tasks"]] == ["digits-mlp", "histogram-transformer"]
    for task in data["tasks"]:
        assert [(r["groups"], r["variant"]) for r in task["accuracy"]] == [(G, v) for G in groups for v in variants]
        for r in task["accuracy"]:
            assert len(r["acc0"]) == len(r["accN"]) == len(data["settings"]["seeds"])
            assert all(0.0 <= a <= 1.0 for a in r["acc0"] + r["accN"])
        dense = [r for r in task["accuracy"] if r["variant"] == "dense"]
        assert all(r["acc0"] == [task["dense_acc"]] * len(r["acc0"]) for r in dense)
        assert len(task["energy"]) == len(groups) * len({r["layer"] for r in task["energy"]})
        for r in task["energy"]:
            # the search keeps at least a random partition's energy, and no SAO mask beats
            # the unstructured top-1/G entries
            assert r["random_mean"] <= r["keep"] <= r["magnitude"] + 1e-12
    md = json_path.with_suffix(".md").read_text()
    assert "## histogram-transformer" in md and "Retained energy" in md and "| 2 | keep |" in md
