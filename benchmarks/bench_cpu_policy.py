"""Which CPU backend wins, per CPU tier, dtype and shape class: the measurement behind the
``cpu`` rows of ``sao_kernels.dispatch.CPU_POLICY``.

For each tier this CPU can emulate (``sao_kernels.cpu.emulable_tiers``), a subprocess with the
tier's caps (``sao_kernels.cpu.tier_env``: SAO_KERNELS_CPU_ISA, DNNL_MAX_CPU_ISA,
ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS) times the native kernels against the torch
composite on the same SAOLinear, interleaved, per dtype (float32, bfloat16, float16) and shape
class: train (T=512, 4096^2 and 1024^2, forward + backward), small (T=64, 512^2, forward +
backward), decode (T=1 and T=16, 4096^2, forward under inference_mode).  A candidate whose
first call takes over --slow-call seconds is timed once and flagged.

    python benchmarks/bench_cpu_policy.py            # -> benchmarks/results/cpu_policy_<machine>_<date>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import sao_kernels as sk
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.results import json_file, text_file, write_outputs
from sao_kernels.bench.timing import Stats, compare, interleave
from sao_kernels.cli.arguments import add_timing_arguments, positive_int, script_setup, seconds

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (class, T, width, groups, mode)
SHAPES = (
    ("train", 512, 4096, (4,), "fwd_bwd"),
    ("train", 512, 1024, (2, 8), "fwd_bwd"),
    ("small", 64, 512, (4,), "fwd_bwd"),
    ("decode", 1, 4096, (8,), "fwd"),
    ("decode", 16, 4096, (8,), "fwd"),
)


def _step(layer, x, mode, backend):
    if mode == "fwd":

        def fwd():
            with torch.inference_mode(), sk.backend(backend):
                layer(x)

        return fwd
    xr = x.detach().clone().requires_grad_(True)
    gy = torch.randn(x.shape[0], layer.out_features, dtype=x.dtype)

    def fwd_bwd():
        xr.grad = None
        for p in layer.parameters():
            p.grad = None
        with sk.backend(backend):
            layer(xr).backward(gy)

    return fwd_bwd


def measure_tier(timing, slow_call: float, quick: bool) -> list[dict]:
    """Rows for the tier this process runs under."""
    rows, gen = [], torch.Generator().manual_seed(0)
    shapes = [(c, min(T, 32), 256, (2,), m) for c, T, f, gs, m in SHAPES] if quick else SHAPES
    for dtype_name, dtype in DTYPES.items():
        for cls, T, f, groups, mode in shapes:
            x = torch.randn(T, f, generator=gen).to(dtype)
            fns, slow = {}, {}
            for G in groups:
                layer = sk.SAOLinear(f, f, groups=G, generator=gen, dtype=dtype)
                for backend in ("native", "torch"):
                    fn = _step(layer, x, mode, backend)
                    start = time.perf_counter()
                    fn()
                    one = time.perf_counter() - start
                    if one > slow_call:
                        slow[(G, backend)] = 1e3 * one
                    else:
                        fns[(G, backend)] = fn
            stats = interleave({f"{G}/{b}": fn for (G, b), fn in fns.items()}, timing) if fns else {}
            for G in groups:

                def get(b, G=G, stats=stats, slow=slow):
                    key = f"{G}/{b}"
                    return stats[key] if key in stats else Stats((slow[(G, b)],))

                nat, tor = get("native"), get("torch")
                row = dict(
                    tier=sk.cpu_tier(),
                    dtype=dtype_name,
                    shape_class=cls,
                    tokens=T,
                    width=f,
                    groups=G,
                    mode=mode,
                    native_ms=nat.median_ms,
                    native_iqr=nat.iqr_ms,
                    torch_ms=tor.median_ms,
                    torch_iqr=tor.iqr_ms,
                )
                if nat.rounds == tor.rounds and nat.rounds > 1:
                    cmp = compare(tor, nat, ideal=None, flag_rel_spread=timing.flag_rel_spread)
                    row.update(native_vs_torch=cmp.speedup.value, lo=cmp.speedup.lo, hi=cmp.speedup.hi, flag=cmp.flag)
                else:
                    row.update(native_vs_torch=tor.median_ms / nat.median_ms, flag=f"timed once (> {slow_call:g} s)")
                row["winner"] = winner(row)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def winner(row: dict) -> str:
    """'native' / 'torch' when the 95% interval of native / torch lies above / below 1 (one
    side timed once: by the ratio alone), else 'tie'."""
    lo, hi = row.get("lo", row["native_vs_torch"]), row.get("hi", row["native_vs_torch"])
    return "native" if lo > 1 else "torch" if hi < 1 else "tie"


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# CPU policy measurement: native kernels vs torch composite ({meta['cpu']}, {meta['date']})",
        "",
        f"Load average before / after: {meta.get('load_before')} / {meta.get('load_after')}; "
        f"{meta['threads']} threads. Each tier ran in a subprocess with the caps of sao_kernels.cpu.tier_env. "
        "native / torch = torch median / native median (>1: native faster), with its 95% paired bootstrap interval; "
        "winner: the side the whole interval favours, else tie.",
        "",
        "| tier | dtype | class | T | width | G | mode | native ms (IQR) | torch ms (IQR) | native / torch | winner "
        "| flag |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ci = f" [{r['lo']:.2f}-{r['hi']:.2f}]" if "lo" in r else ""
        lines.append(
            f"| {r['tier']} | {r['dtype']} | {r['shape_class']} | {r['tokens']} | {r['width']} | {r['groups']} | "
            f"{r['mode']} | {r['native_ms']:.4g} ({r['native_iqr']:.2g}) | {r['torch_ms']:.4g} ({r['torch_iqr']:.2g}) "
            f"| {r['native_vs_torch']:.2f}x{ci} | {r['winner']} | {r['flag']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_cpu_policy.py", description=__doc__.split("\n")[0])
    add_timing_arguments(parser, min_run_time=0.1)
    parser.add_argument("--tiers", help="comma-separated tiers (default: every tier this CPU can emulate)")
    parser.add_argument("--slow-call", type=seconds, default=3.0, help="time once above this (s, default 3)")
    parser.add_argument("--quick", action="store_true", help="small shapes (a test of this script)")
    parser.add_argument("--child", type=positive_int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    timing, meta = script_setup(args, parser)
    if args.child:  # one tier, in the environment the parent set; rows as JSON on stdout
        print(json.dumps(measure_tier(timing, args.slow_call, args.quick)))
        return 0
    tiers = args.tiers.split(",") if args.tiers else sk.cpu.emulable_tiers()
    rows = []
    with recording_load(meta):
        for tier in tiers:
            env = {**os.environ, **sk.cpu.tier_env(tier)}
            cmd = [sys.executable, *sys.argv, "--child", "1"]
            out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows += json.loads(out.strip().splitlines()[-1])
    meta["tiers"] = list(tiers)
    stem = results_stem("cpu_policy", meta)
    write_outputs(
        args.out,
        {f"{stem}.json": json_file({"meta": meta, "results": rows}), f"{stem}.md": text_file(markdown(meta, rows))},
    )
    print(markdown(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
