"""sao_kernels.bench.plots: hollow markers only for real flags, log speed-up axes labelled
"4x", report.png with converted layers only plus the whole model (issue 24)."""

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sao_kernels.bench import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions close (so their axes can be inspected)."""
    seen = []
    real = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (seen.append(fig), real(fig)))
    return seen


def _row(G, s, flag="", lo=None, hi=None, backend="torch"):
    lo = s * 0.95 if lo is None else lo
    hi = s * 1.05 if hi is None else hi
    return dict(
        op="linear_fwd",
        backend=backend,
        dtype="float32",
        tokens=8,
        in_features=32,
        block_size=1,
        groups=G,
        speedup=s,
        speedup_lo=lo,
        speedup_hi=hi,
        ideal_speedup=float(G),
        flag=flag,
    )


def test_flagged_means_a_real_flag():
    assert not plots.flagged(_row(2, 1.9))
    assert plots.flagged(_row(2, 1.9, "noisy")) and plots.flagged(_row(2, 1.9, "slow-median"))
    # above the ideal but its interval includes it: noise around the ideal, drawn as trusted
    assert not plots.flagged(_row(2, 2.05, "suspect", lo=1.9, hi=2.2))
    assert plots.flagged(_row(2, 3.0, "suspect", lo=2.5, hi=3.5))  # the whole interval above: real


def _tick_labels(ax):
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


def test_speedup_png_hollow_only_for_flagged_rows_and_x_labels(tmp_path, figures):
    rows = [_row(1, 0.9), _row(2, 1.8, "noisy"), _row(4, 3.5), _row(8, 8.4, "suspect", lo=7.0, hi=9.0)]
    plots.plot_speedup(rows, tmp_path / "s.png", title="t")
    ax = figures[-1].axes[0]
    points = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1 and ln.get_marker() not in ("None", "_")]
    hollow = sorted(ln.get_xdata()[0] for ln in points if ln.get_markerfacecolor() == "none")
    assert len(points) == 4 and hollow == [2]
    labels = _tick_labels(ax)
    assert "1x" in labels and "4x" in labels and all(t.endswith("x") for t in labels)
    assert ax.get_yscale() == "log"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def _layer(name, G, s, lo, hi, ms):
    return dict(
        name=name,
        groups=G,
        speedup_fwd=s,
        speedup_fwd_lo=lo,
        speedup_fwd_hi=hi,
        ms_fwd=ms,
        ms_fwd_dense=ms * s,
        flag="",
        ideal_speedup=float(G),
        flops_fwd=1,
        flops_fwd_dense=G,
    )


def test_report_png_converted_layers_only_log_axis_and_the_whole_model(tmp_path, figures):
    # the ResNet case: one unconverted layer with a 8.3x [0.76-61] interval flattened the rest
    rows = [
        _layer("conv1", 1, 8.3, 0.76, 61.0, 1.0),
        _layer("layer1.0", 4, 2.5, 2.3, 2.7, 2.0),
        _layer("fc", 4, 3.0, 2.8, 3.2, 1.0),
    ]
    totals = dict(ms_fwd=4.0, ms_fwd_dense=15.3, speedup_fwd=15.3 / 4.0)
    meta = dict(model="resnet", cpu="cpu", date="2026-12-06", backward=False)
    plots.plot_report(rows, totals, meta, tmp_path / "r.png")
    ax, whole = figures[-1].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layer1.0", "fc", "whole model"]
    assert ax.get_yscale() == "log" and "1x" in _tick_labels(ax) and "2x" in _tick_labels(ax)
    assert ax.get_ylim()[1] <= 16  # not stretched to the unconverted layer's 61x
    assert "1 unconverted not shown" in ax.get_xlabel()
    assert any(t.get_text() == "3.83x" for t in ax.texts)  # the whole model's bar is labelled
    # the whole model panel: dense and SAO time, split into converted / unconverted layers
    heights = sorted(round(p.get_height(), 6) for p in whole.patches)
    # dense: converted 2 ms x 2.5 + 1 ms x 3 = 8, unconverted 8.3; SAO: converted 3, unconverted 1
    assert heights == [1.0, 3.0, 8.0, 8.3]
