"""results.md, second half: the tile-partition study and the init-time measures."""

from __future__ import annotations

import numpy as np

from . import statistics as st
from .reporting import aggregate, fmt, row_lrs
from .settings import Plan, label

BLOCKS = (1, 8, 16, 32)


def _method(b: int) -> str:
    return "sao" if b == 1 else f"sao:b{b}"


def _measures(payload: dict, kind: str) -> list[dict]:
    return [m for m in payload["measures"] if m.get("kind") == kind]


def _spread_rows(spread: list[dict], act: str, cells) -> list[str]:
    """One table row per (convention, init) of the ``act`` spread measures; ``cells`` maps the
    init's per-depth results to the row's value cells."""
    rows = []
    for m in spread:
        if m["act"] != act:
            continue
        for method in m["methods"]:
            rs = [r for r in m["result"] if r["method"] == method and "error" not in r]
            if rs:
                rows.append(f"| {m['act']} | {m['convention']} | {label(method)} | " + " | ".join(cells(rs)) + " |")
    return rows


def _by_seed(payload: dict, setting: str, method: str, lr: float) -> dict:
    return {
        r["seed"]: r["test_acc"]
        for r in payload["runs"]
        if r["setting"] == setting and r["method"] == method and r["lr"] == lr and "error" not in r
    }


def tile_comparison(payload: dict, plan: Plan) -> list[dict]:
    """One entry per (setting, b): the b row, b=1's row, and the paired difference b - (b=1)."""
    out = []
    for s in plan.settings:
        if s.arch != "mlp" or s.act != "tanh" or not any(m.startswith("sao:b") for m in s.methods):
            continue
        lrs = row_lrs(s, "sao", payload["choice"])
        lr = lrs["best"] if lrs["best"] is not None else lrs["shared"]
        ref = aggregate(payload["runs"], s.key, "sao", lr)
        for b in BLOCKS:
            m = _method(b)
            if m not in s.methods:
                continue
            own = row_lrs(s, m, payload["choice"])  # a tuned tile size has its own best lr
            lr_m = own["best"] if own["best"] is not None else own["shared"]
            a = aggregate(payload["runs"], s.key, m, lr_m)
            err = next(
                (p["error"] for p in payload["pilots"] if p["setting"] == s.key and p["method"] == m and "error" in p),
                None,
            )
            row = dict(setting=s.key, depth=s.depth, sparsity=s.sparsity, block=b, lr=lr, own_lr=lr_m, agg=a, error=err)
            if a is not None and ref is not None and b != 1:
                comp = st.compare(_by_seed(payload, s.key, m, lr_m), _by_seed(payload, s.key, "sao", lr))
                row.update(comp=comp, verdict=st.verdict(comp, "equal"))
            out.append(row)
    return out


def _tile_spread(payload: dict) -> dict:
    """{(sparsity, block, depth): (median log10 cond over seeds, median rms, error)}."""
    acc: dict = {}
    for m in _measures(payload, "tile-spread"):
        for r in m["result"]:
            b = int(r["method"].partition(":b")[2] or 1)
            key = (r["sparsity"], b, m["depth"])
            if "error" in r:
                acc[key] = dict(error=r["error"])
                continue
            acc.setdefault(key, dict(cond=[], rms=[]))
            acc[key]["cond"].append(r["log10_cond"])
            acc[key]["rms"].append(r["rms"])
    return acc


