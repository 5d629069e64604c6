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
    headline = {s["key"] for s in data["plan"]["settings"] if s["headline"]}
    assert headline and budget["steps"] != data["plan"]["plateau_steps"]
    for key, steps in budget["setting_steps"].items():
        assert steps == (data["plan"]["plateau_steps"] if key in headline else budget["steps"])
    runs = [r for r in data["runs"] if "error" not in r]
    assert runs and all(r["steps"] == budget["setting_steps"][r["setting"]] for r in runs)
    for r in runs:
        assert 0.0 <= r["test_acc"] <= 1.0 and len(r["curve"]) >= 2
        if not r["diverged"]:
            # two x0.1 drops (at 50 % and 75 % of the steps) have happened by the last logged step
            assert r["curve"][-1]["lr"] == pytest.approx(r["lr"] * 0.01)


def _ladder_neighbours(lr):
    return {round(lr * f, 12) for f in (3.0, 10 / 3, 1 / 3, 0.3)}


def test_lr_protocol(quick):
    _, data = quick
    plan = data["plan"]
    settings = {s["key"]: s for s in plan["settings"]}
    runs = [r for r in data["runs"] if "error" not in r]
    tune = plan["tune_seed"]
    for key, c in data["choice"].items():
        s = settings[key]
        seeds = s["seeds"] if s["seeds"] is not None else plan["seeds"]
        assert tune not in seeds  # the lr is chosen on a seed that is never reported
        for method in s["tuned"]:
            grid = [r for r in runs if r["setting"] == key and r["method"] == method and r.get("role") == "grid"]
            assert {r["seed"] for r in grid} == {tune}
            lrs = sorted(r["lr"] for r in grid)
            extra = [lr for lr in lrs if lr not in s["lr_grid"]]
            assert set(s["lr_grid"]) <= set(lrs) and len(extra) <= plan["extend_edges"]
            for lr in extra:  # an extension is one ladder step beyond the lrs tried before it
                assert round(lr, 12) in set().union(*(_ladder_neighbours(x) for x in lrs if x != lr))
            best = max(grid, key=lambda r: (r["val_acc"], -r["val_loss"]))["lr"]  # validation, never test
            assert c["best"][method] == best
            if best in (lrs[0], lrs[-1]):  # still at an edge only when the extensions are used up
                assert len(extra) == plan["extend_edges"]
            wanted = {best}
            if s["shared_also"] is None or method in s["shared_also"]:
                wanted.add(c["shared"])
            for lr in wanted:
                got = sorted(
                    r["seed"]
                    for r in runs
                    if r["setting"] == key and r["method"] == method and r["lr"] == lr and r.get("role") != "grid"
                )
                assert got == sorted(seeds), (key, method, lr)
        for method in s["untuned"]:
            got = {(r["lr"], r["seed"]) for r in runs if r["setting"] == key and r["method"] == method}
            assert got == {(c["shared"], seed) for seed in seeds}
        if s["shared_lr"] is not None:
            assert c["shared"] == s["shared_lr"]
        elif s["tuned"]:
            assert c["shared"] == c["best"][s["baseline"]]


def test_claims_table(quick):
    out, data = quick
    md = (out / "results.md").read_text()
    assert "## The claims, with paired 95 % intervals" in md
    rows = [line for line in md.splitlines() if line.startswith("| depth 1000, tanh: SAO trains as well as dense")]
    assert rows and all(any(v in row for v in ("confirm", "contradict", "cannot tell")) for row in rows)
    assert "± 0.0 (nan) n=1" not in md and "± n/a" in md  # one seed has no spread


def test_budget_only_prints_the_cost(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--budget-only", "--workers", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "predicted cost of the full run (worst case):" in proc.stdout and "CPU-minutes" in proc.stdout
    assert not (tmp_path / "results.json").exists()


def test_tiles_and_measures(quick):
    _, data = quick
    assert any(r["method"] == "sao:b32" and r["sparsity"] == 0.75 and "error" not in r for r in data["runs"])
    measures = {}
    for m in data["measures"]:
        measures.setdefault(m["kind"], []).append(m)
    conn = {(m["sparsity"], m["block"]): m["result"] for m in measures["tile-connectivity"]}
    # b=32 cannot tile a group side of 16 (sparsity 0.875, G=8): recorded, not silently dropped
    assert "block_size" in conn[(0.875, 32)]["error"]
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
