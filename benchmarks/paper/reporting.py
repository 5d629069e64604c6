"""results.md: the settings, the budget arithmetic, and every table, from results.json alone."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .settings import CONVENTIONS, OPTIMIZER, SOURCES, Plan, label

CHANCE_LOSS = math.log(10)


# ----------------------------------------------------------------- numbers
def stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(runs: list[dict], setting: str, method: str, lr: float | None) -> dict | None:
    """Mean and std over the seeds of one (setting, init, lr)."""
    if lr is None:
        return None
    rs = [r for r in runs if r["setting"] == setting and r["method"] == method and r["lr"] == lr and "error" not in r]
    if not rs:
        return None
    acc, acc_sd = stats([r["test_acc"] for r in rs])
    loss, loss_sd = stats([r["train_loss"] for r in rs])
    return dict(
        setting=setting,
        method=method,
        lr=lr,
        n=len(rs),
        test_acc=acc,
        test_acc_sd=acc_sd,
        val_acc=stats([r["val_acc"] for r in rs])[0],
        train_loss=loss,
        train_loss_sd=loss_sd,
        train_acc=stats([r["train_acc"] for r in rs])[0],
        diverged=sum(r["diverged"] for r in rs),
        steps=rs[0]["steps"],
        curves=[r["curve"] for r in rs],
        seeds=sorted(r["seed"] for r in rs),
    )


def row_lrs(setting, method: str, choice: dict) -> dict:
    """{"shared": lr or None, "best": lr or None} of one init's table rows."""
    c = choice.get(setting.key, {})
    if method in setting.tuned:
        return dict(shared=c.get("shared"), best=c.get("best", {}).get(method))
    if method in setting.untuned:
        return dict(shared=c.get("shared"), best=None)
    source = dict(setting.lr_from)[method]
    return dict(shared=None, best=c.get("best", {}).get(source))


def build_error(payload: dict, setting: str, method: str) -> str | None:
    for p in payload["pilots"]:
        if p["setting"] == setting and p["method"] == method and "error" in p:
            return p["error"]
    return None


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    return f"{x:.{digits}g}"


def cell(a: dict | None, with_lr: bool = False) -> str:
    if a is None:
        return "—"
    sd = f"{100 * a['test_acc_sd']:.1f}" if a["n"] > 1 else "n/a"  # one seed has no spread
    s = f"{100 * a['test_acc']:.1f} ± {sd}"
    if with_lr:
        s += f" @{a['lr']:g}"
    s += f" ({a['train_loss']:.2f})"
    if a["n"] < 3:
        s += f" n={a['n']}"
    if a["diverged"]:
        s += f" [{a['diverged']} NaN]"
    return s


def at_fraction(curve: list[dict], frac: float, key: str) -> float:
    """The logged value nearest to ``frac`` of the run (step 0 excluded for the train loss)."""
    pts = [c for c in curve if c["step"] > 0] if key == "train_loss" else curve
    if not pts:
        return float("nan")
    target = frac * curve[-1]["step"]
    return min(pts, key=lambda c: abs(c["step"] - target))[key]


def setting_steps(payload: dict, key: str) -> int:
    """Steps of one setting's runs (legacy results.json: the common S)."""
    b = payload["budget"]
    return b.get("setting_steps", {}).get(key, b["steps"])


def seeds_of(setting, plan: Plan) -> tuple[int, ...]:
    return setting.seeds if setting.seeds is not None else plan.seeds


