"""Ship an SAO model: export it, package it with AOTInductor, and write inputs with their eager
outputs for the programs that run the package without importing sao_kernels.

    python examples/cpp_aoti/export_model.py OUT_DIR [--bench]

writes ``OUT_DIR/model.pt2`` (the package: one token dimension T, any size) and
``OUT_DIR/data.pt`` (``torch.save`` of a dict ``{"x_T1", "y_T1", "x_T128", "y_T128"}``;
C++ reads it with ``torch::jit::pickle_load``).  ``run_package.py`` (Python) and ``main.cpp`` (C++)
load the package with only the ops library and compare.  ``--bench`` then times the package
against the eager model, interleaved in this process, at T=1 and T=128.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time
import warnings

import torch
from torch import nn

import sao_kernels as sk

WIDTH, HIDDEN, SPARSITY = 768, 3072, 0.75  # a BERT-base feed-forward block, G = 4 blocks
TOKENS = (1, 128)


def build_model(width: int = WIDTH, hidden: int = HIDDEN, seed: int = 0) -> nn.Module:
    """A dense feed-forward block (x (T, width) -> (T, width)) converted to SAO, in eval mode."""
    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
    with warnings.catch_warnings():  # (a fresh model: nothing pretrained to lose)
        warnings.simplefilter("ignore", sk.ReinitializedWarning)
        return sk.convert(dense, sparsity=SPARSITY).eval()


def export_and_package(model: nn.Module, example: torch.Tensor, path: pathlib.Path) -> pathlib.Path:
    """torch.export with a dynamic token dimension, then AOTInductor into the file ``path``."""
    tokens = torch.export.Dim("T", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: tokens},))
        return pathlib.Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def write_data(model: nn.Module, path: pathlib.Path, width: int = WIDTH) -> dict:
    """Fresh inputs at each T of TOKENS and the eager outputs."""
    data = {}
    with torch.no_grad():
        for t in TOKENS:
            x = torch.randn(t, width)
            data[f"x_T{t}"], data[f"y_T{t}"] = x, model(x)
    torch.save(data, path)
    return data


def bench(model: nn.Module, package: pathlib.Path, data: dict, rounds: int = 15) -> dict:
    """Median seconds per call of eager vs the loaded package, rounds interleaved."""
    compiled = torch._inductor.aoti_load_package(str(package))
    out = {}
    with torch.inference_mode():
        for t in TOKENS:
            x = data[f"x_T{t}"]
            calls = max(1, int(2e-3 / (1e-5 + t * 2e-6)))  # ~a few ms per round at any T
            times = {"eager": [], "package": []}
            for _ in range(rounds):
                for name, fn in (("eager", model), ("package", compiled)):
                    fn(x)
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn(x)
                    times[name].append((time.perf_counter() - start) / calls)
            out[t] = {name: statistics.median(v) for name, v in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--bench", action="store_true", help="time the package against eager at T=1 and T=128")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for --bench")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model()
    package = export_and_package(model, torch.randn(8, WIDTH), args.out_dir / "model.pt2")
    data = write_data(model, args.out_dir / "data.pt")
    print(f"wrote {package} and {args.out_dir / 'data.pt'}")
    if args.bench:
        for t, r in bench(model, package, data).items():
            print(
                f"T={t}: eager {r['eager'] * 1e6:.1f} us, package {r['package'] * 1e6:.1f} us "
                f"(package / eager = {r['package'] / r['eager']:.3f})"
            )


if __name__ == "__main__":
    main()