def tile_section(payload: dict, plan: Plan) -> list[str]:
    rows = tile_comparison(payload, plan)
    if not rows:
        return []
    L = [
        "## Tile partitions: does SAO with block_size b train as well as the paper's element partition (b=1)?\n",
        "SAO rows only, tanh, the setting's convention (depth 100: SAO code's; depth 1000: EOI's); lr: b=1's "
        "(its best grid lr, or the shared lr where not tuned); a b tuned on its own shows its lr as @lr, else it "
        "runs at b=1's lr.  "
        "Cells: test accuracy % mean ± std (n seeds); for b > 1 Δ = b − (b=1) in points, paired by seed, with "
        f"its 95 % t interval, and the reading of 'b is free' (equivalent within ±{100 * st.MARGIN:g} point by "
        "TOST: confirm; a difference detected: contradict; else cannot tell).  b must divide both group sides "
        "(128/G): at sparsity 0.875 (G=8, side 16) b=32 cannot be built.\n",
        "| depth | sparsity | lr | " + " | ".join(f"b={b}" for b in BLOCKS) + " |",
        "|---" * (3 + len(BLOCKS)) + "|",
    ]
    for key in dict.fromkeys((r["setting"], r["depth"], r["sparsity"], r["lr"]) for r in rows):
        cells = []
        for b in BLOCKS:
            r = next((x for x in rows if x["setting"] == key[0] and x["block"] == b), None)
            if r is None:
                cells.append("—")
            elif r["error"]:
                cells.append("cannot be built")
            elif r["agg"] is None:
                cells.append("—")
            else:
                a = r["agg"]
                sd = f"{100 * a['test_acc_sd']:.1f}" if a["n"] > 1 else "n/a"
                c = f"{100 * a['test_acc']:.1f} ± {sd} (n={a['n']})"
                if r["own_lr"] != r["lr"]:
                    c += f" @{r['own_lr']:g}"
                if "comp" in r:
                    c += f"; Δ {st.fmt_points(r['comp'])}, free: {r['verdict']}"
                cells.append(c)
        L.append(f"| {key[1]} | {key[2]} | {fmt(key[3])} | " + " | ".join(cells) + " |")
    L.append("")
    errors = {r["error"] for r in rows if r["error"]}
    for e in errors:
        L.append(f"* Not buildable: `{e}`")
    L += [
        "",
        "Init-time diagnostics of the same layers (width 128): median over seeds of log10(sigma_max / "
        "sigma_min) of the hidden stack's Jacobian (float64, digits inputs; 98 hidden layers in the SAO code's "
        "convention, 998 in EOI's: both conventions are ill-conditioned at these depths for every b, so the "
        "spread does not separate the tile sizes), the depth at which a stack of masks joins every input to "
        "every output (per seed; 'never' within 10 layers), and sigma2 of the normalised path counts by depth "
        "(1 = no mixing).  A tile as wide as the group side (b = 128/G) makes each layer a permutation of whole "
        "groups: the stack splits into G disjoint chains of width 128/G that never mix.\n",
        "| sparsity | b | log10 cond, 98 hidden | log10 cond, 998 hidden | rms sv, 998 | full connectivity depth | "
        "path-count sigma2, depth 1..6 |",
        "|---|---|---|---|---|---|---|",
    ]
    spread = _tile_spread(payload)
    conn = {(m["sparsity"], m["block"]): m["result"] for m in _measures(payload, "tile-connectivity")}
    for sp in sorted({k[0] for k in conn}, reverse=True):
        for b in BLOCKS:
            c = conn.get((sp, b))
            if c is None:
                continue
            if "error" in c:
                L.append(f"| {sp} | {b} | cannot be built | | | | |")
                continue
            cells = []
            for depth in plan.tile_spread_depths:
                x = spread.get((sp, b, depth), {})
                cells.append(fmt(float(np.median(x["cond"])), 3) if x.get("cond") else "n/a")
            x = spread.get((sp, b, plan.tile_spread_depths[-1]), {})
            rms = fmt(float(np.median(x["rms"]))) if x.get("rms") else "n/a"
            full = ", ".join("never" if f is None else str(f) for f in c["full_depths"])
            L.append(
                f"| {sp} | {b} | {' | '.join(cells)} | {rms} | {full} | "
                + ", ".join(f"{v:.3g}" for v in c["sigma2"])
                + " |"
            )
    L.append("")
    return L


