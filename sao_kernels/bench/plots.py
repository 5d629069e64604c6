"""speedup.png: speed-up vs G with 95 % intervals, one panel per op, colours fixed per backend.

Colours are assigned from the values of ``color_key`` over all rows (fixed per backend name,
see ``BACKEND_COLORS``), so a backend has the same colour in every panel; line style and
marker tell the other configuration fields apart.  One legend for the whole figure, below
the panels.  Flagged points are drawn hollow.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

BACKEND_COLORS = {
    "torch": "C0",
    "native": "C1",
    "triton": "C2",
    "masked_dense": "C3",
    "bsr": "C4",
    "grouped_mm": "C5",
    "auto": "C0",
}
_STYLES = list(itertools.product(("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")))


CONTENTION_COLORS = {False: "C0", True: "C3"}


def _colors(values: Sequence[object]) -> dict[object, str]:
    spare = (f"C{i}" for i in itertools.count(6))
    fixed = {**BACKEND_COLORS, **CONTENTION_COLORS}
    return {v: fixed[v] if isinstance(v, (str, bool)) and v in fixed else next(spare) for v in values}


def _color_label(key: str, value: object) -> str:
    if key == "contention":
        return "busy-loop on one core" if value else "quiet"
    return f"{key} {value}"


def plot_speedup(
    rows: Sequence[dict],
    path: str | os.PathLike,
    *,
    title: str,
    panel_key: Sequence[str] = ("op",),
    color_key: str = "backend",
    style_keys: Sequence[str] = ("dtype", "tokens", "in_features", "block_size", "contention"),
    ideal_line: bool = True,
    panel_order: Sequence[object] = (),
) -> None:
    """Speed-up (y, log2) vs ``groups`` (x, log2), a line per (color_key, style_keys) value,
    a panel per ``panel_key`` value (listed first-key values in ``panel_order`` first, in that
    order); error bars = [speedup_lo, speedup_hi]."""
    from .extras import require

    matplotlib = require("matplotlib", "the speed-up plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    def key(r, ks):
        return tuple(r.get(k) for k in ks)

    def sort_key(t):
        return tuple((v is None, str(type(v)), v if v is not None else 0) for v in t)

    order = {v: i for i, v in enumerate(panel_order)}
    panels = sorted({key(r, panel_key) for r in rows}, key=lambda p: (order.get(p[0], len(order)), sort_key(p)))
    colors = _colors(sorted({r.get(color_key) for r in rows}, key=str))
    configs = sorted({key(r, style_keys) for r in rows}, key=sort_key)
    styles = {c: _STYLES[i % len(_STYLES)] for i, c in enumerate(configs)}
    cols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        sub = [r for r in rows if key(r, panel_key) == panel]
        for ck in sorted({r.get(color_key) for r in sub}, key=str):
            for cfg in sorted({key(r, style_keys) for r in sub if r.get(color_key) == ck}, key=sort_key):
                pts = sorted(
                    (r for r in sub if r.get(color_key) == ck and key(r, style_keys) == cfg), key=lambda r: r["groups"]
                )
                ls, marker = styles[cfg]
                g = [r["groups"] for r in pts]
                s = [r["speedup"] for r in pts]
                err = [
                    [r["speedup"] - r.get("speedup_lo", r["speedup"]) for r in pts],
                    [r.get("speedup_hi", r["speedup"]) - r["speedup"] for r in pts],
                ]
                ax.errorbar(g, s, yerr=err, color=colors[ck], ls=ls, marker="none", lw=1.2, capsize=2)
                for r in pts:
                    ax.plot(
                        [r["groups"]],
                        [r["speedup"]],
                        marker=marker,
                        color=colors[ck],
                        ms=5,
                        mfc="none" if r.get("flag") else colors[ck],
                    )
        gs = sorted({r["groups"] for r in sub})
        if ideal_line:  # (a dash marker too, so that a panel with one G shows it)
            ax.plot(gs, gs, "k--", lw=0.8, marker="_", ms=12)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(gs, [str(g) for g in gs])
        ax.set_xlabel("groups G (sparsity 1 - 1/G)")
        ax.set_ylabel("speed-up over dense")
        ax.set_title(" ".join(str(v) for v in panel if v is not None), fontsize=10)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=c, lw=2, label=_color_label(color_key, v)) for v, c in colors.items()]
    if len(configs) > 1:
        handles += [
            Line2D([], [], color="k", ls=styles[c][0], marker=styles[c][1], label=_config_label(style_keys, c))
            for c in configs
        ]
    if ideal_line:
        handles.append(Line2D([], [], color="k", ls="--", lw=0.8, label="ideal = G"))
    handles.append(Line2D([], [], color="grey", marker="o", mfc="none", ls="none", label="flagged (see table)"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(4, len(handles)),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _config_label(keys: Sequence[str], values: tuple) -> str:
    short = {"tokens": "T", "in_features": "n", "block_size": "b", "width": "width", "contention": "contention"}
    parts = []
    for k, v in zip(keys, values):
        if v is None or (k == "contention" and not v):
            continue
        parts.append(f"{short.get(k, k)}={v}" if k != "dtype" else str(v))
    return " ".join(parts) or "default"
