"""``python -m sao_kernels bench --suite tiers``: one table per CPU tier (issue 20).

For each tier this CPU can emulate (``sao_kernels.cpu.emulable_tiers``) the command re-runs
itself in a subprocess with the tier's caps (``cpu.tier_env``), which measures, per dtype
(float32, bfloat16) and mode, SAOLinear at each G against ``nn.Linear`` of the same dtype and
against the pre-gathered ``torch.bmm`` bound, all interleaved in the same rounds:

* ``fwd``: forward under ``torch.inference_mode`` at T tokens;
* ``fwd_frozen``: the same inside ``sao_kernels.frozen_weights()`` (the native forward keeps the
  weights' re-laid copies between calls: ``weight_cache.py``);
* ``fwd_bwd``: forward + backward (input, weight and bias grads);
* ``decode T=1`` / ``decode T=16``: forward under ``inference_mode`` at 1 and 16 tokens.

The bound does the same GEMMs on blocks gathered beforehand (not timed): forward
``bmm(X_g, V_g^T)``; forward + backward adds ``bmm(dY_g, V_g)`` and ``bmm(dY_g^T, X_g)``.
A candidate whose first call takes longer than ``slow_call`` seconds (dense bfloat16 on a tier
where oneDNN has no bf16 GEMM runs a reference loop) is not repeated: its one call is
recorded and the row says so.  Files: ``<out>/tiers_<machine>_<date>/<tier>.{json,csv,md}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..weight_cache import frozen_weights
from .results import TIMING_FIELDS, fmt_ms, fmt_speedup, fresh_folder, results_markdown, write_results
from .steps import fwd_bwd_step
from .timing import Stats, TimingSettings, compare, interleave

MODES = ("fwd", "fwd_frozen", "fwd_bwd", "decode1", "decode16")
MODE_TOKENS = {"decode1": 1, "decode16": 16}
TIER_FIELDS = (
    ("tier", "dtype", "mode", "tokens", "width", "groups")
    + TIMING_FIELDS
    + (
        "ms_bmm",
        "ms_bmm_iqr",
        "vs_bmm",
        "vs_bmm_lo",
        "vs_bmm_hi",
        "target",
        "dense_once",
        "cross_core_before",
        "cross_core_after",
    )
)


@dataclasses.dataclass(frozen=True)
class TierConfig:
    """What one tier measures (defaults: issue 20's targets; :meth:`quick`: a few seconds)."""

    width: int = 4096
    tokens: int = 512
    groups: tuple[int, ...] = (2, 4, 8)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    modes: tuple[str, ...] = MODES
    slow_call: float = 5.0

    @classmethod
    def quick(cls) -> TierConfig:
        return cls(width=256, tokens=64, groups=(2, 4))


def _inference(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return fn()

    return call


def _steps(
    mode: str, T: int, f: int, dtype: torch.dtype, groups: Sequence[int], gen: torch.Generator, layers: bool = True
) -> dict:
    """{"dense": fn, "G=g": fn, "bmm G=g": fn} for one (dtype, mode); ``layers=False``: no SAO
    layers, and the bound on random blocks (a probe of the baselines' speed)."""
    from ..layers import SAOLinear

    x = torch.randn(T, f, generator=gen).to(dtype)
    dense = nn.Linear(f, f, dtype=dtype)
    fns: dict[str, Callable[[], object]] = {}
    gy = torch.randn(T, f, generator=gen).to(dtype)
    if mode == "fwd_bwd":
        fns["dense"] = fwd_bwd_step(dense, x, gy, dense.parameters())
    else:
        fns["dense"] = _inference(lambda: dense(x))
    for G in groups:
        if layers:
            layer = SAOLinear(f, f, groups=G, generator=gen, dtype=dtype)
            if mode == "fwd_bwd":
                fns[f"G={G}"] = fwd_bwd_step(layer, x, gy, layer.parameters())
            else:
                fns[f"G={G}"] = _inference(lambda layer=layer: layer(x))
            v, ii, oi = layer.values.detach(), layer.in_index, layer.out_index
        else:
            v, ii, oi = torch.randn(G, f // G, f // G, generator=gen).to(dtype), None, None
        # the bound: the same GEMMs on operands gathered (and transposed) beforehand
        a, c = v.shape[1], v.shape[2]
        ii = ii if ii is not None else torch.arange(f)
        oi = oi if oi is not None else torch.arange(f)
        xg = x[:, ii].view(T, G, c).transpose(0, 1).contiguous()  # (G, T, c)
        vt = v.transpose(1, 2).contiguous()  # (G, c, a)
        if mode == "fwd_bwd":
            dyg = gy[:, oi].view(T, G, a).transpose(0, 1).contiguous()  # (G, T, a)
            dygt = dyg.transpose(1, 2).contiguous()  # (G, a, T)

            def bound(xg=xg, vt=vt, v=v, dyg=dyg, dygt=dygt):
                torch.bmm(xg, vt)
                torch.bmm(dyg, v)
                torch.bmm(dygt, xg)

            fns[f"bmm G={G}"] = bound
        else:
            fns[f"bmm G={G}"] = _inference(lambda xg=xg, vt=vt: torch.bmm(xg, vt))
    return fns


PROBE_TOKENS = 8


def _estimates(mode: str, T: int, f: int, dtype: torch.dtype, groups, gen, slow_call: float) -> dict[str, str]:
    """Baselines too slow to time at T tokens, with why: each is first timed at PROBE_TOKENS
    tokens (after a warm-up call), and one whose call would take over 10 x ``slow_call``
    (scaled by T) is left out
    (dense bfloat16 on a tier without a bf16 GEMM runs a reference loop: minutes per call)."""
    if T <= PROBE_TOKENS:
        return {}
    skip = {}
    for name, fn in _steps(mode, PROBE_TOKENS, f, dtype, groups, gen, layers=False).items():
        fn()  # warm-up (library initialisation, JIT): the second call is the probe
        start = time.perf_counter()
        fn()
        est = (time.perf_counter() - start) * T / PROBE_TOKENS
        if est > 10 * slow_call:
            skip[name] = f"{name} not timed: a {PROBE_TOKENS}-token call implies ~{est:.0f} s per call at T={T}"
    return skip


def _timed(fns: dict, settings: TimingSettings, slow_call: float) -> tuple[dict[str, Stats], set[str]]:
    """Stats per name; a name whose first call took over ``slow_call`` s is timed only by
    that call (returned in the set)."""
    once: dict[str, Stats] = {}
    for name, fn in list(fns.items()):
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        if seconds > slow_call:
            once[name] = Stats((1e3 * seconds,))
            del fns[name]
    stats = interleave(fns, settings) if fns else {}
    return {**stats, **once}, set(once)


class _None:  # the statistics of a baseline that was not timed
    median_ms = min_ms = iqr_ms = None


_NONE = _None()


def _target(mode: str, G: int) -> float:
    """Issue 20's targets vs nn.Linear: 0.85 G for training shapes, 0.8 G for decode."""
    return (0.8 if mode.startswith("decode") else 0.85) * G


def measure_tier(tier: str, cfg: TierConfig, settings: TimingSettings, progress=None) -> list[dict]:
    """Rows of one tier (measured in this process: its caps must already be in force)."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype_name in cfg.dtypes:
        dtype = getattr(torch, dtype_name)
        for mode in cfg.modes:
            T = MODE_TOKENS.get(mode, cfg.tokens)
            skip = _estimates(mode, T, cfg.width, dtype, cfg.groups, gen, cfg.slow_call)
            fns = {k: v for k, v in _steps(mode, T, cfg.width, dtype, cfg.groups, gen).items() if k not in skip}
            probe_before = _probe_ratio()
            with frozen_weights() if mode == "fwd_frozen" else contextlib.nullcontext():
                stats, once = _timed(fns, settings, cfg.slow_call)
            probe_after = _probe_ratio()
            for G in cfg.groups:
                sao_key = f"G={G}"
                sao = stats[sao_key]
                row = dict(tier=tier, dtype=dtype_name, mode=mode, tokens=T, width=cfg.width, groups=G)
                row["dense_once"] = "dense" in once
                for base_key, tag in (("dense", ""), (f"bmm G={G}", "_bmm")):
                    base = stats.get(base_key)
                    if base is None:  # too slow to time (see _estimates)
                        value, lo, hi, flag, reason = None, None, None, "untimed", skip[base_key]
                        base = _NONE
                    elif not {sao_key, base_key} & once:
                        ideal = None if tag else float(G)
                        cmp = compare(base, sao, ideal=ideal, flag_rel_spread=settings.flag_rel_spread)
                        value, lo, hi = cmp.speedup.value, cmp.speedup.lo, cmp.speedup.hi
                        flag, reason = cmp.flag, cmp.flag_reason
                    else:  # one side was timed by one call: no interval
                        value, lo, hi = base.min_ms / sao.median_ms, None, None
                        slow = "SAO" if sao_key in once else base_key
                        flag, reason = "once", f"{slow} timed by one call (> {cfg.slow_call:g} s): no interval"
                    if not tag:
                        row.update(
                            ms=sao.median_ms,
                            ms_min=sao.min_ms,
                            ms_iqr=sao.iqr_ms,
                            ms_dense=base.median_ms,
                            ms_dense_min=base.min_ms,
                            ms_dense_iqr=base.iqr_ms,
                            speedup=value,
                            speedup_lo=lo,
                            speedup_hi=hi,
                            ideal_speedup=float(G),
                            rounds=sao.rounds,
                            flag=flag,
                            flag_reason=reason,
                        )
                        continue
                    row.update(ms_bmm=base.median_ms, ms_bmm_iqr=base.iqr_ms, vs_bmm=value, vs_bmm_lo=lo, vs_bmm_hi=hi)
                    if flag:
                        row["flag"] = ",".join(dict.fromkeys(filter(None, (*row["flag"].split(","), flag))))
                        row["flag_reason"] = "; ".join(filter(None, (row["flag_reason"], f"vs bmm: {reason}")))
                row["target"] = _target(mode, G)
                row["cross_core_before"], row["cross_core_after"] = probe_before, probe_after
                rows.append(row)
            if progress:
                progress(f"{tier} {dtype_name} {mode}")
    return rows


def _probe_ratio() -> float | None:
    """The cross-core probe's ratio now (machine.cross_core_probe), None where it cannot run: the
    two-thread rows of a VM move with it, so each timed block records it before and after."""
    from .machine import cross_core_probe

    probe = cross_core_probe()
    return None if probe is None else probe["ratio"]


def _fmt_probe(r: dict) -> str:
    from .machine import cross_core_ratios

    ratios = [r.get(k) for k in ("cross_core_before", "cross_core_after")]
    return "" if ratios == [None, None] else cross_core_ratios(ratios)


def _vs_bmm(r: dict) -> str:
    if r.get("vs_bmm") is None:
        return ""
    ci = f" [{r['vs_bmm_lo']:.2f}-{r['vs_bmm_hi']:.2f}]" if r.get("vs_bmm_lo") is not None else ""
    return f"{r['vs_bmm']:.2f}x{ci}"


COLUMNS = [
    ("dtype", lambda r: r["dtype"], False),
    ("mode", lambda r: r["mode"], False),
    ("T", lambda r: str(r["tokens"]), True),
    ("G", lambda r: str(r["groups"]), True),
    ("SAO ms (IQR)", fmt_ms, True),
    ("nn.Linear ms (IQR)", lambda r: fmt_ms(r, side="_dense") + (" once" if r.get("dense_once") else ""), True),
    ("vs nn.Linear [95% CI]", fmt_speedup, True),
    ("target", lambda r: f"{r['target']:.2g}x", True),
    ("bmm bound ms", lambda r: "" if r.get("ms_bmm") is None else f"{r['ms_bmm']:.4g}", True),
    ("vs bmm [95% CI]", _vs_bmm, True),
    ("cross-core", _fmt_probe, True),
]


def write_tier_results(rows: Sequence[dict], meta: dict, out_dir, tier: str, settings: TimingSettings) -> dict:
    """``<out_dir>/<tier>.{json,csv,md}``, atomically."""
    info = meta.get("cpu_tiers") or {}
    notes = [
        f"CPU tier `{tier}` on {meta.get('cpu')}: native kernels at `{info.get('tier')}` (hardware "
        f"`{info.get('hardware_tier')}`), ATen at `{info.get('aten_capability')}`, DNNL_MAX_CPU_ISA="
        f"`{info.get('dnnl_max_cpu_isa')}`, MKL_ENABLE_INSTRUCTIONS=`{info.get('mkl_enable_instructions')}`.",
        "Modes: fwd = forward under inference_mode at T tokens; fwd_frozen = the same inside "
        "sao_kernels.frozen_weights() (re-laid weights kept between calls); fwd_bwd = forward + backward "
        "(input, weight, bias grads); decode1 / decode16 = forward under inference_mode at 1 / 16 tokens. "
        "Baselines: nn.Linear of the "
        "same dtype; bmm = torch.bmm on blocks gathered beforehand (forward: X_g V_g^T; fwd_bwd: plus dY_g V_g and "
        "dY_g^T X_g), the GEMMs alone. vs bmm = bmm ms / SAO ms (issue 20 asks >= 0.9). target = issue 20's "
        "0.85 G (0.8 G for decode) vs nn.Linear. 'once' = timed by one call only (it took over the slow-call "
        "limit), no interval; 'untimed' = not timed at all (see the flag: a call would take minutes). "
        "cross-core = the cross-core probe before / after the row's timed block (reading data the other core "
        "wrote against one's own; ~1.5 where the cores share an L3, ~5 on this VM when they do not: multi-threaded "
        "SAO rows read low then, docs/benchmarks.md).",
    ]
    md = results_markdown(
        rows,
        meta,
        what=f"SAOLinear vs nn.Linear and the bmm bound, CPU tier {tier}",
        columns=COLUMNS,
        flag_spread=settings.flag_rel_spread,
        notes=notes,
    )
    return write_results(out_dir, rows, meta, stem=tier, fields=TIER_FIELDS, markdown=md)


# ------------------------------------------------------------------ the tier's process
def env_mismatch(tier: str) -> dict[str, str]:
    """The variables of ``cpu.tier_env(tier)`` that this process does not have as required
    (empty: it already runs under the tier's caps)."""
    import os

    from ..cpu import tier_env

    return {k: v for k, v in tier_env(tier).items() if os.environ.get(k) != v}


def run_under_tier(tier: str, argv: Sequence[str]) -> int:
    """Run ``python -m sao_kernels <argv>`` in a subprocess with the tier's caps; its exit
    status.  (The caps must be set before torch loads, hence the subprocess.)"""
    import os
    import subprocess
    import sys

    from ..cpu import tier_env

    env = {**os.environ, **tier_env(tier)}
    return subprocess.run([sys.executable, "-m", "sao_kernels", *argv], env=env, check=False).returncode


def check_emulable(tier: str) -> str | None:
    """None when this CPU can emulate ``tier``, else the reason."""
    from ..cpu import emulable_tiers, hardware_tier

    tiers = emulable_tiers()
    if tier in tiers or tier == "scalar":
        return None
    return f"this CPU's tier is {hardware_tier()}: it can emulate {', '.join(tiers) or 'none'} (and scalar)"


def bench_tiers(args, argv: Sequence[str], prog: str) -> int:
    """``bench --suite tiers``: with --cpu-tier (this process runs under its caps) measure that
    tier; without, run every emulable tier in its own subprocess.  Exit status as ``bench``."""
    import datetime
    import pathlib
    import sys

    from ..cpu import cpu_tier, emulable_tiers
    from .machine import machine_label, machine_meta, recording_load
    from .results import check_writable

    err = args.subparser.error
    cfg = TierConfig.quick() if args.quick else TierConfig()
    for name, field in (("features", "width"), ("tokens", "tokens")):
        values = getattr(args, name)
        if values:
            if len(values) != 1:
                err(f"--{name}: --suite tiers takes one value, got {values}")
            cfg = dataclasses.replace(cfg, **{field: values[0]})
    if args.groups:
        cfg = dataclasses.replace(cfg, groups=tuple(args.groups))
    if args.dtypes:
        bad = [d for d in args.dtypes if d not in ("float32", "bfloat16", "float16")]
        if bad:
            err(f"--dtypes: {','.join(bad)} not allowed for --suite tiers; choose from float32, bfloat16, float16")
        cfg = dataclasses.replace(cfg, dtypes=tuple(args.dtypes))
    bad_g = [G for G in cfg.groups if cfg.width % G]
    if bad_g:
        err(f"--groups: {bad_g} do not divide the width {cfg.width}")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TimingSettings(
        min_run_time=args.min_run_time or (0.01 if args.quick else 0.2),
        max_run_time=args.max_run_time,
        target_rel_iqr=args.target_spread,
        flag_rel_spread=args.flag_spread,
        min_rounds=3 if args.quick else 5,
    )
    meta = machine_meta("cpu")
    meta["machine"] = args.machine or machine_label(meta)
    meta["command"] = " ".join([prog, *argv])
    meta["suite"] = "tiers"
    # (a re-run the same day gets its own folder, ..._<date>-2: an earlier run's files are kept)
    default = pathlib.Path(args.out) / f"tiers_{meta['machine']}_{meta['date'][:10]}"
    folder = args.tiers_out or str(fresh_folder(default))
    try:
        out = check_writable(folder, "--out")
    except ValueError as e:
        err(str(e))
    if not args.cpu_tier:  # the parent: one subprocess per tier, all writing into one folder
        failed = []
        for tier in emulable_tiers():
            rc = run_under_tier(tier, [*argv, "--cpu-tier", tier, "--tiers-out", str(out)])
            if rc:
                failed.append(f"{tier} (exit {rc})")
        if failed:
            print(f"{prog} bench --suite tiers: failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        print(f"wrote {out}/<tier>.{{json,csv,md}} for {', '.join(emulable_tiers())}")
        return 0
    tier = cpu_tier()
    if tier != args.cpu_tier:
        err(f"--cpu-tier {args.cpu_tier}: the native kernels run at {tier} under its caps")
    meta["tier"] = tier
    meta["timing"] = settings.meta()
    meta["config"] = dataclasses.asdict(cfg)
    with recording_load(meta):
        rows = measure_tier(tier, cfg, settings, progress=None if args.no_progress else _progress)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths = write_tier_results(rows, meta, out, tier, settings)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _progress(label: str) -> None:
    import sys

    print(f"  measured {label}", file=sys.stderr, flush=True)
