"""From the settings table to jobs: the step-time pilot's arithmetic, the step budget, the
learning-rate search, and the per-seed runs.

Protocol per setting (see settings.Setting):
  phase 1  every tuned init runs every grid lr at the first seed; untuned inits of a setting
           with a fixed shared lr run all seeds at it;
  choose   best lr of an init = the grid lr with the highest final validation accuracy at the
           first seed (ties: lower validation loss); shared lr = the reference's lr, or the
           best lr of the setting's dense baseline;
  phase 2  the other seeds at the best lr and (when it differs) at the shared lr; untuned
           inits at the shared lr; ``lr_from`` inits at their source's best lr, all seeds.
Test accuracy is never used to choose anything.

Budget: every run of the whole reproduction gets the same number of steps S, the largest
that fits the wall-time target given the pilot's measured step times (worst case: every
best lr differs from the shared one), capped at the reference's 100 epochs.
"""

from __future__ import annotations

import math

from .data import steps_per_epoch
from .settings import OPTIMIZER, Plan, Setting


def base_spec(s: Setting, method: str, plan: Plan) -> dict:
    return dict(
        setting=s.key,
        arch=s.arch,
        depth=s.depth,
        act=s.act,
        sparsity=s.sparsity,
        convention=s.convention,
        width=s.width,
        channels=s.channels,
        method=method,
        log_points=plan.log_points,
    )


def pilot_jobs(plan: Plan) -> list[dict]:
    """One short timing job per (setting, init), at the first seed and the smallest grid lr."""
    return [
        dict(base_spec(s, m, plan), seed=seeds_of(s, plan)[0], lr=s.lr_grid[0], pilot_steps=plan.pilot_steps)
        for s in plan.settings
        for m in s.methods
    ]


def seeds_of(s: Setting, plan: Plan) -> tuple[int, ...]:
    return s.seeds if s.seeds is not None else plan.seeds


def planned_runs(s: Setting, method: str, seeds: int) -> int:
    """Worst-case number of training runs of one init of one setting."""
    if method in s.tuned:
        if s.shared_lr is None and method == s.baseline:
            return len(s.lr_grid) + seeds - 1  # its best lr is the shared lr by definition
        shared_in_grid = 1 if (s.shared_lr is None or s.shared_lr in s.lr_grid) else 0
        return len(s.lr_grid) + 2 * (seeds - 1) + (1 - shared_in_grid)
    return seeds


def cap_steps(plan: Plan) -> int:
    return plan.cap_epochs * steps_per_epoch(OPTIMIZER["batch"])


def solve_budget(plan: Plan, pilots: list[dict], worker_seconds: float) -> dict:
    """The common step count S and the arithmetic behind it.

    Predicted cost of a run = S * step_seconds + fixed, fixed = build + (log_points + 13)
    validation-sized evaluations (the final train / val / test evaluations are ~12 of them).
    """
    cap = cap_steps(plan)
    rows = []
    for p in pilots:
        if "error" in p:
            continue
        s = next(x for x in plan.settings if x.key == p["setting"])
        n = planned_runs(s, p["method"], len(seeds_of(s, plan)))
        fixed = p["build_seconds"] + (plan.log_points + 13) * p["eval_seconds"]
        rows.append(
            dict(setting=p["setting"], method=p["method"], runs=n, step_seconds=p["step_seconds"], fixed_seconds=fixed)
        )
    per_step = sum(r["runs"] * r["step_seconds"] for r in rows)
    fixed = sum(r["runs"] * r["fixed_seconds"] for r in rows)
    if plan.fixed_steps is not None:
        steps = plan.fixed_steps
    else:
        steps = (worker_seconds - fixed) / per_step if per_step > 0 else cap
        steps = int(min(cap, max(plan.min_steps, steps)) // plan.step_quantum * plan.step_quantum)
        steps = max(plan.min_steps, steps)
    for r in rows:
        r["predicted_seconds"] = r["runs"] * (steps * r["step_seconds"] + r["fixed_seconds"])
    return dict(
        steps=steps,
        cap=cap,
        worker_seconds=worker_seconds,
        per_step_seconds=per_step,
        fixed_seconds=fixed,
        predicted_worker_seconds=per_step * steps + fixed,
        runs=sum(r["runs"] for r in rows),
        rows=rows,
    )


def predicted_seconds(job: dict, pilots: dict) -> float:
    p = pilots.get((job["setting"], job["method"]))
    return 0.0 if p is None or "error" in p else job["steps"] * p["step_seconds"]


def phase1_jobs(plan: Plan, steps: int, buildable: set) -> list[dict]:
    jobs = []
    for s in plan.settings:
        for m in s.tuned:
            if (s.key, m) in buildable:
                jobs += [
                    dict(base_spec(s, m, plan), lr=lr, seed=seeds_of(s, plan)[0], steps=steps, role="grid")
                    for lr in s.lr_grid
                ]
        if s.shared_lr is not None:
            for m in s.untuned:
                if (s.key, m) in buildable:
                    jobs += [
                        dict(base_spec(s, m, plan), lr=s.shared_lr, seed=seed, steps=steps, role="untuned")
                        for seed in seeds_of(s, plan)
                    ]
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


def phase2_jobs(plan: Plan, steps: int, choice: dict, buildable: set) -> list[dict]:
    jobs = []
    for s in plan.settings:
        c = choice[s.key]
        seeds = seeds_of(s, plan)
        rest = seeds[1:]
        for m in s.tuned:
            if m not in c["best"]:
                continue
            lrs = [c["best"][m]] + ([c["shared"]] if c["shared"] not in (None, c["best"][m]) else [])
            for lr in lrs:
                jobs += [
                    dict(base_spec(s, m, plan), lr=lr, seed=seed, steps=steps, role="seed")
                    for seed in (rest if lr in s.lr_grid else seeds)
                ]
        if s.shared_lr is None and c["shared"] is not None:
            jobs += [
                dict(base_spec(s, m, plan), lr=c["shared"], seed=seed, steps=steps, role="untuned")
                for m in s.untuned
                if (s.key, m) in buildable
                for seed in seeds
            ]
        for m, source in s.lr_from:
            if (s.key, m) in buildable and source in c["best"]:
                jobs += [
                    dict(base_spec(s, m, plan), lr=c["best"][source], seed=seed, steps=steps, role="lr_from")
                    for seed in seeds
                ]
    return jobs
