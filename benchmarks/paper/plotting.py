"""The figures: learning curves (every setting, best-lr rows, mean over seeds), the tile study's
curves, the Jacobian spread by depth, and connectivity."""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np

from .reporting import aggregate, row_lrs
from .settings import Plan, label

COLORS = {
    "sao": "C0",
    "orthogonal": "C1",
    "ll-orthogonal": "C7",
    "eoi": "C8",
    "rg-n": "C2",
    "rg-u": "C3",
    "lmp": "C4",
    "lrp": "C5",
    "lmp-s": "C4",
    "lrp-s": "C5",
    "sao:b8": "C9",
    "sao:b16": "C6",
    "sao:b32": "k",
    "sao-delta": "C0",
    "sao-eco": "C9",
    "delta-orthogonal": "C1",
    "rg-n-delta": "C2",
    "lrp-delta": "C5",
}


def _mean_curve(curves: list[list[dict]], key: str) -> tuple[list[int], np.ndarray]:
    n = min(len(c) for c in curves)
    steps = [p["step"] for p in curves[0][:n]]
    values = np.array([[p[key] for p in c[:n]] for c in curves], dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # step 0 has no train loss: an all-NaN column
        return steps, np.nanmean(values, 0)


def _panel(ax_loss, ax_acc, payload: dict, setting, methods, title: str) -> None:
    for m in methods:
        lrs = row_lrs(setting, m, payload["choice"])
        a = aggregate(payload["runs"], setting.key, m, lrs["best"] if lrs["best"] is not None else lrs["shared"])
        if a is None:
            continue
        steps, loss = _mean_curve(a["curves"], "train_loss")
        ax_loss.plot(steps[1:], loss[1:], label=f"{label(m)} @{a['lr']:g}", color=COLORS.get(m))
        steps, acc = _mean_curve(a["curves"], "val_acc")
        ax_acc.plot(steps, 100 * acc, color=COLORS.get(m))
    ax_loss.set_title(title, fontsize=8)
    ax_loss.set_ylabel("train loss")
    ax_loss.axhline(math.log(10), color="grey", lw=0.6, ls=":")
    ax_loss.legend(fontsize=6)
    ax_acc.set_ylabel("val acc %")
    ax_acc.set_xlabel("step")
    steps = payload["budget"].get("setting_steps", {}).get(setting.key, payload["budget"]["steps"])
    for ax in (ax_loss, ax_acc):
        for f in (0.5, 0.75):
            ax.axvline(f * steps, color="grey", lw=0.5, ls="--")


def plots(out: pathlib.Path, payload: dict, plan: Plan) -> list[str]:
    from sao_kernels.bench.extras import require

    matplotlib = require("matplotlib", "the paper's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    panels = [(s, [m for m in s.methods if not m.startswith("sao:b")], s.key) for s in plan.settings]
    panels += [
        (s, [m for m in s.methods if m.startswith("sao")], s.key + " tiles")
        for s in plan.settings
        if any(m.startswith("sao:b") for m in s.methods)
    ]
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        2 * nrows,
        ncols,
        figsize=(4.6 * ncols, 5.2 * nrows),
        squeeze=False,
        gridspec_kw=dict(height_ratios=[1.4, 1] * nrows),
    )
    for k, (s, methods, title) in enumerate(panels):
        r, c = divmod(k, ncols)
        _panel(axes[2 * r, c], axes[2 * r + 1, c], payload, s, methods, title)
    for k in range(len(panels), nrows * ncols):
        r, c = divmod(k, ncols)
        axes[2 * r, c].axis("off")
        axes[2 * r + 1, c].axis("off")
    fig.suptitle("Learning curves, best lr per init, mean over seeds (grey lines: lr x0.1)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out / "learning_curves.png", dpi=80)
    plt.close(fig)
    files.append("learning_curves.png")

    spread = [m for m in payload["measures"] if m.get("kind") == "spread" and m["act"] == "tanh"]
    fig, axes = plt.subplots(1, max(1, len(spread)), figsize=(5 * max(1, len(spread)), 4), squeeze=False)
    for ax, m in zip(axes.flat, spread):
        for method in m["methods"]:
            rs = [r for r in m["result"] if r["method"] == method and "error" not in r]
            if rs:
                ax.plot(
                    [r["depth"] for r in rs],
                    [min(r["log10_cond"], 16.0) for r in rs],
                    marker="o",
                    ms=3,
                    label=label(method),
                    color=COLORS.get(method),
                )
        ax.set_xscale("log")
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("log10(sigma_max / sigma_min), clipped at 16")
        ax.set_title(f"Jacobian spread at init: {m['act']}, convention {m['convention']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "jacobian_spread.png", dpi=80)
    plt.close(fig)
    files.append("jacobian_spread.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    conn = [m for m in payload["measures"] if m.get("kind") == "connectivity"]
    if conn:
        for k, sp in enumerate(plan.conn_sparsities):
            for init, style in (("sao", "-"), ("eoi", "-."), ("lrp", "--"), ("lmp", ":")):
                r = next(x for x in conn[0]["result"]["rows"] if x["init"] == init and x["sparsity"] == sp)
                a1.plot(
                    range(1, len(r["fractions"]) + 1),
                    r["fractions"],
                    style,
                    color=f"C{k}",
                    label=f"{label(init)} s={sp}",
                )
    a1.set_xlabel("depth (layers)")
    a1.set_ylabel("fraction of (input, output) pairs joined")
    a1.set_title(f"Connectivity, width {plan.conn_width}", fontsize=9)
    a1.legend(fontsize=6, ncol=2)
    for m in payload["measures"]:
        if m.get("kind") == "tile-connectivity" and "error" not in m["result"]:
            r = m["result"]
            a2.plot(
                range(1, len(r["fractions"]) + 1),
                r["fractions"],
                "-" if r["sparsity"] == 0.875 else "--",
                marker="o",
                ms=3,
                label=f"s={r['sparsity']} b={r['block']}",
            )
    a2.set_xlabel("depth (layers)")
    a2.set_title("Connectivity of SAO tile partitions (block_size b)", fontsize=9)
    a2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "connectivity.png", dpi=80)
    plt.close(fig)
    files.append("connectivity.png")
    return files