def span(values) -> str:
    """'180' or '180-1100' (an int range over settings)."""
    values = list(values)
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def lr_protocol(plan: Plan) -> str:
    if plan.tune_seed is None:
        return (
            "* Learning rate: each tuned init runs the setting's grid at seed 0 and keeps the lr with the best "
            "final *validation* accuracy; the other seeds run at that lr and at the setting's shared lr (the "
            "reference's lr where it fixes one, else the dense baseline's best).  Seed 0's grid run is part of "
            "the reported mean (a winner's curse for best-lr rows; the claims table shows Δ without it).  Tile "
            "partitions reuse b=1's lr."
        )
    return (
        f"* Learning rate: each tuned init (every tile size on its own) runs the setting's grid at seed "
        f"{plan.tune_seed}, which is never reported, and keeps the lr with the best final *validation* accuracy; "
        f"a best lr at an edge of the lrs tried adds the next lr on the 1-3-10 ladder beyond it (at most "
        f"{plan.extend_edges} per init).  The reported seeds run at the best lr and, for the inits a claim needs, "
        "at the setting's shared lr (the reference's lr where it fixes one, else the dense baseline's best)."
    )


def steps_to(curve: list[dict], threshold: float) -> int | None:
    """First logged step whose validation accuracy reaches ``threshold`` (None: never)."""
    return next((p["step"] for p in curve if p["val_acc"] >= threshold), None)


def steps_to_text(curves: list[list[dict]], threshold: float) -> str:
    """Mean over seeds of the first logged step at ``threshold``; 'k/n' seeds when some never got there."""
    hits = [steps_to(c, threshold) for c in curves]
    got = [h for h in hits if h is not None]
    if not got:
        return "never"
    text = f"{sum(got) / len(got):.0f}"
    return text if len(got) == len(hits) else f"{text} ({len(got)}/{len(hits)})"


# ------------------------------------------------------------------ tables
def settings_section(plan: Plan, payload: dict) -> list[str]:
    o = OPTIMIZER
    L = [
        "## The reference setting, as run\n",
        f'* Optimiser (both references\' "sgd"): SGD, Nesterov momentum {o["momentum"]}, weight decay '
        f"{o['weight_decay']} on every parameter, lr x{o['gamma']} at {int(100 * o['milestones'][0])} % and "
        f"{int(100 * o['milestones'][1])} % of the steps (MultiStepLR), batch {o['batch']}; every run of a "
        f"setting gets the same number of steps (the steps column; budget below).",
        "* Data: scikit-learn's bundled digits (nothing can be downloaded here): 1293 train / 144 validation "
        "/ 360 test, stratified, standardised; batches drawn epoch by epoch (~11 steps per epoch).",
        "* Depth counts every weight layer: an MLP of depth L is Linear(64, 128), L - 2 hidden 128 x 128 "
        "layers carrying the init under test, Linear(128, 10) (EOI's MLP(depth)).  The input and head layers "
        "are dense orthogonal for every init, as in EOI's Linear_Init and the SAO code.",
        lr_protocol(plan),
        "* Cells: test accuracy % (mean ± sample std over seeds), `@lr` the lr of a best-lr row, (final "
        "train cross-entropy; chance 2.30).",
        "",
    ]
    for name, c in CONVENTIONS.items():
        L.append(f"* Convention `{name}`: {c['text']}.")
    L += [
        "",
        "| setting | arch | depth | act | sparsity | convention | tuned | untuned | b>1 (lr of) | lr grid | "
        "shared lr | seeds | steps |",
        "|---" * 13 + "|",
    ]
    for s in plan.settings:
        shared = f"{s.shared_lr if s.shared_lr is not None else 'baseline best'}"
        if s.shared_also is not None:
            shared += f" ({', '.join(map(label, s.shared_also)) or 'no tuned init'} also run there)"
        L.append(
            f"| {s.key}{' (headline)' if s.headline else ''} | {s.arch} | {s.depth} | "
            f"{s.act} | {s.sparsity} | {s.convention} | "
            f"{', '.join(map(label, s.tuned))} | {', '.join(map(label, s.untuned)) or '—'} | "
            f"{', '.join(label(m) for m, _ in s.lr_from) or '—'} | {', '.join(f'{x:g}' for x in s.lr_grid)} | "
            f"{shared} | {', '.join(map(str, seeds_of(s, plan)))} | {setting_steps(payload, s.key)} |"
        )
    notes = [f"{s.key}: {s.note}" for s in plan.settings if s.note]
    L += [""] + [f"* {n}" for n in notes] + ["", "Reference files checked:", ""] + [f"* {x}" for x in SOURCES] + [""]
    return L


