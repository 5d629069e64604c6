"""The training loop (the reference optimiser and schedule), the step-time pilot, and the
process pool that runs both.

Every run: SGD, Nesterov momentum 0.9, weight decay 1e-4 on every parameter, lr drops x0.1
at 50 % and 75 % of its steps (the reference MultiStepLR, per step instead of per epoch),
batch 128 drawn epoch by epoch from a per-seed permutation (the same data order for every
init of a seed), masks of pruned layers re-applied after every step.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import pathlib
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import EpochSampler, digits
from .models import apply_masks_, build
from .settings import OPTIMIZER


def setup_process() -> None:
    """One intra-op thread (2 workers share 2 cores) and denormals flushed to zero: in a
    1000-layer net whose signal decays, float32 denormals made steps 2x slower."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def make_optimizer(model: torch.nn.Module, lr: float, steps: int):
    opt = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=OPTIMIZER["momentum"],
        nesterov=OPTIMIZER["nesterov"],
        weight_decay=OPTIMIZER["weight_decay"],
    )
    milestones = sorted({max(1, int(f * steps)) for f in OPTIMIZER["milestones"]})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=OPTIMIZER["gamma"])
    return opt, sched


def evaluate(model: torch.nn.Module, split: str, chunk: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a whole split."""
    x, y = digits()[split]
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            out = model(x[s : s + chunk])
            loss += F.cross_entropy(out, y[s : s + chunk], reduction="sum").item()
            correct += int((out.argmax(1) == y[s : s + chunk]).sum())
    return loss / x.shape[0], correct / x.shape[0]


def _layer_grad_norms(model: torch.nn.Module) -> list[float]:
    """Gradient norm of each weight-carrying layer's weight (or SAO values), input first."""
    norms = []
    for m in model.modules():
        w = getattr(m, "values", None)
        if not isinstance(w, torch.nn.Parameter):
            w = getattr(m, "weight", None)
        if isinstance(w, torch.nn.Parameter) and w.grad is not None:
            norms.append(float(w.grad.norm()))
    return norms


def run_job(spec: dict) -> dict:
    """Train one model; returns the spec plus results, or the spec plus ``error`` when the
    model cannot be built (e.g. a block size that does not divide the group sides)."""
    setup_process()
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        model = build(spec)
    except ValueError as err:
        return {**spec, "error": str(err)}
    x, y = digits()["train"]
    steps = spec["steps"]
    opt, sched = make_optimizer(model, spec["lr"], steps)
    sampler = EpochSampler(x.shape[0], OPTIMIZER["batch"], 20_000 + spec["seed"])
    log_at = set(np.unique(np.linspace(0, steps, spec.get("log_points", 20) + 1).round().astype(int)).tolist())
    init_loss, init_acc = evaluate(model, "val")
    curve = [dict(step=0, train_loss=float("nan"), val_loss=init_loss, val_acc=init_acc, lr=spec["lr"])]
    window: list[float] = []
    diverged = False
    t_train = time.perf_counter()
    for step in range(1, steps + 1):
        idx = sampler.next()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        apply_masks_(model)
        value = loss.item()
        window.append(value)
        if not math.isfinite(value):
            diverged = True
            curve.append(dict(step=step, train_loss=float("nan"), val_loss=float("nan"), val_acc=0.1, lr=0.0))
            break
        if step in log_at:
            vl, va = evaluate(model, "val")
            curve.append(
                dict(
                    step=step, train_loss=float(np.mean(window)), val_loss=vl, val_acc=va, lr=opt.param_groups[0]["lr"]
                )
            )
            window = []
    train_seconds = time.perf_counter() - t_train
    train_loss, train_acc = evaluate(model, "train")
    val_loss, val_acc = evaluate(model, "val")
    test_loss, test_acc = evaluate(model, "test")
    bad = diverged or not math.isfinite(train_loss)
    return {
        **spec,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": 0.1 if bad else val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "diverged": bad,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "step_seconds": train_seconds / max(1, step),
    }


def pilot_job(spec: dict) -> dict:
    """Time ``pilot_steps`` training steps (after one warm-up) and the fixed per-run cost
    (build + evaluations); record the init-time gradient of every layer from the first step."""
    setup_process()
    t0 = time.process_time()
    try:
        model = build(spec)
    except ValueError as err:
        return {**spec, "error": str(err)}
    build_s = time.process_time() - t0
    x, y = digits()["train"]
    opt, _ = make_optimizer(model, spec["lr"], 1000)
    sampler = EpochSampler(x.shape[0], OPTIMIZER["batch"], 20_000 + spec["seed"])
    grads: list[float] = []
    times = []
    for k in range(spec["pilot_steps"] + 1):
        t = time.process_time()  # CPU time: the budget is in CPU-seconds, independent of other jobs' load
        idx = sampler.next()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if k == 0:
            grads = _layer_grad_norms(model)
        opt.step()
        apply_masks_(model)
        times.append(time.process_time() - t)
    t = time.process_time()
    evaluate(model, "val")
    eval_s = time.process_time() - t
    hidden = grads[1:-1]
    return {
        **spec,
        "step_seconds": float(np.median(times[1:])),
        "build_seconds": build_s,
        "eval_seconds": eval_s,
        "grad_first_hidden": hidden[0] if hidden else float("nan"),
        "grad_last_hidden": hidden[-1] if hidden else float("nan"),
        "hidden_layers_with_grad": int(sum(g > 0 for g in hidden)),
        "hidden_layers": len(hidden),
    }


class JobCache:
    """Finished jobs, one JSON line each, keyed by their spec: ``--resume`` reuses them after a
    crash or a kill (a spec includes the step count, so a new budget means new runs)."""

    def __init__(self, path: pathlib.Path, load: bool) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        if load and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.done[entry["key"]] = entry["result"]
        elif path.exists():
            path.unlink()

    @staticmethod
    def key(spec: dict) -> str:
        return json.dumps({k: v for k, v in spec.items() if k != "plan"}, sort_keys=True, default=str)

    def add(self, spec: dict, result: dict) -> None:
        key = self.key(spec)
        self.done[key] = result
        with self.path.open("a") as f:
            f.write(json.dumps(dict(key=key, result=result), default=float) + "\n")


def run_pool(
    fn: Callable[[dict], dict],
    jobs: list[dict],
    workers: int,
    log: Callable[[str], None],
    cost: Callable[[dict], float] = lambda j: 0.0,
    describe: Callable[[dict], str] = str,
    cache: JobCache | None = None,
) -> list[dict]:
    """Run ``fn`` over ``jobs``, most expensive first, in ``workers`` spawned processes (1: here)."""
    results: list[dict | None] = [None] * len(jobs)
    if cache is not None:
        for i, job in enumerate(jobs):
            results[i] = cache.done.get(cache.key(job))
        if any(r is not None for r in results):
            log(f"resume: {sum(r is not None for r in results)} of {len(jobs)} jobs from {cache.path}")
    order = sorted((i for i in range(len(jobs)) if results[i] is None), key=lambda i: -cost(jobs[i]))
    t0 = time.perf_counter()

    def done(i: int, res: dict, k: int) -> None:
        results[i] = res
        if cache is not None:
            cache.add(jobs[i], res)
        log(f"[{k}/{len(order)} {time.perf_counter() - t0:6.0f}s] {describe(res)}")

    if workers <= 1:
        for k, i in enumerate(order, start=1):
            done(i, fn(jobs[i]), k)
    else:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=setup_process) as pool:
            futures = {pool.submit(fn, jobs[i]): i for i in order}
            for k, fut in enumerate(cf.as_completed(futures), start=1):
                i = futures[fut]
                try:
                    res = fut.result()
                except Exception:  # a crash in one job must not lose the others
                    res = {**jobs[i], "error": "crashed: " + traceback.format_exc(limit=3)}
                done(i, res, k)
    return results  # type: ignore[return-value]
