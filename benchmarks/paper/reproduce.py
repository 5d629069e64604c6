"""The SAO paper's claims, measured at the reference settings: one command regenerates
benchmarks/paper/results/{results.md, results.json, *.png}.

    python benchmarks/paper/reproduce.py                      # full run, ~8 h on 2 idle CPU cores
    python benchmarks/paper/reproduce.py --budget-only        # the pilot only: budget and CPU-minutes
    python benchmarks/paper/reproduce.py --quick --out /tmp/q # CI smoke (tiny settings, same code path)
    python benchmarks/paper/reproduce.py --replot             # redraw tables / plots from results.json
    python benchmarks/paper/reproduce.py --replot --readme    # + the claims block of benchmarks/paper/README.md

Where things are: settings.py (the ONE table of reference configurations, the optimiser, the
init conventions, with the reference files they come from), models.py (the networks and
inits), training.py (the loop, the step-time pilot, the process pool), planning.py (budget
arithmetic, lr search, jobs), measures.py (init-time isometry / spread / connectivity /
orthogonality), statistics.py (paired t intervals, TOST, the verdict rule), claims.py (the
paper's claims as comparisons), reporting.py (results.md) and plotting.py (the figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "benchmarks" / "paper" / "README.md"  # where the generated claims block lives
# The repository's own sao_kernels (a frozen snapshot when run from one), then this folder as
# the package "paper"; spawned workers re-run these lines.
for path in (str(ROOT / "benchmarks"), str(ROOT)):
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)

import torch  # noqa: E402

from paper import claims, measures, planning, plotting, reporting, training  # noqa: E402
from paper.settings import Plan, Setting, quick_plan  # noqa: E402

#: Plan fields a results.json written before they existed lacks, with the values that run used.
LEGACY_PLAN = dict(tune_seed=None, extend_edges=0, plateau_steps=None)


def plan_from_dict(d: dict) -> Plan:
    d = {**LEGACY_PLAN, **d}
    d["settings"] = tuple(
        Setting(
            **{
                k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                for k, v in s.items()
            }
        )
        for s in d["settings"]
    )
    return Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _commit(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --commit)"


def _describe_run(r: dict) -> str:
    head = f"{r['setting']:22s} {r['method']:14s} lr={r['lr']:<7g} seed={r['seed']}"
    if "error" in r:
        return f"{head} cannot run: {r['error'][:120]}"
    return (
        f"{head} val={r['val_acc']:.3f} test={r['test_acc']:.3f} loss={r['train_loss']:.3f} "
        f"({r['seconds']:.0f}s, {1000 * r['step_seconds']:.0f} ms/step)"
    )


def _describe(r: dict) -> str:
    if "kind" in r:
        return f"measure {r['kind']} {r.get('sparsity', '')} {r.get('block', '')} ({r['seconds']:.0f}s)"
    if "pilot_steps" in r:
        if "error" in r:
            return f"pilot {r['setting']} {r['method']}: cannot build: {r['error'][:100]}"
        return f"pilot {r['setting']:22s} {r['method']:14s} {1000 * r['step_seconds']:.1f} ms/step"
    return _describe_run(r)


def write_outputs(out: pathlib.Path, payload: dict) -> list[str]:
    plan = payload["plan_obj"]
    (out / "results.md").write_text(reporting.markdown(payload, plan))
    return plotting.plots(out, reporting.reported_runs(payload, plan), plan)


def replot(out: pathlib.Path) -> dict:
    payload = json.loads((out / "results.json").read_text())
    payload["plan_obj"] = plan_from_dict(payload["plan"])
    write_outputs(out, payload)
    return payload


def _readme(path: pathlib.Path, payload: dict) -> None:
    if not claims.update_readme(path, payload, payload["plan_obj"]):
        raise SystemExit(f"--readme {path}: no generated claims block (markers {claims.README_BEGIN!r} ...)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a CI smoke run of the same code path")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "paper" / "results"), help="output folder")
    parser.add_argument("--workers", type=int, default=None, help="training processes (default 2; 1 = in-process)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="CPU-minutes per worker for the whole command (the wall time on an idle machine)",
    )
    parser.add_argument("--steps", type=int, default=None, help="fix the step count (skips the budget solver)")
    parser.add_argument(
        "--plateau-steps",
        type=int,
        default=None,
        help="steps of the headline rows (default: the plan's, EOI's 100 epochs); 0 = the common budget",
    )
    parser.add_argument("--commit", default=None, help="commit the code was taken from (default: git rev-parse)")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the finished jobs of an interrupted run (--out/jobs.cache.jsonl)"
    )
    parser.add_argument(
        "--budget-only", action="store_true", help="run only the step-time pilot and print the budget it implies"
    )
    parser.add_argument("--replot", action="store_true", help="only redraw results.md and plots from results.json")
    parser.add_argument(
        "--readme",
        nargs="?",
        const=str(README),
        default=None,
        help=f"also rewrite the generated claims block of this Markdown file from results.json (default {README})",
    )
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.replot:
        payload = replot(out)
        if args.readme:
            _readme(pathlib.Path(args.readme), payload)
        return payload

    t_start = time.perf_counter()
    plan = quick_plan() if args.quick else Plan()
    if args.workers is not None:
        plan.workers = args.workers
    if args.minutes is not None:
        plan.minutes = args.minutes
    if args.steps is not None:
        plan.fixed_steps = args.steps
    if args.plateau_steps is not None:
        plan.plateau_steps = args.plateau_steps or None
    out.mkdir(parents=True, exist_ok=True)
    training.setup_process()
    cache = None if args.budget_only else training.JobCache(out / "jobs.cache.jsonl", load=args.resume)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(
        f"reproduce: {'quick' if args.quick else 'full'} plan, {plan.workers} worker(s), target {plan.minutes} min, "
        f"sao_kernels from {measures.sk.__file__}"
    )
    timings: dict[str, float] = {}

    # 1. init-time measures and the step-time pilot, side by side in the pool
    t = time.perf_counter()
    measure_specs = [] if args.budget_only else [dict(m, plan=plan) for m in measures.measure_jobs(plan)]
    pilots_in = planning.pilot_jobs(plan)
    done = training.run_pool(
        measures.first_stage_job,
        measure_specs + pilots_in,
        plan.workers,
        log,
        cost=lambda j: j.get("cost", 50) if "kind" in j else 0,
        describe=_describe,
        cache=cache,
    )
    measured, pilots = done[: len(measure_specs)], done[len(measure_specs) :]
    timings["measures_and_pilot"] = time.perf_counter() - t
    pilot_map = {(p["setting"], p["method"]): p for p in pilots}
    buildable = {k for k, p in pilot_map.items() if "error" not in p}

    # 2. the budget, in CPU-seconds of the workers (on an idle machine: wall time x workers; when
    # other jobs share the cores the wall time stretches but the steps do not shrink): what is
    # left of the target after the first stage, minus the reporting and a margin for the tails
    spent = sum(r.get("cpu_seconds", 0.0) for r in measured) + sum(
        p.get("build_seconds", 0.0) + (p.get("pilot_steps", 0) + 1) * p.get("step_seconds", 0.0) for p in pilots
    )
    reserve_s = 30.0 * plan.workers
    worker_seconds = max(0.0, plan.minutes * 60 * plan.workers - spent - reserve_s) * 0.92
    budget = planning.solve_budget(plan, pilots, worker_seconds)
    steps = budget["steps"]
    log(
        f"budget: {worker_seconds:.0f} worker-s left, {budget['runs']} runs (worst case); headline rows "
        f"({plan.plateau_steps} steps) {budget['headline_seconds']:.0f} s; the rest "
        f"{budget['per_step_seconds']:.2f} s per common step + {budget['fixed_seconds']:.0f} s fixed "
        f"-> {steps} steps per run (cap {budget['cap']})"
    )
    if args.budget_only:
        for r in budget["rows"]:
            log(
                f"  {r['setting']:22s} {r['method']:14s} runs {r['runs']:2d} x {r['fixed_steps'] or steps:5d} steps "
                f"{1000 * r['step_seconds']:7.1f} ms/step fixed {r['fixed_seconds']:5.1f} s -> "
                f"{r['predicted_seconds']:6.0f} worker-s"
            )
        total = budget["predicted_worker_seconds"] + spent + reserve_s
        log(
            f"predicted cost of the full run (worst case): {total / 60:.0f} CPU-minutes = "
            f"{total / 60 / plan.workers:.0f} min wall on {plan.workers} idle cores (pilot "
            f"{spent / 60:.0f}, init-time measures not included, training "
            f"{budget['predicted_worker_seconds'] / 60:.0f}, reserve {reserve_s / 60:.0f}); "
            f"target {plan.minutes * plan.workers:.0f} CPU-minutes"
            + ("" if total <= plan.minutes * 60 * plan.workers else ": OVER the target, raise --minutes")
        )
        return dict(budget=budget, pilots=pilots, predicted_cpu_minutes=total / 60)

    # 3. lr grid at the first seed, then the other seeds
    def cost(j: dict) -> float:
        return planning.predicted_seconds(j, pilot_map)

    t = time.perf_counter()
    setting_steps = budget["setting_steps"]
    phase1 = training.run_pool(
        training.run_job,
        planning.phase1_jobs(plan, setting_steps, buildable),
        plan.workers,
        log,
        cost=cost,
        describe=_describe_run,
        cache=cache,
    )
    for _ in range(plan.extend_edges):  # a best lr at a grid edge: one more ladder step beyond it
        more = planning.edge_jobs(plan, setting_steps, [r for r in phase1 if r.get("role") == "grid"])
        if not more:
            break
        log(f"grid edges: {len(more)} more lr(s)")
        phase1 += training.run_pool(
            training.run_job, more, plan.workers, log, cost=cost, describe=_describe_run, cache=cache
        )
    timings["phase1"] = time.perf_counter() - t
    choice = planning.choose_lrs(plan, [r for r in phase1 if r.get("role") == "grid"])
    for key, c in choice.items():
        log(f"lr {key}: shared {c['shared']}, best " + ", ".join(f"{m} {lr:g}" for m, lr in c["best"].items()))
    t = time.perf_counter()
    phase2 = training.run_pool(
        training.run_job,
        planning.phase2_jobs(plan, setting_steps, choice, buildable),
        plan.workers,
        log,
        cost=cost,
        describe=_describe_run,
        cache=cache,
    )
    timings["phase2"] = time.perf_counter() - t

    runs = phase1 + phase2
    commit = _commit(args.commit)
    meta = dict(
        device=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"{plan.workers} worker process(es) x 1 thread",
        torch=torch.__version__,
        commit=commit,
        sao_kernels_path=measures.sk.__file__,
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        command=" ".join(["python benchmarks/paper/reproduce.py", *(argv if argv is not None else sys.argv[1:])]),
        quick=args.quick,
        timings=timings,
        wall_s=time.perf_counter() - t_start,
    )
    payload = dict(
        meta=meta,
        plan=dataclasses.asdict(plan),
        budget=budget,
        pilots=pilots,
        choice=choice,
        runs=runs,
        measures=measured,
    )
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    if cache is not None:
        cache.path.unlink(missing_ok=True)
    payload["plan_obj"] = plan
    files = write_outputs(out, payload)
    if args.readme:
        _readme(pathlib.Path(args.readme), payload)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, " + ", ".join(str(out / f) for f in files))
    log(f"total {time.perf_counter() - t_start:.0f} s (commit {commit})")
    return payload


if __name__ == "__main__":
    main()
