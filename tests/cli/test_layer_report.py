"""sao_kernels.cli.layer_report: per-layer FLOPs (vs FlopCounterMode), parameters, latency with spread, files."""

import csv
import io
import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sao_kernels as sk
from sao_kernels.bench.flop_count import flop_counter
from sao_kernels.bench.timing import TimingSettings
from sao_kernels.bench.twins import densify
from sao_kernels.cli.layer_report import report

FAST = TimingSettings(min_run_time=0.003, max_run_time=0.01, min_rounds=3)


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.convert(model, sparsity=0.75)  # the 128 -> 10 head stays dense: 4 groups do not divide 10
    return model, torch.randn(16, 64)


def test_rows_and_flops_match_flop_counter_mode():
    model, x = _mlp()
    rep = report(model, x, measure_latency=False)
    assert [r["name"] for r in rep.rows] == ["0", "2", "4"]
    assert [r["type"] for r in rep.rows] == ["SAOLinear", "SAOLinear", "Linear"]
    # Forward FLOPs agree exactly with plain FlopCounterMode on the same forward.
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert sum(r["flops_fwd"] for r in rep.rows) == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        densify(model)(x)
    assert sum(r["flops_fwd_dense"] for r in rep.rows) == counter.get_total_flops()
    # And each SAO row is exactly 2*T*m*n/G, its dense twin 2*T*m*n.
    for r, (n, m, G) in zip(rep.rows, [(64, 128, 4), (128, 128, 4), (128, 10, 1)]):
        assert r["flops_fwd"] == 2 * 16 * m * n // G
        assert r["flops_fwd_dense"] == 2 * 16 * m * n
        assert r["groups"] == G and r["sparsity"] == pytest.approx(1 - 1 / G)
    # fwd+bwd: the first layer has no input gradient (x does not require grad).
    assert rep.rows[0]["flops_fwd_bwd"] == 2 * rep.rows[0]["flops_fwd"]
    assert rep.rows[1]["flops_fwd_bwd"] == 3 * rep.rows[1]["flops_fwd"]
    assert rep.rows[1]["flops_fwd_bwd_dense"] == 3 * rep.rows[1]["flops_fwd_dense"]
    assert rep.rows[0]["params"] == 64 * 128 // 4 + 128
    assert rep.rows[0]["params_dense"] == 64 * 128 + 128
    assert rep.totals["flops_fwd"] == sum(r["flops_fwd"] for r in rep.rows)


