"""The paper's claims as comparisons of two arms, each read with a paired 95 % t interval and
the confirm / contradict / cannot-tell rule of statistics.py; rendered into results.md (every
column) and into benchmarks/paper/README.md (a generated block that
tests/paper/test_paper_claims.py regenerates from results.json and compares).

An arm is (setting, init, lr rule): "best" = the init's own best grid lr (a tile partition
that reuses b=1's lr: that lr; an untuned init: the shared lr), "shared" = the setting's
shared lr.  Values are per-seed test accuracies of the reported seeds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from . import statistics as st
from .reporting import CHANCE_LOSS, row_lrs, steps_to
from .settings import Plan, label


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    source: str  # who makes the claim: "SAO paper", "EOI paper", "earlier README"
    kind: str  # what the claim says about a - b: higher / lower / equal (statistics.CLAIM_KINDS)
    setting: str
    a: tuple[str, str]  # (init, lr rule)
    b: tuple[str, str]
    metric: str = "test_acc"  # or "steps_to_90" (validation accuracy, from the logged curve)
    note: str = ""


def _c(key, text, source, kind, setting, a, b, metric="test_acc", note=""):
    return Claim(key, text, source, kind, setting, a, b, metric, note)


BEST, SHARED = "best", "shared"
#: Final train accuracy below which an arm counts as under-trained (results.md's convergence table).
FITS = 0.99
CLAIMS: tuple[Claim, ...] = (
    _c("d1000-dense", "depth 1000, tanh: SAO trains as well as dense orthogonal", "SAO paper", "equal",
       "mlp-d1000-tanh", ("sao", BEST), ("orthogonal", BEST)),
    _c("d1000-dense-ref-lr", "depth 1000, tanh: SAO trains as well as dense orthogonal at EOI's lr 1e-4", "SAO paper",
       "equal",
       "mlp-d1000-tanh", ("sao", SHARED), ("orthogonal", SHARED)),
    _c("d1000-eoi", "depth 1000: SAO matches EOI's exact sparse orthogonal (Givens)", "EOI paper", "equal",
       "mlp-d1000-tanh", ("sao", BEST), ("eoi", BEST)),
    _c("d1000-rgn", "depth 1000: SAO beats Gaussian values on its mask (RG-N)", "SAO paper", "higher",
       "mlp-d1000-tanh", ("sao", BEST), ("rg-n", BEST)),
    _c("d1000-rgu", "depth 1000: SAO beats uniform values on its mask (RG-U)", "SAO paper", "higher",
       "mlp-d1000-tanh", ("sao", BEST), ("rg-u", BEST)),
    _c("d1000-lrp", "depth 1000: SAO beats random pruning of dense orthogonal (LRP)", "SAO paper", "higher",
       "mlp-d1000-tanh", ("sao", BEST), ("lrp", BEST), note="LRP not rescaled; an untuned arm: both at the shared lr"),
    _c("d1000-lrp-s", "depth 1000: SAO beats LRP rescaled by 1/sqrt(density)", "SAO paper", "higher",
       "mlp-d1000-tanh", ("sao", BEST), ("lrp-s", BEST), note="an untuned arm: both at the shared lr"),
    _c("d100-dense", "depth 100, tanh: SAO beats dense orthogonal", "earlier README", "higher",
       "mlp-d100-tanh", ("sao", BEST), ("orthogonal", BEST)),
    _c("d100-rgn", "depth 100, tanh: SAO beats RG-N", "SAO paper", "higher",
       "mlp-d100-tanh", ("sao", BEST), ("rg-n", BEST)),
    _c("d10-dense", "depth 10, tanh: SAO is comparable to dense orthogonal", "SAO paper", "equal",
       "mlp-d10-tanh", ("sao", BEST), ("orthogonal", BEST)),
    _c("d10-lmp", "depth 10, tanh: SAO beats magnitude pruning (LMP)", "SAO paper", "higher",
       "mlp-d10-tanh", ("sao", BEST), ("lmp", BEST), note="LMP not rescaled"),
    _c("d10-lmp-s", "depth 10, tanh: SAO beats LMP rescaled by 1/sqrt(density)", "SAO paper", "higher",
       "mlp-d10-tanh", ("sao", BEST), ("lmp-s", BEST)),
    _c("relu-d100-dense", "ReLU, depth 100: SAO beats dense orthogonal", "SAO paper", "higher",
       "mlp-d100-relu", ("sao", BEST), ("orthogonal", BEST)),
    _c("relu-d100-ll", "ReLU, depth 100: SAO ties the looks-linear dense baseline", "earlier README", "equal",
       "mlp-d100-relu", ("sao", BEST), ("ll-orthogonal", BEST)),
    _c("relu-d1000-ll", "ReLU, depth 1000: SAO ties the looks-linear dense baseline", "earlier README", "equal",
       "mlp-d1000-relu", ("sao", BEST), ("ll-orthogonal", BEST)),
    _c("tile8-d100", "tiles b=8 are free (depth 100, sparsity 0.875)", "earlier README", "equal",
       "mlp-d100-tanh", ("sao:b8", BEST), ("sao", BEST)),
    _c("tile8-d100-s75", "tiles b=8 are free (depth 100, sparsity 0.75)", "earlier README", "equal",
       "mlp-d100-tanh-s0.75", ("sao:b8", BEST), ("sao", BEST)),
    _c("tile16-d100-s75", "tiles b=16 (half the group side) are free (depth 100, sparsity 0.75)", "earlier README",
       "equal", "mlp-d100-tanh-s0.75", ("sao:b16", BEST), ("sao", BEST)),
    _c("tile8-d1000", "tiles b=8 are free (depth 1000, sparsity 0.875)", "earlier README", "equal",
       "mlp-d1000-tanh", ("sao:b8", BEST), ("sao", BEST)),
    _c("tile16-d100", "a tile as wide as the group side (b=16 at 0.875) costs accuracy, depth 100",
       "earlier README", "lower", "mlp-d100-tanh", ("sao:b16", BEST), ("sao", BEST)),
    _c("tile16-d1000", "a tile as wide as the group side (b=16 at 0.875) costs accuracy, depth 1000",
       "earlier README", "lower",
       "mlp-d1000-tanh", ("sao:b16", BEST), ("sao", BEST)),
    _c("tile32-d100-s75", "b=32 at sparsity 0.75 (group side) costs accuracy, depth 100", "earlier README", "lower",
       "mlp-d100-tanh-s0.75", ("sao:b32", BEST), ("sao", BEST)),
    _c("tile32-d1000-s75", "b=32 at sparsity 0.75 (group side) costs accuracy, depth 1000", "earlier README",
       "lower",
       "mlp-d1000-tanh-s0.75", ("sao:b32", BEST), ("sao", BEST)),
    _c("cnn-delta", "vanilla CNN: SAO-Delta matches dense delta-orthogonal", "SAO paper", "equal",
       "cnn-d32-tanh", ("sao-delta", BEST), ("delta-orthogonal", BEST)),
    _c("cnn-eco", "vanilla CNN: SAO-ECO matches dense delta-orthogonal", "SAO paper", "equal",
       "cnn-d32-tanh", ("sao-eco", BEST), ("delta-orthogonal", BEST)),
    _c("d1000-steps", "depth 1000: SAO reaches 90 % validation accuracy in fewer steps than dense orthogonal",
       "SAO paper", "lower", "mlp-d1000-tanh", ("sao", BEST), ("orthogonal", BEST), metric="steps_to_90",
       note="first logged step; resolution = the log interval"),
)  # fmt: skip


def reported_seeds(setting, plan: Plan) -> tuple[int, ...]:
    return setting.seeds if setting.seeds is not None else plan.seeds


def tuning_seed(setting, plan: Plan) -> int:
    """The seed whose grid runs chose the lrs (legacy runs: the first reported seed)."""
    return plan.tune_seed if plan.tune_seed is not None else reported_seeds(setting, plan)[0]


def arm_lr(setting, method: str, rule: str, choice: dict) -> float | None:
    lrs = row_lrs(setting, method, choice)
    if rule == SHARED:
        return lrs["shared"]
    return lrs["best"] if lrs["best"] is not None else lrs["shared"]


def arm_values(payload: dict, plan: Plan, setting, method: str, lr: float | None, metric: str) -> dict:
    """{seed: value} over the reported seeds (a missing threshold crossing is None)."""
    if lr is None:
        return {}
    seeds = set(reported_seeds(setting, plan))
    out = {}
    for r in payload["runs"]:
        if r["setting"] == setting.key and r["method"] == method and r["lr"] == lr and "error" not in r:
            if r["seed"] in seeds:
                out[r["seed"]] = r["test_acc"] if metric == "test_acc" else steps_to(r["curve"], 0.9)
    return out


def _tuned_on(setting, method: str, rule: str, choice: dict) -> bool:
    """Whether this arm's lr was chosen on the tuning seed's grid runs."""
    if rule == BEST:
        return method in setting.tuned or method in dict(setting.lr_from)
    return setting.shared_lr is None and choice.get(setting.key, {}).get("shared") is not None


def evaluate(payload: dict, plan: Plan) -> list[dict]:
    """One entry per claim whose setting is in the plan: the comparison and its verdict."""
    by_key = {s.key: s for s in plan.settings}
    choice, out = payload["choice"], []
    for c in CLAIMS:
        s = by_key.get(c.setting)
        if s is None:
            continue
        entry = dict(claim=c, setting=s)
        rules = (c.a[1], c.b[1])
        if any(m in s.untuned for m, _ in (c.a, c.b)):
            rules = (SHARED, SHARED)  # an untuned arm ran at the shared lr only: compare both there
        arms = []
        for (method, _), rule in zip((c.a, c.b), rules):
            if method not in s.methods:
                arms = None
                break
            lr = arm_lr(s, method, rule, choice)
            arms.append((method, rule, lr, arm_values(payload, plan, s, method, lr, c.metric)))
        if not arms or not arms[0][3] or not arms[1][3]:
            out.append(dict(entry, status="not run"))
            continue
        va, vb = arms[0][3], arms[1][3]
        if any(v is None for v in (*va.values(), *vb.values())):
            out.append(dict(entry, arms=arms, status="not reached by every seed"))
            continue
        comp = st.compare(va, vb)
        tseed = tuning_seed(s, plan)
        reused = tseed in va and any(_tuned_on(s, m, rule, choice) for m, rule, _, _ in arms)
        rest = None
        if reused and len(set(va) & set(vb) - {tseed}) >= 1:
            rest = st.compare({k: v for k, v in va.items() if k != tseed}, {k: v for k, v in vb.items() if k != tseed})
        fits = [_fit(payload, s, m, lr, plan) for m, _, lr, _ in arms]
        train = tuple(acc for acc, _ in fits)
        out.append(
            dict(
                entry,
                arms=arms,
                comp=comp,
                verdict=st.verdict(comp, c.kind),
                reused=reused,
                rest=rest,
                train=train,
                undertrained=any(under for _, under in fits),
                status="ok",
            )
        )
    return out


def _fit(payload: dict, setting, method: str, lr: float, plan: Plan) -> tuple[float, bool]:
    """(mean final train accuracy, under-trained?): it trains (loss below 95 % of chance) but has
    not fit its training set (accuracy < FITS) when the budget ends."""
    seeds = set(reported_seeds(setting, plan))
    rs = [
        r
        for r in payload["runs"]
        if r["setting"] == setting.key and r["method"] == method and r["lr"] == lr and r["seed"] in seeds
        if "error" not in r
    ]
    acc = sum(r["train_acc"] for r in rs) / len(rs)
    loss = sum(r["train_loss"] for r in rs) / len(rs)
    return acc, acc < FITS and loss < 0.95 * CHANCE_LOSS


def _scale(c: Claim) -> tuple[float, int, str]:
    return (100.0, 1, "points") if c.metric == "test_acc" else (1.0, 0, "steps")


def _arm_text(arm) -> str:
    method, rule, lr, _ = arm
    return f"{label(method)} @{lr:g}" + (" (shared)" if rule == SHARED else "")


def claims_section(payload: dict, plan: Plan) -> list[str]:
    rows = evaluate(payload, plan)
    if not rows:
        return []
    L = [
        "## The claims, with paired 95 % intervals\n",
        f"Δ = a − b per seed (same seed: same data order, same input and head layers), mean and Student-t 95 % "
        f"interval over the pairs (Welch where the seed sets differ); p: two-sided, no difference; TOST p: "
        f"equivalence within ±{100 * st.MARGIN:g} point (the declared margin of every 'ties' / 'free' / "
        "'comparable' claim; equivalent when < 0.05).  Verdict: a 'higher' / 'lower' claim is confirmed when "
        "the interval excludes 0 on its side and contradicted when it excludes 0 on the other; an 'equal' "
        "claim is confirmed by TOST and contradicted when the interval excludes 0 without equivalence; "
        "everything else is 'cannot tell'.  'tuning seed' = Δ without the seed whose grid runs chose a "
        "compared lr (it is in the reported mean: a winner's curse for tuned rows); train acc = final train "
        "accuracy % of a / b; a verdict with * has an arm that trains but is under-trained (below 99 %): "
        "it holds at this budget only.\n",
        "| claim | source | says | a vs b | Δ [95 % CI] | n | p | TOST p | Δ without tuning seed | "
        "train acc a / b | verdict |",
        "|---" * 11 + "|",
    ]
    for e in rows:
        c = e["claim"]
        if e["status"] != "ok":
            L.append(f"| {c.text} | {c.source} | {c.kind} | — | {e['status']} | | | | | | cannot tell |")
            continue
        comp, (a, b) = e["comp"], e["arms"]
        scale, digits, unit = _scale(c)
        rest = "not reused" if not e["reused"] else ("n/a" if e["rest"] is None else _pts(e["rest"], scale, digits))
        n = f"{comp.n[0]}" if comp.paired else f"{comp.n[0]} / {comp.n[1]} (Welch)"
        acc = " / ".join(f"{100 * x:.0f}" for x in e["train"])
        L.append(
            f"| {c.text}{f' ({c.note})' if c.note else ''} | {c.source} | {c.kind} | {_arm_text(a)} vs "
            f"{_arm_text(b)} | {_pts(comp, scale, digits)} {unit} | {n} | {st.fmt_p(comp.p)} | "
            f"{st.fmt_p(comp.p_equiv) if c.metric == 'test_acc' else '—'} | {rest} | {acc} | **{_verdict(e)}** |"
        )
    L.append("")
    return L


def _verdict(e: dict) -> str:
    """The verdict, starred where an arm is under-trained (it then holds at this budget only)."""
    return e["verdict"] + ("*" if e["undertrained"] else "")


def _pts(comp: st.Comparison, scale: float, digits: int) -> str:
    return st.fmt_points(comp, scale, digits)


# ------------------------------------------------------------------ README
README_BEGIN = "<!-- paper-claims: generated by benchmarks/paper/claims.py from results.json; do not edit -->"
README_END = "<!-- paper-claims: end -->"


def readme_block(payload: dict, plan: Plan) -> str:
    """The claims block of benchmarks/paper/README.md: every number in it comes from results.json."""
    steps = payload["budget"]["steps"]
    ref_steps = 100 * 422  # EOI: 100 epochs of MNIST's 54,000 training images at batch 128
    done = [r for r in payload["runs"] if "error" not in r]
    by_steps = Counter(r.get("steps", steps) for r in done)
    lengths = ", ".join(
        f"{n} of {s:,} steps ({100 * s / ref_steps:.1f} %)" for s, n in sorted(by_steps.items(), reverse=True)
    )
    headline = sorted({seed for s in plan.settings if s.headline and s.seeds for seed in s.seeds})
    seeds = f"seeds {', '.join(map(str, plan.seeds))}"
    if headline and headline != sorted(plan.seeds):
        seeds += f" ({', '.join(map(str, headline))} on the headline rows: depth 100 / 1000)"
    if plan.tune_seed is not None and plan.tune_seed not in (*plan.seeds, *headline):
        seeds += f"; lrs chosen on seed {plan.tune_seed} (never reported)"
    choice = payload["choice"].get("mlp-d1000-tanh", {}).get("best", {})
    lines = [
        README_BEGIN,
        "",
        f"Run: {len(done)} runs: {lengths} of the reference's {ref_steps:,}; {seeds}; "
        + (
            f"depth-1000 best lrs: SAO {choice['sao']:g}, dense orthogonal {choice['orthogonal']:g} "
            f"({choice['sao'] / choice['orthogonal']:.1f}x), EOI-Givens {choice['eoi']:g}."
            if {"sao", "orthogonal", "eoi"} <= set(choice)
            else ""
        ),
        "",
        "| claim (source) | verdict | Δ a − b [95 % CI] | lr a / b | n |",
        "|---|---|---|---|---|",
    ]
    for e in evaluate(payload, plan):
        c = e["claim"]
        if e["status"] != "ok":
            lines.append(f"| {c.text} ({c.source}) | cannot tell: {e['status']} | — | — | — |")
            continue
        scale, digits, unit = _scale(c)
        comp = e["comp"]
        n = f"{comp.n[0]}" if comp.paired else f"{comp.n[0]}/{comp.n[1]}"
        lrs = " / ".join(f"{lr:g}" for _, _, lr, _ in e["arms"])
        lines.append(f"| {c.text} ({c.source}) | {_verdict(e)} | {_pts(comp, scale, digits)} {unit} | {lrs} | {n} |")
    lines += [
        "",
        f"Verdicts: paired t intervals over seeds, equivalence by TOST within ±{100 * st.MARGIN:g} point; * = an "
        f"arm trains but is under-trained (final train accuracy < {100 * FITS:g} %): the verdict holds at this "
        "budget only.",
        "",
        README_END,
    ]
    return "\n".join(lines)


def readme_block_in(text: str) -> str | None:
    """The generated block inside a README's text (None when the markers are missing)."""
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < 0:
        return None
    return text[i : j + len(README_END)]


def update_readme(path, payload: dict, plan: Plan) -> bool:
    """Rewrite the generated block of the README at ``path``; False when it has no markers."""
    text = path.read_text(encoding="utf-8")
    old = readme_block_in(text)
    if old is None:
        return False
    path.write_text(text.replace(old, readme_block(payload, plan)), encoding="utf-8")
    return True
