"""Does keeping the trained weights matter?  convert(keep_weights=True) against its baselines.

    python benchmarks/pretrained_study.py                 # full run (a few minutes on 2 CPU cores)
    python benchmarks/pretrained_study.py --quick --out /tmp/q   # smoke test (seconds)

A tanh MLP 64 -> W -> W -> 10 is trained here on scikit-learn's digits (8x8 images, 1797
samples, a fixed 80/20 split; no download).  Its two hidden layers (64 -> W, W -> W) are then
made sparse at density 1/G for G in {2, 4, 8} (the 10-way output layer stays dense in every
variant) in six ways:

    dense          the trained dense model, fine-tuned the same way (the reference)
    keep           convert(keep_weights=True): topology chosen to keep the most energy
    keep+orth      the same, each block replaced by its scaled polar factor (orthogonalize=True)
    random-kept    W's values on a uniformly random SAO partition (isolates the topology choice)
    sao-reinit     convert's default: a random SAO topology, SAO-initialised (weights dropped)
    magnitude      torch.nn.utils.prune.l1_unstructured per layer at amount 1 - 1/G (same
                   density, unstructured: the peer a user would pick; no speed-up by itself)

Reported: the retained energy ||W*M||^2 / ||W||^2 of each hidden layer (keep vs the mean and
spread of ``--draws`` random SAO partitions, and unstructured magnitude's, the most any mask
of that density can keep), and test accuracy before fine-tuning (step 0) and after ``--steps``
fine-tuning steps (Adam, lr 1e-3, batch 64; the same for every variant), mean and standard
deviation over ``--seeds`` seeds (the seed sets the batch order and every random choice of
the conversion).  Writes ``pretrained_<date>.{json,md}`` into --out.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import pathlib
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import pretrained
from sao_kernels.bench.machine import machine_meta, recording_load
from sao_kernels.bench.results import json_file, text_file, write_outputs

HIDDEN = ("0", "2")  # the qualified names of the two hidden Linear layers
VARIANTS = ("dense", "keep", "keep+orth", "random-kept", "sao-reinit", "magnitude")


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): pixels / 16, a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))


def train(model: nn.Module, x, y, steps: int, seed: int, lr: float = 1e-3, batch: int = 64) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def is_hidden(name: str, module: nn.Module) -> bool:
    return name in HIDDEN


def sparse_variant(trained: nn.Sequential, variant: str, G: int, seed: int) -> nn.Module:
    """A copy of ``trained`` with its hidden layers made sparse at density 1/G."""
    model = copy.deepcopy(trained)
    gen = torch.Generator().manual_seed(seed)
    if variant == "dense":
        return model
    if variant in ("keep", "keep+orth"):
        return sk.convert(
            model, groups=G, filter_fn=is_hidden, keep_weights=True, orthogonalize=variant == "keep+orth", generator=gen
        )
    if variant == "sao-reinit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sk.ReinitializedWarning)  # the point of this variant
            return sk.convert(model, groups=G, filter_fn=is_hidden, generator=gen)
    for name in HIDDEN:
        layer = model[int(name)]
        if variant == "random-kept":
            blocks, _ = pretrained.random_blocks(layer.weight, G, generator=gen)
            bias = layer.bias.detach().clone()
            model[int(name)] = sk.SAOLinear.from_blocks(blocks, bias)
        elif variant == "magnitude":
            prune.l1_unstructured(layer, "weight", amount=1.0 - 1.0 / G)
        else:
            raise ValueError(f"variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return model


def energy_rows(trained: nn.Sequential, groups, draws: int, seed: int) -> list[dict]:
    rows = []
    for G in groups:
        for name in HIDDEN:
            w = trained[int(name)].weight.detach()
            gen = torch.Generator().manual_seed(seed)
            _, _, keep = pretrained.fit_topology(w, G, generator=gen)
            rand = [pretrained.random_blocks(w, G, generator=gen)[1] for _ in range(draws)]
            e = w.double().square().flatten()
            top = float(e.topk(e.numel() // G).values.sum() / e.sum())
            rows.append(
                dict(
                    groups=G,
                    layer=name,
                    shape=list(w.shape),
                    keep=keep,
                    random_mean=float(np.mean(rand)),
                    random_std=float(np.std(rand)),
                    random_max=float(np.max(rand)),
                    magnitude=top,
                )
            )
    return rows


def accuracy_rows(trained, data, groups, seeds, steps: int) -> list[dict]:
    x_tr, y_tr, x_te, y_te = data
    rows = []
    for G in groups:
        for variant in VARIANTS:
            before, after, retained = [], [], []
            for seed in seeds:
                model = sparse_variant(trained, variant, G, seed)
                before.append(accuracy(model, x_te, y_te))
                if variant.startswith("keep"):
                    retained.append(float(np.mean(list(pretrained.retained_energy(model).values()))))
                train(model, x_tr, y_tr, steps, seed=1000 + seed)
                after.append(accuracy(model, x_te, y_te))
            rows.append(
                dict(
                    groups=G,
                    variant=variant,
                    acc0_mean=float(np.mean(before)),
                    acc0_std=float(np.std(before)),
                    accN_mean=float(np.mean(after)),
                    accN_std=float(np.std(after)),
                    acc0=before,
                    accN=after,
                )
            )
    return rows


def markdown(meta: dict, energy: list[dict], acc: list[dict], cfg: dict) -> str:
    lines = [
        f"# Keeping pretrained weights: convert(keep_weights=True) vs baselines ({meta['date'][:10]})",
        "",
        f"Machine: {meta['cpu']}, {meta['threads']} torch threads, torch {meta['torch']}; load average before "
        f"{meta.get('load_before')}, after {meta.get('load_after')}; run time {cfg['seconds']:.0f} s.",
        f"Command: `{meta['command']}`",
        "",
        f"Model: tanh MLP 64 -> {cfg['width']} -> {cfg['width']} -> 10 trained {cfg['train_steps']} steps (Adam, "
        f"lr 1e-3, batch 64) on scikit-learn digits (1437 train / 360 test): dense test accuracy "
        f"{cfg['dense_acc']:.4f}. Sparse variants replace the two hidden layers at density 1/G (output layer dense).",
        "",
        "## Retained energy ||W*M||^2 / ||W||^2 of the trained hidden layers",
        "",
        f"keep = this conversion; random = a uniformly random SAO partition (mean +- std over {cfg['draws']} "
        "draws; max); magnitude = unstructured top-1/G entries (the most any mask of that density keeps; "
        "not SAO-structured). A random SAO partition keeps 1/G in expectation.",
        "",
        "| G | layer | shape | keep | random mean +- std (max) | magnitude (unstructured) |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in energy:
        lines.append(
            f"| {r['groups']} | {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['keep']:.4f} | "
            f"{r['random_mean']:.4f} +- {r['random_std']:.4f} ({r['random_max']:.4f}) | {r['magnitude']:.4f} |"
        )
    lines += [
        "",
        f"## Test accuracy at step 0 and after {cfg['steps']} fine-tuning steps",
        "",
        f"Mean +- standard deviation over {len(cfg['seeds'])} seeds ({', '.join(map(str, cfg['seeds']))}); "
        f"fine-tuning: Adam, lr 1e-3, batch 64, {cfg['steps']} steps, the same for every variant.",
        "",
        "| G | variant | accuracy at step 0 | accuracy after fine-tuning |",
        "| ---: | --- | ---: | ---: |",
    ]
    for r in acc:
        lines.append(
            f"| {r['groups']} | {r['variant']} | {r['acc0_mean']:.4f} +- {r['acc0_std']:.4f} | "
            f"{r['accN_mean']:.4f} +- {r['accN_std']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    cfg = dict(width=256, train_steps=1500, steps=100, groups=(2, 4, 8), seeds=(0, 1, 2), draws=20)
    if args.quick:
        cfg.update(width=32, train_steps=60, steps=5, groups=(2, 4), seeds=(0,), draws=3)
    # One thread: these layers are small, and on a shared 2-core machine a 2-thread region waits
    # for a descheduled thread at every op (measured: 0.6 s per step with 2 threads under load,
    # 5 ms with 1).
    torch.set_num_threads(1)
    meta = machine_meta("cpu")
    meta["command"] = " ".join(["python benchmarks/pretrained_study.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    with recording_load(meta):
        torch.manual_seed(0)
        data = load_digits_split()
        trained = train(mlp(cfg["width"]), data[0], data[1], cfg["train_steps"], seed=0)
        cfg["dense_acc"] = accuracy(trained, data[2], data[3])
        energy = energy_rows(trained, cfg["groups"], cfg["draws"], seed=0)
        print(f"dense accuracy {cfg['dense_acc']:.4f}; energy done", flush=True)
        acc = accuracy_rows(trained, data, cfg["groups"], cfg["seeds"], cfg["steps"])
    cfg["seconds"] = time.perf_counter() - start
    stem = f"pretrained_{datetime.date.fromisoformat(meta['date'][:10]).isoformat()}"
    md = markdown(meta, energy, acc, cfg)
    out = pathlib.Path(args.out)
    write_outputs(
        out,
        {
            f"{stem}.json": json_file({"meta": meta, "settings": cfg, "energy": energy, "accuracy": acc}),
            f"{stem}.md": text_file(md),
        },
    )
    print(md)
    print(f"wrote {out / stem}.json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