def test_grouped_conv_backward_flops_are_corrected():
    """torch's convolution_backward formula ignores groups for the weight gradient; the
    report's counter fixes that, so a grouped conv's fwd+bwd is exactly 3x its forward."""
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    for G in (1, 4):
        w = torch.randn(16, 16 // G, 3, 3, requires_grad=True)
        with flop_counter(display=False) as counter:
            torch.nn.functional.conv2d(x, w, padding=1, groups=G)
        fwd = counter.get_total_flops()
        with flop_counter(display=False) as counter:
            torch.nn.functional.conv2d(x, w, padding=1, groups=G).sum().backward()
        assert fwd == 2 * 2 * 16 * (16 // G) * 9 * 64
        assert counter.get_total_flops() == 3 * fwd


def test_conv_model_report():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "re-initialised by SAO": intended
        sk.convert(model, groups=2)
    x = torch.randn(2, 8, 8, 8)
    rep = report(model, x, measure_latency=False)
    for r in rep.rows:
        assert r["type"] == "SAOConv2d"
        assert r["flops_fwd_dense"] == 2 * r["flops_fwd"]
    assert rep.rows[1]["flops_fwd_bwd"] == 3 * rep.rows[1]["flops_fwd"]


def test_latency_and_files(tmp_path):
    model, x = _mlp()
    rep = report(model, x, measure_latency=True, timing=FAST)
    for r in rep.rows:
        for k in ("ms_fwd", "ms_fwd_dense", "ms_fwd_bwd", "ms_fwd_bwd_dense", "ms_fwd_min", "ms_fwd_bwd_dense_min"):
            assert r[k] > 0
        for mode in ("fwd", "fwd_bwd"):
            assert r[f"ms_{mode}_iqr"] >= 0 and r[f"rounds_{mode}"] >= 3
            assert r[f"speedup_{mode}_lo"] <= r[f"speedup_{mode}_hi"]
        assert r["speedup_fwd"] == pytest.approx(r["ms_fwd_dense"] / r["ms_fwd"])
        assert r["ideal_speedup"] == r["groups"] and (r["flag"] == "") == (r["flag_reason"] == "")
    assert rep.rows[2]["type"] == "Linear" and rep.rows[2]["ideal_speedup"] == 1.0
    (tmp_path / "report.png").write_text("a previous run's plot")
    paths = rep.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"meta", "totals", "layers"}
    assert data["layers"][0]["flops_fwd"] == rep.rows[0]["flops_fwd"]
    back = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [row["name"] for row in back] == [r["name"] for r in rep.rows]
    for got, want in zip(back, rep.rows):
        assert int(got["flops_fwd"]) == want["flops_fwd"]
        assert float(got["ms_fwd"]) == pytest.approx(want["ms_fwd"])
        assert float(got["speedup_fwd_bwd_lo"]) == pytest.approx(want["speedup_fwd_bwd_lo"])
        assert got["in_shape"] == "x".join(map(str, want["in_shape"]))
    md = paths["md"].read_text()
    assert "**total**" in md and "SAOLinear" in md
    assert "input activation" in md and "shapes of the tensors each layer saw" in md  # not layer sizes
    assert "| 64 -> 128 |" in md  # the layer size column
    assert "fwd+bwd speed-up [95% CI]" in md and "95% paired bootstrap" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the stale plot was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.json", "report.md", "report.png"]


def test_first_layer_fwd_bwd_needs_no_input_grad(monkeypatch):
    """Latency pairs with FLOPs: the first layer's input needs no gradient in the model, so
    its fwd+bwd step computes none (as FlopCounterMode counted)."""
    import sao_kernels.cli.layer_report as lr

    seen = []
    real = lr.module_steps
    monkeypatch.setattr(lr, "module_steps", lambda *a, **k: (seen.append(k["input_grad"]), real(*a, **k))[1])
    model, x = _mlp()
    report(model, x, timing=FAST)
    assert seen == [False, False, True, True, True, True]  # (SAO, dense) per layer


def test_plot_without_latency_and_repeats_validation(tmp_path):
    model, x = _mlp()
    rep = report(model, x, measure_latency=False)
    rep.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "fwd speed-up" not in rep.to_markdown()
    with pytest.raises(ValueError, match="repeats must be an integer >= 3"):
        report(model, x, repeats=2)


def test_forward_only_report_has_no_fwd_bwd_numbers(tmp_path, monkeypatch):
    """Issue 22: backward=False left forward numbers in the fwd+bwd columns and drew fwd+bwd bars."""
    import matplotlib.axes

    model, x = _mlp()
    rep = report(model, x, measure_latency=False, backward=False)
    assert all(r["flops_fwd_bwd"] is None and r["flops_fwd_bwd_dense"] is None for r in rep.rows)
    assert rep.totals["flops_fwd_bwd"] is None and rep.meta["backward"] is False
    md = rep.to_markdown()
    assert "fwd+bwd" not in md.split("| layer |")[1] and "Forward only (backward=False)" in md
    assert ",," in rep.to_csv().splitlines()[1]  # empty fwd+bwd cells
    bars = []
    original = matplotlib.axes.Axes.bar
    monkeypatch.setattr(
        matplotlib.axes.Axes, "bar", lambda self, *a, **k: bars.append(k.get("color")) or original(self, *a, **k)
    )
    rep.plot(tmp_path / "fwd.png")
    modes = ("C0", "C1")  # (C2 / C7: the whole-model panel's converted / unconverted parts)
    assert [c for c in bars if c in modes] == ["C0"]  # forward bars only
    assert bars.count("C2") == 2  # dense and SAO, forward only
    report(model, x, measure_latency=False).plot(tmp_path / "both.png")
    assert [c for c in bars if c in modes] == ["C0", "C0", "C1"] and bars.count("C2") == 2 + 4


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        report(lambda x: x, torch.randn(2, 2))


def test_top_level_report_api():
    model, x = _mlp()
    rep = sk.report(model, x, measure_latency=False)
    assert isinstance(rep, sk.Report) and len(rep.rows) == 3


def test_api_report_records_machine_load_and_threads(monkeypatch):
    """Issue 24: reports made through the API printed an empty machine label and "Load average
    None", so the busy-machine note never fired; every report records them now."""
    import sao_kernels.bench.machine as machine

    loads = iter([[9.0, 8.0, 7.0], [9.5, 8.1, 7.0]])
    monkeypatch.setattr(machine, "load_average", lambda: next(loads))
    monkeypatch.setattr(machine, "usable_cores", lambda: [0, 1])
    model, x = _mlp()
    rep = report(model, x, timing=FAST, backward=False)
    m = rep.meta
    assert m["load_before"] == [9.0, 8.0, 7.0] and m["load_after"] == [9.5, 8.1, 7.0]
    assert m["threads"] == torch.get_num_threads() and m["machine"].endswith("-2c")
    md = rep.to_markdown()
    assert f"Machine label: `{m['machine']}`" in md and "Load average (1, 5, 15 min) before the run: [9.0" in md
    assert "The machine was busy" in md and "slow-median" in md  # the note fires, the flag is explained
