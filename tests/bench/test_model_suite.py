"""``bench --suite models``: whole models dense vs converted, run in --quick mode."""

from __future__ import annotations

import json

import pytest
import torch

from sao_kernels import cli
from sao_kernels.bench import model_suite


def test_models_suite_quick_from_the_cli(tmp_path):
    out = tmp_path / "models"
    argv = ["bench", "--suite", "models", "--quick", "--models", "bert,gpt2,llama,vit,resnet", "--groups", "2,4"]
    argv += ["--min-run-time", "0.002", "--max-run-time", "0.01", "--no-progress", "--machine", "testbox"]
    assert cli.main(argv + ["--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["suite"] == "models" and data["meta"]["size"]["hidden"] == model_suite.QUICK.hidden
    rows = data["results"]
    converted = {r["model"] for r in rows}
    # every model converts something except GPT-2 while transformers' Conv1D is not converted
    assert {"bert", "llama", "vit", "resnet"} <= converted
    assert converted | {s["what"].split()[0] for s in data["skipped"]} == set(model_suite.MODELS)
    modes = {"train_step", "infer_b1", f"infer_b{model_suite.QUICK.infer_batch}"}
    for name in converted:
        assert {(r["mode"], r["groups"]) for r in rows if r["model"] == name} == {(m, G) for m in modes for G in (2, 4)}
    for r in rows:
        assert 0 < r["converted"] <= r["candidates"]
        assert r["params"] < r["params_dense"] and r["flops"] < r["flops_dense"]
        assert r["ms"] > 0 and r["ms_dense"] > 0 and r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"]
    # more groups: fewer parameters and FLOPs
    for name in converted:
        by_g = {r["groups"]: r for r in rows if r["model"] == name and r["mode"] == "train_step"}
        assert by_g[4]["params"] < by_g[2]["params"] and by_g[4]["flops"] < by_g[2]["flops"]
    md = (out / "results.md").read_text()
    assert "Whole models, SAO vs dense" in md and "| bert | train_step |" in md
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "models", "--features", "64"], "--features does not apply to --suite models"),
        (["--quick"], "--quick does not apply to --suite sweep"),
        (["--suite", "small-width", "--models", "bert"], "--models does not apply to --suite small-width"),
        (["--suite", "models", "--models", "bert,t5"], "not allowed"),
        (["--suite", "tiers", "--frozen-weights"], "--frozen-weights does not apply to --suite tiers"),
    ],
)
def test_models_suite_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_resnet_shapes_and_build_errors():
    model = model_suite.resnet((8, 16), classes=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="not in the suite"):
        model_suite.build("t5", model_suite.QUICK)


def test_models_suite_with_frozen_weights(tmp_path):
    """--frozen-weights: the inference modes run inside sk.frozen_weights(), said in the files;
    the cache is empty again afterwards."""
    import sao_kernels as sk

    out = tmp_path / "models"
    argv = ["bench", "--suite", "models", "--quick", "--models", "bert", "--groups", "2", "--frozen-weights"]
    argv += ["--min-run-time", "0.002", "--max-run-time", "0.01", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["frozen_weights"] is True
    assert {r["mode"] for r in data["results"]} == {"train_step", "infer_b1", f"infer_b{model_suite.QUICK.infer_batch}"}
    assert "ran inside sao_kernels.frozen_weights()" in (out / "results.md").read_text()
    assert sk.weight_cache_stats()["entries"] == 0
