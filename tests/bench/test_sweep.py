"""sao_kernels.bench.sweep and .candidates: rows with spread, skips with reasons, result files."""

import csv
import io
import json

import pytest
import torch

from sao_kernels.bench import candidates, sweep
from sao_kernels.bench.machine import machine_meta
from sao_kernels.bench.results import TIMING_FIELDS

TINY = dict(
    tokens=(8,), features=(32,), groups=(1, 2, 4), conv_batch=1, conv_channels=16, conv_size=6, min_run_time=0.005
)
SPREAD = TIMING_FIELDS  # every row carries the spread, the interval and the flags


@pytest.fixture(scope="module")
def tiny():
    cfg = sweep.SweepConfig(**TINY, backends=("torch", "masked_dense", "bsr"))
    return sweep.run_sweep(cfg, progress=False)


def test_rows_cover_every_op_and_baseline_with_spread(tiny):
    rows = tiny.rows
    assert {r["op"] for r in rows} == set(sweep.OPS)
    assert {r["op"] for r in rows if r["backend"] == "bsr"} == {"linear_fwd"}  # BSR is forward-only
    assert {r["backend"] for r in rows if r["op"] == "linear_fwd_bwd"} == {"torch", "masked_dense"}
    for r in rows:
        assert set(SPREAD) <= set(r)
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["contention"] is False
        assert 0 < r["ms_min"] <= r["ms"] and 0 < r["ms_dense_min"] <= r["ms_dense"]
        assert r["ms_iqr"] >= 0 and r["ms_dense_iqr"] >= 0 and r["rounds"] >= 5
        assert r["speedup"] == pytest.approx(r["ms_dense"] / r["ms"])
        assert r["speedup_lo"] <= r["speedup_hi"]
        assert r["ideal_speedup"] == (1.0 if r["backend"] == "masked_dense" else r["groups"])
        assert (r["flag"] == "") == (r["flag_reason"] == "")
        assert "floor_ms" not in r  # the roofline is a CUDA-only column
    # Every row of one job shares the dense samples of the same interleaved rounds.
    fwd = [r for r in rows if r["op"] == "linear_fwd"]
    assert len({r["ms_dense"] for r in fwd}) == 1 and len({r["rounds"] for r in fwd}) == 1
    # What could not run is reported with its reason, never silently dropped.
    reasons = {s["reason"] for s in tiny.skipped}
    assert "bsr is forward-only (no backward products)" in reasons
    assert any("has no convolution" in r for r in reasons)


def test_group_counts_that_do_not_divide_are_skipped_with_the_reason():
    cfg = sweep.SweepConfig(**dict(TINY, groups=(3, 2)), ops=("linear_fwd",), backends=("torch",))
    result = sweep.run_sweep(cfg, progress=False)
    assert [r["groups"] for r in result.rows] == [2]
    assert len(result.skipped) == 1 and "G=3" in result.skipped[0]["reason"] and "32" in result.skipped[0]["reason"]


def test_nothing_to_measure_fails_before_timing(monkeypatch):
    monkeypatch.setattr(sweep, "interleave", lambda *a, **k: pytest.fail("timed although nothing can run"))
    cfg = sweep.SweepConfig(**dict(TINY, groups=(3,)), ops=("linear_fwd",), backends=("torch",))
    with pytest.raises(sweep.NothingMeasured, match="all 1 selected combinations were skipped") as exc:
        sweep.run_sweep(cfg, progress=False)
    assert "3 groups do not divide" in exc.value.skipped[0]["reason"]
    cfg = sweep.SweepConfig(**TINY, ops=("linear_fwd_bwd", "conv2d_fwd"), backends=("bsr",))
    with pytest.raises(sweep.NothingMeasured):
        sweep.run_sweep(cfg, progress=False)


def test_a_backend_that_refuses_the_inputs_becomes_a_skip(monkeypatch):
    real = candidates.linear_candidate

    def refusing(op, backend, *args):
        fn = real(op, backend, *args)
        if backend == "native":

            def refuse():
                raise TypeError("linear: the native backend runs float32, bfloat16; got float16\nmore detail")

            return refuse
        return fn

    monkeypatch.setattr(sweep, "linear_candidate", refusing)
    cfg = sweep.SweepConfig(**TINY, ops=("linear_fwd",), backends=("native", "torch"))
    result = sweep.run_sweep(cfg, progress=False)
    assert {r["backend"] for r in result.rows} == {"torch"}
    assert {s["reason"] for s in result.skipped} == {
        "TypeError: linear: the native backend runs float32, bfloat16; got float16"
    }
    cfg = sweep.SweepConfig(**TINY, ops=("linear_fwd",), backends=("native",))
    with pytest.raises(sweep.NothingMeasured):
        sweep.run_sweep(cfg, progress=False)


