"""speedup.png: speed-up vs G with 95 % intervals, one panel per op, colours fixed per backend.

Colours are assigned from the values of ``color_key`` over all rows (fixed per backend name,
see ``BACKEND_COLORS``), so a backend has the same colour in every panel; line style and
marker tell the other configuration fields apart.  One legend for the whole figure, below
the panels.  Points with a real flag (:func:`flagged`) are drawn hollow, the others filled.
Speed-ups are on a log axis labelled "0.5x", "1x", "4x"; the y range covers the points, 1x
and the ideal, so one very wide interval is clipped instead of flattening the rest.

``report.png`` (:func:`plot_report`): the converted layers' speed-ups and the whole model's,
beside the whole model's summed time split into converted and unconverted layers.
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


def flagged(row: dict, tag: str = "") -> bool:
    """A flag that says the number cannot be trusted: noisy, slow-median, or a speed-up whose
    whole interval lies above the ideal.  A "suspect" speed-up above the ideal whose interval
    includes it is noise around the ideal and is drawn like a trusted point (the table keeps it)."""
    codes = [c for c in (row.get("flag") or "").split(",") if c]
    if any(c != "suspect" for c in codes):
        return True
    ideal, lo = row.get("ideal_speedup"), row.get(f"speedup{tag}_lo")
    return "suspect" in codes and (ideal is None or lo is None or lo > ideal)


def speedup_axis(ax, values, axis: str = "y") -> None:
    """A log2 speed-up axis labelled "1x", "4x", "0.25x", spanning ``values`` (points, 1x and
    the ideals) with a margin; error bars beyond it are clipped."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    vals = [v for v in values if v and v > 0 and math.isfinite(v)] + [1.0]
    lo, hi = math.floor(math.log2(min(vals))) - 1, math.ceil(math.log2(max(vals))) + 1
    step = max(1, math.ceil((hi - lo) / 8))  # at most ~9 labels
    ticks = [2.0**k for k in range(lo, hi + 1) if k % step == 0]
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}lim")(2.0**lo, 2.0**hi)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x" if v >= 1 else f"{v:.2g}x"))


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
                        mfc="none" if flagged(r) else colors[ck],
                    )
        gs = sorted({r["groups"] for r in sub})
        if ideal_line:  # (a dash marker too, so that a panel with one G shows it)
            ax.plot(gs, gs, "k--", lw=0.8, marker="_", ms=12)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        speedup_axis(ax, [r["speedup"] for r in sub] + (gs if ideal_line else []))
        ax.set_xticks(gs, [str(g) for g in gs])
        ax.minorticks_off()
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
    handles.append(
        Line2D([], [], color="grey", marker="o", mfc="none", ls="none", label="hollow: flagged, not to be trusted")
    )
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


