"""The paper reproduction's --quick mode: the full code path (pilot, budget, lr search, seeds,
measures, tables, plots, replot) on tiny settings, checked against what the protocol promises."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "paper" / "reproduce.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workers", "2", "--out", str(out), "--commit", "test-commit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_outputs_and_replot(quick):
    out, data = quick
    for name in ("learning_curves.png", "jacobian_spread.png", "connectivity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "results.md").read_text()
    for heading in (
        "The reference setting, as run",
        "Budget arithmetic",
        "Vanilla tanh MLPs",
        "Vanilla relu MLPs",
        "Tile partitions",
        "Vanilla CNN",
        "Learning-rate search",
        "Did the runs converge",
        "Gradient at init",
        "Isometry at init",
        "Jacobian spread",
        "Connectivity",
        "Orthogonality error",
    ):
        assert heading in md, heading
    assert data["meta"]["quick"] is True and data["meta"]["commit"] == "test-commit"
    (out / "results.md").unlink()
    (out / "connectivity.png").unlink()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--replot", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "results.md").read_text() == md
    assert (out / "connectivity.png").is_file()


def test_budget_and_schedule(quick):
    _, data = quick
    budget = data["budget"]
    assert 1 <= budget["steps"] <= budget["cap"]
    runs = [r for r in data["runs"] if "error" not in r]
    assert runs and all(r["steps"] == budget["steps"] for r in runs)
    for r in runs:
        assert 0.0 <= r["test_acc"] <= 1.0 and len(r["curve"]) >= 2
        if not r["diverged"]:
            # two x0.1 drops (at 50 % and 75 % of the steps) have happened by the last logged step
            assert r["curve"][-1]["lr"] == pytest.approx(r["lr"] * 0.01)


def test_lr_protocol(quick):
    _, data = quick
    settings = {s["key"]: s for s in data["plan"]["settings"]}
    runs = [r for r in data["runs"] if "error" not in r]
    for key, c in data["choice"].items():
        s = settings[key]
        seeds = s["seeds"] if s["seeds"] is not None else data["plan"]["seeds"]
        for method in s["tuned"]:
            grid = [r for r in runs if r["setting"] == key and r["method"] == method and r.get("role") == "grid"]
            assert sorted(r["lr"] for r in grid) == sorted(s["lr_grid"])
            best = max(grid, key=lambda r: (r["val_acc"], -r["val_loss"]))["lr"]  # validation, never test
            assert c["best"][method] == best
            for lr in {best, c["shared"]}:
                got = sorted(r["seed"] for r in runs if r["setting"] == key and r["method"] == method and r["lr"] == lr)
                assert got == sorted(seeds), (key, method, lr)
        for method in s["untuned"]:
            got = {(r["lr"], r["seed"]) for r in runs if r["setting"] == key and r["method"] == method}
            assert got == {(c["shared"], seed) for seed in seeds}
        if s["shared_lr"] is not None:
            assert c["shared"] == s["shared_lr"]
        elif s["tuned"]:
            assert c["shared"] == c["best"][s["baseline"]]


def test_tiles_and_measures(quick):
    _, data = quick
    # b=32 cannot tile a group side of 16 (sparsity 0.875, G=8): recorded, not run, not silently dropped
    errors = [p for p in data["pilots"] if p["method"] == "sao:b32" and p["sparsity"] == 0.875]
    assert errors and all("block_size" in p["error"] for p in errors)
    assert any(r["method"] == "sao:b32" and r["sparsity"] == 0.75 and "error" not in r for r in data["runs"])
    measures = {}
    for m in data["measures"]:
        measures.setdefault(m["kind"], []).append(m)
    conn = {(m["sparsity"], m["block"]): m["result"] for m in measures["tile-connectivity"]}
    assert "error" in conn[(0.875, 32)]
    # a tile as wide as the group side turns each layer into a permutation of whole groups:
    # the stack splits into disjoint chains and never connects every input to every output
    assert conn[(0.875, 16)]["full_depths"] == [None] * len(conn[(0.875, 16)]["full_depths"])
    assert conn[(0.875, 1)]["full_depths"][0] is not None
    assert abs(conn[(0.875, 1)]["fractions"][0] - 0.125) < 1e-9
    iso = [r for m in measures["isometry"] for r in m["result"] if r["act"] == "linear" and r["init"] in ("sao", "eoi")]
    assert iso and all(abs(r["min"] - 1) < 1e-9 and abs(r["max"] - 1) < 1e-9 for r in iso)
    spread = [r for m in measures["spread"] for r in m["result"] if "error" not in r]
    assert spread and all(math.isfinite(r["rms"]) for r in spread)
    pilots = [p for p in data["pilots"] if "error" not in p and p["arch"] == "mlp"]
    assert all(p["step_seconds"] > 0 and 0 <= p["hidden_layers_with_grad"] <= p["hidden_layers"] for p in pilots)
