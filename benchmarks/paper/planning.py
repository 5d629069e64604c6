"""From the settings table to jobs: the step-time pilot's arithmetic, the step budget, the
learning-rate search, and the per-seed runs.

Protocol per setting (see settings.Setting and settings.Plan):
  phase 1  every tuned init runs every grid lr at the tuning seed (Plan.tune_seed: a seed that
           is never reported; legacy None: the first reported seed, whose grid runs then enter
           the reported mean); untuned inits of a setting with a fixed shared lr run all seeds;
  extend   while a tuned init's best lr sits at an edge of the lrs tried, the next lr on the
           1-3-10 ladder beyond that edge runs at the tuning seed (at most Plan.extend_edges);
  choose   best lr of an init = the lr with the highest final validation accuracy at the
           tuning seed (ties: lower validation loss); shared lr = the reference's lr, or the
           best lr of the setting's dense baseline;
  phase 2  the reported seeds at the best lr and (for ``shared_also`` inits, when it differs)
           at the shared lr; untuned inits at the shared lr; ``lr_from`` inits at their
           source's best lr.
Test accuracy is never used to choose anything.

Budget: headline settings train Plan.plateau_steps steps; every other run gets the same number
of steps S, the largest that fits what the CPU target leaves after the headline rows, given the
pilot's measured step times (worst case: every grid extended, every best lr differs from the
shared one), capped at the reference's 100 epochs.
"""

from __future__ import annotations

import math

from .data import steps_per_epoch
from .settings import OPTIMIZER, Plan, Setting


def headline_steps(s: Setting, plan: Plan) -> int | None:
    """The fixed step count of a headline setting, None for the common budget."""
    return plan.plateau_steps if s.headline and plan.plateau_steps is not None else None


def base_spec(s: Setting, method: str, plan: Plan) -> dict:
    spec = dict(
        setting=s.key,
        arch=s.arch,
        depth=s.depth,
        act=s.act,
        sparsity=s.sparsity,
        convention=s.convention,
        width=s.width,
        channels=s.channels,
        method=method,
        log_points=plan.plateau_log_points if headline_steps(s, plan) else plan.log_points,
    )
    if s.padding is not None:
        spec["padding"] = s.padding
    return spec


def tuning_seed(s: Setting, plan: Plan) -> int:
    return plan.tune_seed if plan.tune_seed is not None else seeds_of(s, plan)[0]


