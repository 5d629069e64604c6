"""Training and inference on CPU by dtype: SAOLinear vs nn.Linear vs the pre-gathered bmm bound.

    python benchmarks/bench_bf16_cpu.py [--out benchmarks/results] [--min-run-time 0.5]
        [--dtypes float32 bfloat16] [--groups 2 4 8] [--parts train decode ffn]

The targets of issue 20, each part timed in one set of interleaved rounds (sao_kernels.bench):

* train: 4096 x 4096 with bias, T = 512, G in --groups; forward (no_grad) and forward +
  backward (input, values and bias grads).  The bound is ``torch.bmm`` on pre-gathered
  group-ordered blocks (no gather, no scatter, no bias): one bmm forward, three for fwd+bwd.
  Targets: speed-up over nn.Linear >= 0.85 G and SAO time <= bound time / 0.9.
* decode: the same layer at T = 1 and 16, G = 8, under torch.inference_mode.  Target >= 0.8 G.
* ffn: BERT-base FFN (768 -> 3072, GELU, 3072 -> 768), T = 128, G = 4, inference_mode.
  Target >= 0.7 G.

Rows carry min / median / IQR of each side, the speed-up over nn.Linear with its 95 % interval,
and "vs bound" = bound median / SAO median (1 = as fast as the pre-gathered bmm).  Writes
``bf16_cpu_<machine>_<date>.json`` and ``.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.steps import module_steps
from sao_kernels.bench.timing import compare, interleave
from sao_kernels.cli.arguments import add_timing_arguments, positive_int, script_setup
from sao_kernels.layers import SAOLinear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PARTS = ("train", "decode", "ffn")


def bmm_bound(layer: SAOLinear, x: torch.Tensor, grad_out: torch.Tensor):
    """(forward, fwd+bwd) of torch.bmm on blocks gathered beforehand: the GEMM-only bound."""
    v = layer.values.detach()
    G, a, c = v.shape
    T = x.shape[0]
    xg = x.reshape(T, G, c).transpose(0, 1).contiguous()
    dyg = grad_out.reshape(T, G, a).transpose(0, 1).contiguous()
    vt = v.transpose(1, 2)

    def fwd():
        return torch.bmm(xg, vt)

    def fwd_bwd():
        torch.bmm(xg, vt)
        torch.bmm(dyg, v)
        torch.bmm(dyg.transpose(1, 2), xg)

    return fwd, fwd_bwd


def inference(fn):
    def run():
        with torch.inference_mode():
            return fn()

    return run


def row(part, dtype_name, mode, T, G, shape, stats, dense_key, sao_key, bound_key, target, timing):
    cmp = compare(stats[dense_key], stats[sao_key], ideal=float(G), flag_rel_spread=timing.flag_rel_spread)
    r = dict(
        part=part,
        dtype=dtype_name,
        mode=mode,
        shape=shape,
        tokens=T,
        groups=G,
        dense_median_ms=stats[dense_key].median_ms,
        dense_iqr_ms=stats[dense_key].iqr_ms,
        sao_min_ms=stats[sao_key].min_ms,
        sao_median_ms=stats[sao_key].median_ms,
        sao_iqr_ms=stats[sao_key].iqr_ms,
        speedup=cmp.speedup.value,
        speedup_lo=cmp.speedup.lo,
        speedup_hi=cmp.speedup.hi,
        target_speedup=target * G,
        flag=cmp.flag,
    )
    if bound_key is not None:
        vs = compare(stats[bound_key], stats[sao_key], ideal=None, flag_rel_spread=timing.flag_rel_spread)
        r.update(
            bound_median_ms=stats[bound_key].median_ms,
            bound_speedup=stats[dense_key].median_ms / stats[bound_key].median_ms,
            vs_bound=vs.speedup.value,
            vs_bound_lo=vs.speedup.lo,
            vs_bound_hi=vs.speedup.hi,
        )
    return r


def measure_train(dtype_name, groups, timing, gen, n=4096, T=512):
    dtype = DTYPES[dtype_name]
    x = torch.randn(T, n, generator=gen).to(dtype)
    dense = nn.Linear(n, n).to(dtype)
    fns = {"dense": module_steps(dense, x, generator=gen)}
    for G in groups:
        layer = SAOLinear(n, n, groups=G, generator=gen).to(dtype)
        fns[("sao", G)] = module_steps(layer, x, generator=gen)
        fns[("bmm", G)] = bmm_bound(layer, x, torch.randn(T, n, generator=gen).to(dtype))
    rows = []
    for i, mode in enumerate(("fwd", "fwd_bwd")):
        stats = interleave({k: pair[i] for k, pair in fns.items()}, timing)
        for G in groups:
            rows.append(
                row("train", dtype_name, mode, T, G, f"{n}x{n}", stats, "dense", ("sao", G), ("bmm", G), 0.85, timing)
            )
    return rows


def measure_decode(dtype_name, timing, gen, n=4096, G=8, tokens=(1, 16)):
    dtype = DTYPES[dtype_name]
    dense = nn.Linear(n, n).to(dtype)
    layer = SAOLinear(n, n, groups=G, generator=gen).to(dtype)
    fns = {}
    for T in tokens:
        x = torch.randn(T, n, generator=gen).to(dtype)
        fns[("dense", T)] = inference(lambda x=x: dense(x))
        fns[("sao", T)] = inference(lambda x=x: layer(x))
        fns[("bmm", T)] = inference(bmm_bound(layer, x, torch.randn(T, n, generator=gen).to(dtype))[0])
    stats = interleave(fns, timing)
    return [
        row(
            "decode",
            dtype_name,
            "inference",
            T,
            G,
            f"{n}x{n}",
            stats,
            ("dense", T),
            ("sao", T),
            ("bmm", T),
            0.8,
            timing,
        )
        for T in tokens
    ]


def measure_ffn(dtype_name, timing, gen, d=768, h=3072, T=128, G=4):
    dtype = DTYPES[dtype_name]
    dense = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)).to(dtype)
    sao = nn.Sequential(
        SAOLinear(d, h, groups=G, generator=gen), nn.GELU(), SAOLinear(h, d, groups=G, generator=gen)
    ).to(dtype)
    x = torch.randn(T, d, generator=gen).to(dtype)
    stats = interleave({"dense": inference(lambda: dense(x)), "sao": inference(lambda: sao(x))}, timing)
    return [row("ffn", dtype_name, "inference", T, G, f"{d}->{h}->{d}", stats, "dense", "sao", None, 0.7, timing)]


def markdown(rows, meta) -> str:
    lines = [
        f"# SAOLinear vs nn.Linear vs pre-gathered bmm, by dtype ({meta.get('cpu', '?')}, {meta['date'][:10]})",
        "",
        f"torch {meta.get('torch', '?')}, {meta.get('threads', '?')} threads; load average before / after: "
        f"{meta.get('load_before')} / {meta.get('load_after')}.  Medians of interleaved rounds; speed-up over "
        "nn.Linear of the same dtype with its 95 % interval; bound = torch.bmm on pre-gathered blocks (its own "
        "speed-up over nn.Linear); vs bound = bound median / SAO median.",
        "",
        "| part | dtype | mode | shape | T | G | nn.Linear ms | SAO ms (IQR) | speed-up [95% CI] | target |"
        " bound speed-up | SAO vs bound [95% CI] | flag |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = f"{r['bound_speedup']:.2f}x" if "bound_speedup" in r else "-"
        vs = f"{r['vs_bound']:.2f} [{r['vs_bound_lo']:.2f}, {r['vs_bound_hi']:.2f}]" if "vs_bound" in r else "-"
        lines.append(
            f"| {r['part']} | {r['dtype']} | {r['mode']} | {r['shape']} | {r['tokens']} | {r['groups']} | "
            f"{r['dense_median_ms']:.3f} | {r['sao_median_ms']:.3f} ({r['sao_iqr_ms']:.3f}) | "
            f"{r['speedup']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}] | {r['target_speedup']:.2f}x | "
            f"{bound} | {vs} | {r['flag'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=0.5)
    parser.add_argument("--groups", type=positive_int, nargs="+", default=[2, 4, 8], help="G values (train)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with recording_load(meta):
        for dtype_name in args.dtypes:
            if "train" in args.parts:
                rows += measure_train(dtype_name, args.groups, timing, gen)
            if "decode" in args.parts:
                rows += measure_decode(dtype_name, timing, gen)
            if "ffn" in args.parts:
                rows += measure_ffn(dtype_name, timing, gen)
            print(f"measured {dtype_name}", flush=True)
    out = Path(args.out)
    stem = results_stem("bf16_cpu", meta)
    md = markdown(rows, meta)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    print(md)
    print(f"wrote {out / stem}.md, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