def budget_section(payload: dict, plan: Plan) -> list[str]:
    b, meta = payload["budget"], payload["meta"]
    runs = [r for r in payload["runs"] if "error" not in r]
    used = sum(r["seconds"] for r in runs)
    cpu = sum(r.get("cpu_seconds", 0.0) for r in runs)
    first = sum(m.get("cpu_seconds", 0.0) for m in payload["measures"])
    L = [
        "## Budget arithmetic\n",
        f"Budget: {plan.minutes:g} CPU-minutes on each of {plan.workers} worker processes (1 thread each) = "
        f"{plan.minutes * 60 * plan.workers:.0f} worker CPU-s; on an idle machine that is the wall time.  "
        f"Step costs are the pilot's CPU time per step (median of {plan.pilot_steps} steps after a warm-up), "
        f"so other jobs on the machine stretch the wall time, not shrink the steps.  The init-time measures "
        f"took {first:.0f} CPU-s; left for training after the pilot and a reserve, x0.92 for the phase tails: "
        f"{b['worker_seconds']:.0f} CPU-s.  Worst-case plan (every best lr differs from the shared one): "
        f"{b['runs']} runs"
        + (
            f"; the headline rows train {plan.plateau_steps} steps each and cost {b['headline_seconds']:.0f} CPU-s; "
            "the others"
            if b.get("headline_seconds")
            else ""
        )
        + f" cost {b['per_step_seconds']:.2f} CPU-s per common step + {b['fixed_seconds']:.0f} "
        f"CPU-s fixed (builds, evaluations), so S = min(cap {b['cap']} = {plan.cap_epochs} epochs, "
        f"({b['worker_seconds']:.0f}{f' - {h:.0f}' if (h := b.get('headline_seconds')) else ''} - "
        f"{b['fixed_seconds']:.0f}) / {b['per_step_seconds']:.2f}) = "
        f"**{b['steps']} steps per run** (~{b['steps'] / max(1, b['cap'] / plan.cap_epochs):.0f} epochs).  "
        f"Ran {len(runs)} runs: {cpu:.0f} CPU-s (predicted worst case {b['predicted_worker_seconds']:.0f}), "
        f"{used:.0f} worker wall-s; the whole command took {meta['wall_s'] / 60:.1f} min wall.\n",
        "| setting | init | runs (worst case) | steps | pilot ms/step | fixed s/run | predicted worker-s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b["rows"]:
        L.append(
            f"| {r['setting']} | {label(r['method'])} | {r['runs']} | {r.get('fixed_steps') or b['steps']} | "
            f"{1000 * r['step_seconds']:.1f} | {r['fixed_seconds']:.1f} | {r['predicted_seconds']:.0f} |"
        )
    L.append("")
    return L


def main_tables(payload: dict, plan: Plan) -> list[str]:
    runs, choice = payload["runs"], payload["choice"]
    L = []
    for act in ("tanh", "relu"):
        sets = [s for s in plan.settings if s.arch == "mlp" and s.act == act and s.sparsity == 0.875]
        if not sets:
            continue
        inits = list(dict.fromkeys(m for s in sets for m in s.tuned + s.untuned))
        steps = span(setting_steps(payload, s.key) for s in sets)
        seeds = span(len(seeds_of(s, plan)) for s in sets)
        L += [
            f"## Vanilla {act} MLPs on digits, width 128, sparsity 0.875 ({steps} steps, {seeds} seeds)\n",
            "| depth, convention | lr | " + " | ".join(label(i) for i in inits) + " |",
            "|---" * (2 + len(inits)) + "|",
        ]
        for s in sets:
            lrs = {m: row_lrs(s, m, choice) for m in inits if m in s.methods}
            shared = choice.get(s.key, {}).get("shared")
            cells = [cell(aggregate(runs, s.key, m, lrs[m]["shared"])) if m in lrs else "—" for m in inits]
            L.append(f"| {s.depth}, {s.convention} | shared {fmt(shared)} | " + " | ".join(cells) + " |")
            cells = []
            for m in inits:
                if m not in lrs:
                    cells.append("—")
                elif m in s.untuned:
                    cells.append("not tuned")
                else:
                    cells.append(cell(aggregate(runs, s.key, m, lrs[m]["best"]), with_lr=True))
            L.append(f"| {s.depth}, {s.convention} | best per init | " + " | ".join(cells) + " |")
        L.append("")
    return L


def grid_section(payload: dict, plan: Plan) -> list[str]:
    seed = "seed 0" if plan.tune_seed is None else f"tuning seed {plan.tune_seed}, not reported"
    L = [
        f"## Learning-rate search ({seed}, final validation accuracy %; * = chosen, s = shared lr; "
        "edge? = the chosen lr is still at an edge of the lrs tried)\n"
    ]
    for s in plan.settings:
        c = payload["choice"].get(s.key)
        if not c or not c["grid"]:
            continue
        lrs = sorted({lr for pts in c["grid"].values() for lr, _, _ in pts} | set(s.lr_grid))
        L += [
            f"**{s.key}**\n",
            "| init | " + " | ".join(f"{x:g}" for x in lrs) + " | edge? |",
            "|---" * (len(lrs) + 2) + "|",
        ]
        for m, pts in c["grid"].items():
            by_lr = {lr: acc for lr, acc, _ in pts}
            best = c["best"][m]
            cells = [
                (f"{100 * by_lr[lr]:.1f}" if lr in by_lr else "—")
                + ("*" if lr == best else "")
                + (" s" if lr == c["shared"] else "")
                for lr in lrs
            ]
            tried = sorted(by_lr)
            edge = "yes" if best in (tried[0], tried[-1]) else ""
            L.append(f"| {label(m)} | " + " | ".join(cells) + f" | {edge} |")
        L.append("")
    return L


def curves_section(payload: dict, plan: Plan) -> list[str]:
    L = [
        "## Did the runs converge? (best-lr rows; mean over seeds)\n",
        "Train loss (window mean) and validation accuracy at 25 / 50 / 75 / 100 % of the steps; the lr drops "
        "x0.1 at 50 % and 75 %, so every curve flattens after 50 %: read the verdict from the final train "
        "accuracy.  Verdict: 'fits' = final train accuracy >= 99 % (the net has fit its training set; a high "
        "loss then only means small logits), 'under-trained' = it trains but the budget ended first, 'not "
        "training' = final loss within 5 % of chance, 'diverged' = NaN.  Steps to 90 / 95 %: the first logged "
        "step at that validation accuracy, mean over the seeds that reach it ((k/n) when only k of n do; the "
        "resolution is the log interval).  Plateau: validation-accuracy gain from 30 % to 50 % of the steps, the "
        "last stretch at the full lr, in points (< 1: plateaued before the first lr drop).\n",
        "| setting | init | lr | train loss 25/50/75/100 % | val acc % 25/50/75/100 % | final train acc % | verdict "
        "| steps to 90 / 95 % | plateau gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in plan.settings:
        for m in s.methods:
            lrs = row_lrs(s, m, payload["choice"])
            a = aggregate(payload["runs"], s.key, m, lrs["best"] if lrs["best"] is not None else lrs["shared"])
            if a is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of diverged runs
                losses = [
                    float(np.nanmean([at_fraction(c, f, "train_loss") for c in a["curves"]]))
                    for f in (0.25, 0.5, 0.75, 1)
                ]
                accs = [
                    float(np.nanmean([at_fraction(c, f, "val_acc") for c in a["curves"]]))
                    for f in (0.25, 0.3, 0.5, 0.75, 1)
                ]
            gain = 100 * (accs[2] - accs[1])
            del accs[1]
            if a["diverged"]:
                verdict = f"diverged ({a['diverged']} of {a['n']})"
            elif a["train_loss"] > 0.95 * CHANCE_LOSS:
                verdict = "not training"
            elif a["train_acc"] >= 0.99:
                verdict = "fits"
            else:
                verdict = "under-trained"
            L.append(
                f"| {s.key} | {label(m)} | {a['lr']:g} | "
                + " / ".join(f"{x:.2f}" for x in losses)
                + " | "
                + " / ".join(f"{100 * x:.0f}" for x in accs)
                + f" | {100 * a['train_acc']:.0f} | {verdict} | {steps_to_text(a['curves'], 0.9)} / "
                f"{steps_to_text(a['curves'], 0.95)} | {gain:+.1f} |"
            )
    L.append("")
    return L


def init_gradient_section(payload: dict, plan: Plan) -> list[str]:
    L = [
        "## Gradient at init (pilot, seed 0, float32)\n",
        "Hidden layers whose weight gradient is non-zero at the first step, and the gradient norm of the first "
        "and last hidden layer.\n",
        "| setting | init | hidden layers with grad | first hidden | last hidden |",
        "|---|---|---|---|---|",
    ]
    for p in payload["pilots"]:
        if "error" in p or p["depth"] < 100 or p["arch"] != "mlp":
            continue
        L.append(
            f"| {p['setting']} | {label(p['method'])} | {p['hidden_layers_with_grad']} / {p['hidden_layers']} | "
            f"{fmt(p['grad_first_hidden'])} | {fmt(p['grad_last_hidden'])} |"
        )
    L.append("")
    return L


def cnn_section(payload: dict, plan: Plan) -> list[str]:
    L = []
    for s in plan.settings:
        if s.arch != "cnn":
            continue
        L += [
            f"## Vanilla CNN on digits: {s.depth} 3x3 convs, {s.channels} channels, {s.act}, sparsity {s.sparsity} "
            f"({setting_steps(payload, s.key)} steps, {len(seeds_of(s, plan))} seeds; padding: "
            f"{s.padding or 'circular for SAO-ECO, zeros for the rest'})\n",
            "| lr | " + " | ".join(label(m) for m in s.methods) + " |",
            "|---" * (1 + len(s.methods)) + "|",
        ]
        c = payload["choice"].get(s.key, {})
        L.append(
            f"| shared {fmt(c.get('shared'))} | "
            + " | ".join(
                cell(aggregate(payload["runs"], s.key, m, row_lrs(s, m, payload["choice"])["shared"]))
                for m in s.methods
            )
            + " |"
        )
        L.append(
            "| best per init | "
            + " | ".join(
                "not tuned"
                if m in s.untuned
                else cell(aggregate(payload["runs"], s.key, m, row_lrs(s, m, payload["choice"])["best"]), with_lr=True)
                for m in s.methods
            )
            + " |"
        )
        L.append("")
    return L


def reported_runs(payload: dict, plan: Plan) -> dict:
    """The payload with only the reported seeds' runs: a tuning seed outside them (plan.tune_seed)
    chose the lrs and is never averaged in."""
    seeds = {s.key: set(s.seeds if s.seeds is not None else plan.seeds) for s in plan.settings}
    runs = [r for r in payload["runs"] if r["seed"] in seeds.get(r["setting"], ())]
    return {**payload, "runs": runs}


def markdown(payload: dict, plan: Plan) -> str:
    from . import claims, reporting_init

    payload = reported_runs(payload, plan)
    meta = payload["meta"]
    L = [
        "# The paper's claims, measured at the reference settings\n",
        f"Device: {meta['device']}; torch {meta['torch']}; commit `{meta['commit']}`; {meta['date']}; wall time "
        f"{meta['wall_s'] / 60:.1f} min.  Command: `{meta['command']}`\n",
    ]
    L += settings_section(plan, payload)
    L += budget_section(payload, plan)
    L += claims.claims_section(payload, plan)
    L += main_tables(payload, plan)
    L += reporting_init.tile_section(payload, plan)
    L += cnn_section(payload, plan)
    L += grid_section(payload, plan)
    L += curves_section(payload, plan)
    L += init_gradient_section(payload, plan)
    L += reporting_init.measures_sections(payload, plan)
    return "\n".join(L)