def ladder(lr: float, direction: int) -> float:
    """The next lr on the 1-3-10 ladder above (direction +1) or below (-1) ``lr``."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10**exponent
    factor = (3.0 if mantissa < 2 else 10 / 3) if direction > 0 else (1 / 3 if mantissa > 2 else 0.3)
    return float(f"{lr * factor:.0e}")


def pilot_jobs(plan: Plan) -> list[dict]:
    """One short timing job per (setting, init), at the first seed and the smallest grid lr."""
    return [
        dict(base_spec(s, m, plan), seed=seeds_of(s, plan)[0], lr=s.lr_grid[0], pilot_steps=plan.pilot_steps)
        for s in plan.settings
        for m in s.methods
    ]


def seeds_of(s: Setting, plan: Plan) -> tuple[int, ...]:
    return s.seeds if s.seeds is not None else plan.seeds


def planned_runs(s: Setting, method: str, plan: Plan) -> int:
    """Worst-case number of training runs of one init of one setting."""
    seeds = seeds_of(s, plan)
    if method not in s.tuned:
        return len(seeds)
    reused = tuning_seed(s, plan) in seeds  # legacy: the grid run at the tuning seed is reported
    grid = len(s.lr_grid) + plan.extend_edges
    best = len(seeds) - reused
    if (s.shared_lr is None and method == s.baseline) or (s.shared_also is not None and method not in s.shared_also):
        return grid + best  # its best lr is the shared lr by definition, or no claim needs its shared row
    shared_in_grid = s.shared_lr is None or s.shared_lr in s.lr_grid
    return grid + best + len(seeds) - (reused and shared_in_grid)


def cap_steps(plan: Plan) -> int:
    return plan.cap_epochs * steps_per_epoch(OPTIMIZER["batch"])


def solve_budget(plan: Plan, pilots: list[dict], worker_seconds: float) -> dict:
    """The common step count S, the headline rows' fixed steps, and the arithmetic behind them.

    Predicted cost of a run = steps * step_seconds + fixed, fixed = build + (log_points + 13)
    validation-sized evaluations (the final train / val / test evaluations are ~12 of them).
    Headline rows are paid first; S shares what is left.
    """
    cap = cap_steps(plan)
    by_key = {s.key: s for s in plan.settings}
    rows = []
    for p in pilots:
        if "error" in p:
            continue
        s = by_key[p["setting"]]
        fixed_steps = headline_steps(s, plan)
        points = plan.plateau_log_points if fixed_steps else plan.log_points
        rows.append(
            dict(
                setting=p["setting"],
                method=p["method"],
                runs=planned_runs(s, p["method"], plan),
                step_seconds=p["step_seconds"],
                fixed_seconds=p["build_seconds"] + (points + 13) * p["eval_seconds"],
                fixed_steps=fixed_steps,
            )
        )
    flex = [r for r in rows if r["fixed_steps"] is None]
    per_step = sum(r["runs"] * r["step_seconds"] for r in flex)
    fixed = sum(r["runs"] * r["fixed_seconds"] for r in flex)
    headline = sum(
        r["runs"] * (r["fixed_steps"] * r["step_seconds"] + r["fixed_seconds"]) for r in rows if r["fixed_steps"]
    )
    left = worker_seconds - headline
    if plan.fixed_steps is not None:
        steps = plan.fixed_steps
    else:
        steps = (left - fixed) / per_step if per_step > 0 else cap
        steps = int(min(cap, max(plan.min_steps, steps)) // plan.step_quantum * plan.step_quantum)
        steps = max(plan.min_steps, steps)
    for r in rows:
        r["predicted_seconds"] = r["runs"] * ((r["fixed_steps"] or steps) * r["step_seconds"] + r["fixed_seconds"])
    setting_steps = {s.key: headline_steps(s, plan) or steps for s in plan.settings}
    return dict(
        steps=steps,
        cap=cap,
        worker_seconds=worker_seconds,
        per_step_seconds=per_step,
        fixed_seconds=fixed,
        headline_seconds=headline,
        setting_steps=setting_steps,
        predicted_worker_seconds=per_step * steps + fixed + headline,
        runs=sum(r["runs"] for r in rows),
        rows=rows,
    )


def steps_for(steps: int | dict, s: Setting) -> int:
    """``steps``: one count for every setting, or {setting key: count} (solve_budget's setting_steps)."""
    return steps if isinstance(steps, int) else steps[s.key]


def predicted_seconds(job: dict, pilots: dict) -> float:
    p = pilots.get((job["setting"], job["method"]))
    return 0.0 if p is None or "error" in p else job["steps"] * p["step_seconds"]


def phase1_jobs(plan: Plan, steps: int | dict, buildable: set) -> list[dict]:
    jobs = []
    for s in plan.settings:
        n = steps_for(steps, s)
        for m in s.tuned:
            if (s.key, m) in buildable:
                jobs += [
                    dict(base_spec(s, m, plan), lr=lr, seed=tuning_seed(s, plan), steps=n, role="grid")
                    for lr in s.lr_grid
                ]
        if s.shared_lr is not None:
            for m in s.untuned:
                if (s.key, m) in buildable:
                    jobs += [
                        dict(base_spec(s, m, plan), lr=s.shared_lr, seed=seed, steps=n, role="untuned")
                        for seed in seeds_of(s, plan)
                    ]
    return jobs


def edge_jobs(plan: Plan, steps: int | dict, grid_results: list[dict]) -> list[dict]:
    """One more grid lr, at the tuning seed, for every tuned init whose best lr so far sits at
    an edge of the lrs it tried (the next ladder step beyond that edge), while fewer than
    ``plan.extend_edges`` lrs beyond the setting's grid have been tried."""
    jobs = []
    for s in plan.settings:
        for m in s.tuned:
            rs = [r for r in grid_results if r["setting"] == s.key and r["method"] == m and "error" not in r]
            if not rs:
                continue
            tried = sorted({r["lr"] for r in rs})
            if sum(lr not in s.lr_grid for lr in tried) >= plan.extend_edges or len(tried) < 2:
                continue
            best = max(rs, key=_rank)["lr"]
            direction = -1 if best == tried[0] else (1 if best == tried[-1] else 0)
            if direction:
                spec = dict(base_spec(s, m, plan), lr=ladder(best, direction), seed=tuning_seed(s, plan))
                jobs.append(dict(spec, steps=steps_for(steps, s), role="grid"))
    return jobs


def _rank(r: dict) -> tuple:
    return (r["val_acc"], -r["val_loss"] if math.isfinite(r["val_loss"]) else -math.inf)


def choose_lrs(plan: Plan, grid_results: list[dict]) -> dict:
    """{setting key: {"shared": lr, "best": {method: lr}, "grid": {method: [[lr, val_acc, val_loss], ...]}}}."""
    out = {}
    for s in plan.settings:
        best, grid = {}, {}
        for m in s.tuned:
            rs = [r for r in grid_results if r["setting"] == s.key and r["method"] == m and "error" not in r]
            if not rs:
                continue
            grid[m] = [[r["lr"], r["val_acc"], r["val_loss"]] for r in sorted(rs, key=lambda r: r["lr"])]
            best[m] = max(rs, key=_rank)["lr"]
        shared = s.shared_lr if s.shared_lr is not None else best.get(s.baseline)
        out[s.key] = dict(shared=shared, best=best, grid=grid)
    return out


def phase2_jobs(plan: Plan, steps: int | dict, choice: dict, buildable: set) -> list[dict]:
    jobs = []
    for s in plan.settings:
        c = choice[s.key]
        seeds = seeds_of(s, plan)
        tune = tuning_seed(s, plan)
        n = steps_for(steps, s)
        for m in s.tuned:
            if m not in c["best"]:
                continue
            tried = {lr for lr, _, _ in c["grid"].get(m, [])} | set(s.lr_grid)
            lrs = [c["best"][m]]
            if c["shared"] not in (None, c["best"][m]) and (s.shared_also is None or m in s.shared_also):
                lrs.append(c["shared"])
            for lr in lrs:
                jobs += [
                    dict(base_spec(s, m, plan), lr=lr, seed=seed, steps=n, role="seed")
                    for seed in seeds
                    if not (seed == tune and lr in tried)  # legacy: that run is the grid run
                ]
        if s.shared_lr is None and c["shared"] is not None:
            jobs += [
                dict(base_spec(s, m, plan), lr=c["shared"], seed=seed, steps=n, role="untuned")
                for m in s.untuned
                if (s.key, m) in buildable
                for seed in seeds
            ]
        for m, source in s.lr_from:
            if (s.key, m) in buildable and source in c["best"]:
                jobs += [
                    dict(base_spec(s, m, plan), lr=c["best"][source], seed=seed, steps=n, role="lr_from")
                    for seed in seeds
                ]
    return jobs
