"""Native CPU kernels vs the torch composite vs nn.Linear, fwd and fwd+bwd, interleaved.

    python benchmarks/bench_native_cpu.py [--out benchmarks/results] [--threads 2] [--min-run-time 0.5]
        [--groups 2 4 8 16] [--tokens 64 512 4096] [--dtypes float32 bfloat16] [--features 4096]

SAOLinear(n, n, groups=G) with bias (the layer's defaults: random in_index, contiguous
output groups) on the ``native`` backend (csrc/, ``sao_kernels._C``) and on the ``torch``
composite (gather + bmm), and nn.Linear(n, n), on the same x.  For each (dtype, T, mode)
nn.Linear and every (backend, G) are timed in the same interleaved rounds
(sao_kernels.bench): rows carry min / median / IQR, the speed-up over nn.Linear with its 95 %
interval, native's speed-up over the composite (same rounds, same interval method), and
flags.  fwd runs under no_grad; fwd+bwd computes the input, values and bias grads.  Writes
``native_cpu_<machine>_<date>.json`` and ``.md`` into --out.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from sao_kernels.bench import cases
from sao_kernels.bench.candidates import on_backend
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.bench.results import fmt_speedup
from sao_kernels.bench.steps import module_steps
from sao_kernels.bench.timing import compare, interleave
from sao_kernels.cli.arguments import add_timing_arguments, limited, script_setup
from sao_kernels.layers import SAOLinear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BACKENDS = ("native", "torch")
FIELDS = cases.CASE_FIELDS + ("speedup_vs_torch", "speedup_vs_torch_lo", "speedup_vs_torch_hi")


def native_unavailable_reason() -> str | None:
    """None when the native backend runs a float32 SAOLinear here, else why not."""
    layer = SAOLinear(8, 8, groups=2)
    try:
        on_backend("native", lambda: layer(torch.randn(2, 8)))()
    except (RuntimeError, TypeError, ValueError) as err:
        return str(err).splitlines()[0]
    return None


def measure(dtype_name: str, n: int, T: int, groups: list[int], timing, gen) -> list[dict]:
    dtype = DTYPES[dtype_name]
    x = torch.randn(T, n, generator=gen).to(dtype)
    steps = {"dense": module_steps(nn.Linear(n, n).to(dtype), x, generator=gen)}
    for G in groups:
        layer = SAOLinear(n, n, groups=G, generator=gen).to(dtype)
        for backend in BACKENDS:
            steps[(backend, G)] = tuple(on_backend(backend, fn) for fn in module_steps(layer, x, generator=gen))
    rows = []
    for i, mode in enumerate(("fwd", "fwd_bwd")):
        stats = interleave({key: pair[i] for key, pair in steps.items()}, timing)
        for G in groups:
            vs_torch = compare(
                stats[("torch", G)],
                stats[("native", G)],
                ideal=None,
                flag_rel_spread=timing.flag_rel_spread,
                names=("native", "torch"),
            )
            for backend in BACKENDS:
                cmp = compare(
                    stats["dense"], stats[(backend, G)], ideal=float(G), flag_rel_spread=timing.flag_rel_spread
                )
                row = dict(
                    case="linear",
                    shape=f"{n}x{n}, T={T}",
                    mode=mode,
                    backend=backend,
                    dtype=dtype_name,
                    width=n,
                    tokens=T,
                    depth=1,
                    groups=G,
                    contention=False,
                    **cmp.fields(),
                    ideal_speedup=float(G),
                    flag=cmp.flag,
                    flag_reason=cmp.flag_reason,
                )
                if backend == "native":
                    row.update(
                        speedup_vs_torch=vs_torch.speedup.value,
                        speedup_vs_torch_lo=vs_torch.speedup.lo,
                        speedup_vs_torch_hi=vs_torch.speedup.hi,
                    )
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=0.5)
    parser.add_argument("--features", type=limited("features"), default=4096, help="square layer width n = m")
    parser.add_argument("--groups", type=limited("groups"), nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tokens", type=limited("tokens"), nargs="+", default=[64, 512, 4096])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    timing, meta = script_setup(args, parser)
    reason = native_unavailable_reason()
    if reason:
        print(f"{parser.prog}: the native backend cannot run here: {reason}")
        return 1
    gen = torch.Generator().manual_seed(0)
    rows = []
    try:
        with recording_load(meta):
            for dtype_name in args.dtypes:
                for T in args.tokens:
                    rows += measure(dtype_name, args.features, T, args.groups, timing, gen)
                    print(f"measured {dtype_name} T={T}", flush=True)
    except ValueError as err:  # a G that does not divide the width: the layer names it
        parser.error(str(err))
    vs_torch = (
        "native vs torch [95% CI]",
        lambda r: fmt_speedup(r, "_vs_torch") if r["backend"] == "native" else "",
        True,
    )
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem("native_cpu", meta),
        what="Native CPU kernels vs torch composite vs nn.Linear",
        settings=timing,
        formats=("json", "md"),
        extra_columns=[vs_torch],
        fields=FIELDS,
        notes=["speed-up: over nn.Linear; native vs torch: the composite's median / native's median, same rounds."],
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