def test_candidate_table_raises_skip_candidate(monkeypatch):
    from sao_kernels.init import sao_blocks

    x = torch.randn(4, 16)
    blocks = sao_blocks(16, 16, groups=2, smaller_groups="contiguous")
    with pytest.raises(candidates.SkipCandidate, match="forward-only"):
        candidates.linear_candidate("linear_fwd_bwd", "bsr", x, x, blocks, torch.zeros(16))
    with pytest.raises(candidates.SkipCandidate, match="bf16 only"):
        candidates.linear_candidate("linear_fwd", "grouped_mm", x, x, blocks, torch.zeros(16))
    # triton on CPU tensors is the interpreter: timed only when asked for (a rehearsal of the GPU run)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "Triton's interpreter" in candidates.static_skip_reason("linear_fwd", "triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert candidates.static_skip_reason("linear_fwd", "triton", "cpu") is None
    assert candidates.static_skip_reason("linear_fwd", "torch", "cpu") is None
    fn = candidates.linear_candidate("linear_fwd", "torch", x, x, blocks, torch.zeros(16))
    torch.testing.assert_close(fn(), x @ blocks.to_dense().t())


@pytest.mark.parametrize("block_size", [1, 4])
def test_grouped_mm_baseline_computes_the_sao_product(block_size):
    """The torch._grouped_mm baseline (its permuted copy, grouped product and scatter) gives the
    layer's output; torch runs it on CPU too, so this is checked before any GPU time."""
    from sao_kernels.init import sao_blocks

    gen = torch.Generator().manual_seed(0)
    blocks = sao_blocks(32, 32, groups=4, block_size=block_size, generator=gen, dtype=torch.bfloat16)
    _, ii, oi, _ = blocks.op_args()
    assert ii is not None and oi is not None  # both index maps exercised
    x = torch.randn(8, 32, generator=gen).bfloat16()
    bias = torch.randn(32, generator=gen).bfloat16()
    got = candidates.linear_candidate("linear_fwd", "grouped_mm", x, x, blocks, bias)()
    want = x.double() @ blocks.to_dense().double().t() + bias.double()
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0.02)


def test_progress_ticks_after_each_configuration_is_measured(monkeypatch):
    events = []

    class Bar:
        def __init__(self, total, **kwargs):
            events.append(("total", total))

        def set_postfix_str(self, text):
            pass

        def update(self, n):
            events.append("tick")

        def close(self):
            events.append("close")

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    real = sweep._measure_job
    monkeypatch.setattr(sweep, "_measure_job", lambda *a, **k: (events.append("measured"), real(*a, **k))[1])
    cfg = sweep.SweepConfig(**TINY, ops=("linear_fwd", "linear_grad_input"), backends=("torch",))
    sweep.run_sweep(cfg, progress=True)
    assert events == [("total", 2), "measured", "tick", "measured", "tick", "close"]


def test_write_results_files(tiny, tmp_path):
    meta = dict(machine_meta("cpu"), machine="test-machine", load_before=[0.1, 0.1, 0.1], load_after=[0.2, 0.1, 0.1])
    (tmp_path / "speedup.png").write_text("a previous run's plot")
    paths = sweep.write_sweep_results(tiny, meta, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"meta", "results", "skipped"}
    assert data["meta"]["machine"] == "test-machine" and data["meta"]["load_after"] == [0.2, 0.1, 0.1]
    assert data["results"] == json.loads(json.dumps(tiny.rows))
    assert all(set(SPREAD) <= set(r) for r in data["results"])
    back = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(back) == len(tiny.rows) and set(SPREAD) <= set(back[0])
    for got, want in zip(back, tiny.rows):
        assert got["op"] == want["op"] and int(got["groups"]) == want["groups"]
        assert float(got["ms_iqr"]) == pytest.approx(want["ms_iqr"])
        assert float(got["speedup_lo"]) == pytest.approx(want["speedup_lo"])
    md = paths["md"].read_text()
    assert md.count("\n| linear_fwd |") == sum(r["op"] == "linear_fwd" for r in tiny.rows)
    assert "95% paired bootstrap interval" in md and "Left out before timing" in md and "test-machine" in md
    assert "[0.1, 0.1, 0.1]" in md  # load average before the run
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the stale plot was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(sweep.SWEEP_FILES)


def test_linear_cost_model():
    flops, nbytes = sweep.linear_cost("linear_fwd", 8192, 4096, 4096, 16, 2)
    assert flops == 2 * 8192 * 4096 * 4096 / 16
    assert nbytes == 2 * (8192 * 4096 * 2 + 4096 * 4096 / 16)
    f3, b3 = sweep.linear_cost("linear_fwd_bwd", 8192, 4096, 4096, 16, 2)
    assert f3 == 3 * flops and b3 == 3 * nbytes


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("ops", ("linear_fwd", "matmul"), "ops: 'matmul'"),
        ("ops", (), "ops: ()"),
        ("backends", ("cublas",), "backends: 'cublas'"),
        ("dtypes", ("float8",), "dtypes: 'float8'"),
        ("groups", (0,), "groups: 0"),
        ("device", "tpu", "device: 'tpu'"),
        ("min_run_time", 0.0, "min_run_time"),
        ("min_run_time", float("nan"), "min_run_time"),
        ("max_run_time", float("inf"), "max_run_time"),
        ("conv_channels", 0, "conv_channels"),
        ("target_spread", float("nan"), "target_rel_iqr"),
    ],
)
def test_validate_config_names_the_field(field, value, match):
    cfg = sweep.SweepConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        sweep.validate_config(cfg)


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="cuda"):
        sweep.validate_config(sweep.SweepConfig(device="cuda"))
