"""End-to-end training-step time of a transformer-style MLP stack, SAO vs dense, interleaved.

    python benchmarks/bench_e2e_mlp.py                      # CPU defaults (small)
    python benchmarks/bench_e2e_mlp.py --device cuda        # d=4096, FFN 4x, 12 layers, T=8192, bf16
    TRITON_INTERPRET=1 python benchmarks/bench_e2e_mlp.py --backend triton --d 32 --layers 1 --tokens 16
                                                            # the Triton kernels in the interpreter (rehearsal)

Each block is x + W2 gelu(W1 LayerNorm(x)), W1: d -> 4d, W2: 4d -> d; the SAO models convert
every W1 / W2 at G groups.  One step = forward, backward, AdamW update.  The dense model and
the SAO models at every G are timed in the same interleaved rounds (sao_kernels.bench), with
min / median / IQR, the speed-up with its 95 % interval and flags (ideal = G; LayerNorm, GELU,
the residual and the optimiser are not sparse, so a real model stays below it).  Writes
``e2e_mlp_<machine>_<date>.json`` and ``.md`` into --out.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import sao_kernels as sk
from sao_kernels.bench import cases
from sao_kernels.bench.machine import recording_load, results_stem
from sao_kernels.cli.arguments import add_timing_arguments, limited, script_setup


class Block(nn.Module):
    def __init__(self, d: int, device, dtype):
        super().__init__()
        self.norm = nn.LayerNorm(d, device=device, dtype=dtype)
        self.fc1 = nn.Linear(d, 4 * d, device=device, dtype=dtype)
        self.fc2 = nn.Linear(4 * d, d, device=device, dtype=dtype)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, min_run_time=1.0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--d", type=limited("features"), help="model width (default 4096 on cuda, 512 on cpu)")
    parser.add_argument("--layers", type=limited("layers"), help="blocks (default 12 on cuda, 2 on cpu)")
    parser.add_argument("--tokens", type=limited("tokens"), help="tokens per step (default 8192 on cuda, 256 on cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--groups", type=limited("groups"), nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--backend",
        choices=sk.dispatch.BACKENDS,
        default="auto",
        help="the SAO layers' backend (default auto: triton on cuda, native on cpu; triton on cpu needs "
        "TRITON_INTERPRET=1 before start)",
    )
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    timing, meta = script_setup(args, parser, args.device)
    d = args.d or (4096 if cuda else 512)
    L = args.layers or (12 if cuda else 2)
    T = args.tokens or (8192 if cuda else 256)
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    x = torch.randn(T, d, device=args.device, dtype=dtype)

    def build():
        return nn.Sequential(*[Block(d, args.device, dtype) for _ in range(L)])

    saos = {}
    for G in args.groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values are re-initialised by SAO": intended here
            try:
                saos[G] = sk.convert(
                    build(), groups=G, filter_fn=lambda name, m: isinstance(m, nn.Linear), skip_invalid=False
                )
            except ValueError as err:
                parser.error(f"--groups {G}: {err}")
    try:
        with sk.backend(args.backend):
            sk.dispatch.select(x.device, dtype)
    except (RuntimeError, TypeError) as err:
        parser.error(f"--backend {args.backend}: {err}")
    base = dict(
        case="mlp_blocks",
        shape=f"{L} x (LN, {d}->{4 * d}->{d}, GELU), T={T}",
        backend=args.backend,
        dtype=dtype_name,
        width=d,
        tokens=T,
        depth=L,
        contention=False,
    )
    with recording_load(meta), sk.backend(args.backend):
        rows = cases.model_rows(
            build(),
            saos,
            x,
            timing,
            base=base,
            modes=("train_step",),
            optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4),
        )
    paths = cases.write_case_results(
        rows,
        meta,
        args.out,
        stem=results_stem(f"e2e_mlp_{args.device}", meta),
        what="Training step (fwd + bwd + AdamW) of MLP blocks, SAO vs dense",
        settings=timing,
        formats=("json", "md"),
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
