"""SAO chains (``sk.fuse_chains``): fused vs unfused vs dense, interleaved in one process.

    python benchmarks/bench_chains.py                        # every case below, fp32 and bf16
    python benchmarks/bench_chains.py --cases mlp100 --tokens 128 --dtypes float32

Cases (G=4):
* ``mlp100``: a 100-layer width-512 tanh MLP (``SAOLinear(512, 512) + nn.Tanh`` x 100), one
  training step = forward + backward (input, values and bias gradients), at T = --tokens.
* ``bert_ffn``: the BERT-base FFN 768 -> 3072 -> GELU -> 768, inference (forward under
  ``torch.inference_mode``) at T=128.

Candidates per case, timed in the same interleaved rounds (sao_kernels.bench): the dense
model (``nn.Linear``), the SAO model, and the same SAO model after ``sk.fuse_chains`` (its
default fold="auto").  Each row is one SAO variant vs dense, with min / median / IQR and the
speed-up's 95 % interval; "fused / unfused" is the fused model's speed-up over the unfused one
from the same rounds.  Writes ``chains_<machine>_<date>.json`` and ``.md`` into --out.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import sao_kernels as sk
from sao_kernels.bench import cases
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.steps import module_steps
from sao_kernels.bench.timing import compare, interleave
from sao_kernels.cli.arguments import add_timing_arguments, script_setup

G = 4


def mlp100(sao: bool, dtype: torch.dtype, gen: torch.Generator) -> nn.Sequential:
    layers = []
    for _ in range(100):
        sao_layer = sk.SAOLinear(512, 512, groups=G, generator=gen, dtype=dtype) if sao else None
        layers += [sao_layer or nn.Linear(512, 512, dtype=dtype), nn.Tanh()]
    return nn.Sequential(*layers)


def bert_ffn(sao: bool, dtype: torch.dtype, gen: torch.Generator) -> nn.Sequential:
    def lin(n, m):
        return sk.SAOLinear(n, m, groups=G, generator=gen, dtype=dtype) if sao else nn.Linear(n, m, dtype=dtype)

    return nn.Sequential(lin(768, 3072), nn.GELU(), lin(3072, 768))


def inference_step(model: nn.Module, x: torch.Tensor):
    def step():
        with torch.inference_mode():
            return model(x)

    return step


def measure(case: str, T: int, dtype_name: str, timing, seed: int = 0) -> list[dict]:
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    build, width = (mlp100, 512) if case == "mlp100" else (bert_ffn, 768)
    dense, sao = build(False, dtype, gen), build(True, dtype, gen)
    fused = sk.fuse_chains(copy.deepcopy(sao))
    x = torch.randn(T, width, generator=gen).to(dtype)
    if case == "mlp100":
        fns = {name: module_steps(m, x)[1] for name, m in (("dense", dense), ("unfused", sao), ("fused", fused))}
        mode, shape = "fwd_bwd", "100 x (512->512, tanh)"
    else:
        fns = {name: inference_step(m, x) for name, m in (("dense", dense), ("unfused", sao), ("fused", fused))}
        mode, shape = "inference", "768->3072->GELU->768"
    stats = interleave(fns, timing)
    over_unfused = compare(stats["unfused"], stats["fused"], ideal=None, flag_rel_spread=timing.flag_rel_spread)
    rows = []
    for variant in ("unfused", "fused"):
        cmp = compare(stats["dense"], stats[variant], ideal=float(G), flag_rel_spread=timing.flag_rel_spread)
        rows.append(
            dict(
                case=f"{case} ({variant})",
                shape=shape,
                mode=mode,
                backend="auto",
                dtype=dtype_name,
                width=width,
                tokens=T,
                depth=100 if case == "mlp100" else 2,
                groups=G,
                contention=False,
                **cmp.fields(),
                ideal_speedup=float(G),
                flag=cmp.flag,
                flag_reason=cmp.flag_reason,
                fused_over_unfused=over_unfused.speedup.value if variant == "fused" else None,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=1.0)
    parser.add_argument("--cases", nargs="+", choices=("mlp100", "bert_ffn"), default=["mlp100", "bert_ffn"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512], help="mlp100 tokens (default 128 512)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser, "cpu")
    rows = []
    with recording_load(meta):
        for dtype_name in args.dtypes:
            for case in args.cases:
                for T in args.tokens if case == "mlp100" else [128]:
                    rows += measure(case, T, dtype_name, timing)
                    done = ", ".join(f"{r['case']} {r['speedup']:.2f}x" for r in rows[-2:])
                    print(f"{case} T={T} {dtype_name}: {done}", flush=True)

    def ratio_cell(r: dict) -> str:
        return "" if r["fused_over_unfused"] is None else f"{r['fused_over_unfused']:.2f}x"

    ratio = ("fused / unfused", ratio_cell, True)
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem("chains_cpu", meta),
        what="SAO chains: sk.fuse_chains vs the unfused SAO model vs dense (G=4)",
        settings=timing,
        formats=("json", "md"),
        extra_columns=[ratio],
        fields=cases.CASE_FIELDS + ("fused_over_unfused",),
        notes=[
            "mlp100: fwd_bwd = forward + backward (input, values, bias grads) of 100 x (SAOLinear(512, 512) + Tanh); "
            "bert_ffn: forward under torch.inference_mode. Target (issue 20): >= 0.7 x G = 2.8x."
        ],
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