def plot_report(rows: Sequence[dict], totals: dict, meta: dict, path: str | os.PathLike) -> None:
    """report.png.  Left: the speed-up of each converted layer (G > 1) over its dense twin,
    fwd and fwd+bwd with 95 % intervals and the ideal G, on a log axis, then the whole model
    (summed medians of every layer, converted or not: no interval).  Right: the whole model's
    summed time, dense vs SAO, split into converted and unconverted layers.  Without
    latency, the same with FLOPs (dense / SAO)."""
    from .extras import require

    matplotlib = require("matplotlib", "report.png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    timed = any(r.get("speedup_fwd") is not None for r in rows)
    conv = [r for r in rows if (r.get("groups") or 1) > 1]
    others = [r for r in rows if (r.get("groups") or 1) <= 1]
    modes = [("fwd", "forward", "C0"), ("fwd_bwd", "forward + backward", "C1")]
    if not meta.get("backward", True):
        modes = modes[:1]
    if timed:
        modes = [m for m in modes if any(r.get(f"speedup_{m[0]}") is not None for r in rows)]

    def ratio(r: dict, mode: str) -> tuple[float | None, float | None, float | None]:
        if timed:
            return r.get(f"speedup_{mode}"), r.get(f"speedup_{mode}_lo"), r.get(f"speedup_{mode}_hi")
        sao, dense = r.get(f"flops_{mode}"), r.get(f"flops_{mode}_dense")
        return (dense / sao if sao and dense is not None else None), None, None

    names = [r["name"] for r in conv] + ["whole model"]
    fig, (ax, axm) = plt.subplots(
        1, 2, figsize=(max(6.0, 0.7 * len(names) + 3) + 6.5, 4.4), gridspec_kw={"width_ratios": [3, 1]}
    )
    w, shown, handles = 0.38, [1.0], []
    for i, (mode, label, color) in enumerate(modes):
        vals = [ratio(r, mode) for r in conv]
        whole = totals.get(f"speedup_{mode}") if timed else ratio(totals, mode)[0]
        xs = [x + (i - 0.5) * w for x in range(len(names))]
        heights = [v or 0 for v, _, _ in vals] + [whole or 0]
        err = [
            [v - lo if v is not None and lo is not None else 0 for v, lo, _ in vals] + [0],
            [hi - v if v is not None and hi is not None else 0 for v, _, hi in vals] + [0],
        ]
        # bars grow from 1x (no change): up = faster than dense, down = slower
        bars = ax.bar(
            xs,
            [h - 1 if h else 0 for h in heights],
            w,
            bottom=1.0,
            color=color,
            yerr=err if timed else None,
            capsize=2,
            ecolor="k",
        )
        for bar, r in zip(bars, conv):
            if timed and flagged(r, f"_{mode}"):
                bar.set_hatch("//")
        bars[-1].set_edgecolor("k")
        if whole:
            ax.annotate(f"{whole:.2f}x", (xs[-1], whole), ha="center", va="bottom", fontsize=8)
        shown += [h for h in heights if h] + [lo for _, lo, _ in vals if lo]
        handles.append(Patch(color=color, label=f"{label}" + (" (95% CI)" if timed else " FLOP reduction")))
    ideals = [float(r["groups"]) for r in conv]
    ax.plot(range(len(conv)), ideals, ls="none", marker="_", ms=22, mew=2, color="k")
    ax.axvline(len(conv) - 0.5, color="grey", lw=0.8, ls=":")
    ax.axhline(1.0, color="grey", lw=0.8)
    speedup_axis(ax, shown + ideals)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("converted layer (module name)" + (f"; {len(others)} unconverted not shown" if others else ""))
    handles.append(Line2D([], [], ls="none", marker="_", ms=14, mew=2, color="k", label="ideal = G"))
    if timed:
        handles.append(Patch(facecolor="white", edgecolor="k", hatch="//", label="flagged (see report.md)"))
        ax.set_ylabel("speed-up over the dense twin")
        ax.set_title("speed-up per converted layer and of the whole model (summed medians)", fontsize=10)
    else:
        ax.set_ylabel("dense FLOPs / SAO FLOPs")
        ax.set_title("FLOP reduction per converted layer and of the whole model (latency not measured)", fontsize=10)

    # the whole model: where the time (or the FLOPs) goes, dense vs SAO, per mode
    unit, scale, key = ("ms", 1.0, "ms_{m}") if timed else ("MFLOP", 1e-6, "flops_{m}")

    def part(sel: Sequence[dict], mode: str, dense: bool) -> float:
        k = key.format(m=mode) + ("_dense" if dense else "")
        return scale * sum(r.get(k) or 0 for r in sel)

    ticks, top = [], 0.0
    for i, (mode, _, _) in enumerate(modes):
        for j, dense in enumerate((True, False)):
            x = 2.5 * i + j
            a, b = part(conv, mode, dense), part(others, mode, dense)
            axm.bar([x], [a], 0.8, color="C2", edgecolor="k")
            axm.bar([x], [b], 0.8, bottom=[a], color="C7", edgecolor="k")
            ticks.append((x, f"{mode.replace('_', '+')}\n{'dense' if dense else 'SAO'}"))
            top = max(top, a + b)
    axm.set_xticks([x for x, _ in ticks], [t for _, t in ticks], fontsize=8)
    axm.set_ylim(0, 1.1 * top or 1.0)
    axm.set_ylabel(f"summed layer {unit}" if timed else unit)
    axm.set_title("whole model: dense vs SAO", fontsize=10)
    handles += [
        Patch(facecolor="C2", edgecolor="k", label="whole model: converted layers"),
        Patch(facecolor="C7", edgecolor="k", label=f"whole model: unconverted layers ({len(others)})"),
    ]
    fig.suptitle(f"{meta['model']} on {meta.get('gpu') or meta.get('cpu')} ({meta['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(4, len(handles)),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