def measures_sections(payload: dict, plan: Plan) -> list[str]:
    L = []
    iso = [r for m in _measures(payload, "isometry") for r in m["result"]]
    if iso:
        L += [
            f"## Isometry at init (EOI's experiment): {plan.iso_depth} layers of width {plan.iso_width}, N(0, I) "
            f"inputs, {len(plan.iso_seeds)} seeds x {plan.iso_samples} samples\n",
            "Mean / max / min / variance of the input-output Jacobian's singular values.  SAO's ReLU (looks-linear) "
            "layers exist only where the half-size 50 x 50 problem has a degree >= 2.\n",
            "| act | density | init | mean | max | min | var |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in iso:
            L.append(
                f"| {r['act']} | {r['density']:g} | {label(r['init'])} | {fmt(r['mean'])} | {fmt(r['max'])} | "
                f"{fmt(r['min'])} | {fmt(r['var'])} |" + (f" {r['note']}" if r.get("note") else "")
            )
        L.append("")
    spread = _measures(payload, "spread")
    if spread:
        depths = plan.spread_depths
        L += [
            f"## Jacobian spread at init vs depth (width 128, sparsity 0.875, median over {plan.spread_samples} "
            "digits)\n",
            "tanh: log10(sigma_max / sigma_min) of the first k hidden layers ('inf': sigma_min is 0 in float64; "
            "values above ~15 only say 'ill-conditioned'), and the rms singular value at the deepest k.  "
            "Convention sao = gain 1 with torch's default biases, eoi = sigma_w^2 1.05 with N(0, 2e-5) biases.\n",
            "| act | convention | init | " + " | ".join(f"k={d}" for d in depths) + f" | rms sv, k={depths[-1]} |",
            "|---" * (len(depths) + 4) + "|",
        ]
        L += _spread_rows(spread, "tanh", lambda rs: [fmt(r["log10_cond"]) for r in rs] + [fmt(rs[-1]["rms"])])
        L += [
            "",
            "ReLU: a ReLU net's Jacobian is rank-deficient (a looks-linear stack has rank <= 64 of 128 by "
            "construction), so sigma_min = 0 and the ratio says nothing; shown instead: the rms / largest singular "
            "value (the gain) after k hidden layers.  Convention sao = gain 1 with torch's default biases, eoi-relu = "
            "gain 1 with N(0, 2e-5) biases.\n",
            "| act | convention | init | " + " | ".join(f"k={d} rms / max" for d in depths) + " |",
            "|---" * (len(depths) + 3) + "|",
        ]
        L += _spread_rows(spread, "relu", lambda rs: [f"{fmt(r['rms'])} / {fmt(r['max'])}" for r in rs])
        L.append("")
    conn = _measures(payload, "connectivity")
    if conn:
        c = conn[0]["result"]
        L += [
            f"## Connectivity (width {plan.conn_width}, stacks of {plan.conn_depth} masks, {len(plan.conn_seeds)} "
            "seeds)\n",
            "Depth at which every input reaches every output, per seed ('never' within the stack).\n",
            "| sparsity | SAO (= RG-N/U masks) | EOI (Givens) | LRP | LMP |",
            "|---|---|---|---|---|",
        ]
        for sp in plan.conn_sparsities:
            cells = []
            for init in ("sao", "eoi", "lrp", "lmp"):
                r = next(x for x in c["rows"] if x["init"] == init and x["sparsity"] == sp)
                cells.append(", ".join("never" if f is None else str(f) for f in r["full_depths"]))
            L.append(f"| {sp} | " + " | ".join(cells) + " |")
        L.append("")
        for b in c["big"]:
            L.append(
                f"* SAO, width {b['width']}, sparsity {b['sparsity']}: fully connected at depth {b['full_depth']} "
                f"(10-layer stack measured in {b['seconds']:.2f} s)."
            )
        for gp in c["gaps"]:
            L.append(
                f"* {label(gp['init'])} width {gp['width']}, sparsity {gp['sparsity']}: one layer has sigma1 = "
                f"{gp['single_sigma1']:.3g}, sigma2 = {gp['single_sigma2']:.3g} (Ramanujan bound "
                f"{gp['single_bound']:.3g}), {gp['single_components']} component(s); normalised path-count "
                "sigma2 by depth: " + ", ".join(f"{s:.3g}" for s in gp["sigma2"]) + "."
            )
        L.append("")
    ortho = [r for m in _measures(payload, "orthogonality") for r in m["result"]]
    if ortho:
        L += [
            "## Orthogonality error at init, max |W W^T - I|\n",
            "Convolutions: the (out, in*k*k) flattening and the operator on circular inputs (3x3-periodic; 8x8; 9x9 "
            "with dilation 3).  The looks-linear weight [[M, -M], [-M, M]] is not orthogonal by design: it is "
            "isometric on inputs [relu(h), relu(-h)].\n",
            "| layer | (out, in*k*k) | operator 3x3 | operator 8x8 | operator 9x9, dil. 3 |",
            "|---|---|---|---|---|",
        ]
        for r in ortho:
            L.append(
                f"| {r['layer']} | {fmt(r['flatten'])} | {fmt(r.get('operator_3x3'))} | "
                f"{fmt(r.get('operator_8x8'))} | {fmt(r.get('operator_9x9_dil3'))} |"
            )
        L.append("")
    return L
