"""Does keeping the trained weights matter?  convert(keep_weights=True) against its baselines.

    python benchmarks/pretrained_study.py                 # full run (several minutes on 2 busy CPU cores)
    python benchmarks/pretrained_study.py --quick --out /tmp/q   # smoke test (seconds)

Two models are trained here (no downloads): a tanh MLP 64 -> 256 -> 256 -> 10 on
scikit-learn's digits (8x8 images, a fixed 80/20 split; its two hidden layers are made
sparse, the 10-way output layer stays dense), and a 2-layer pre-norm transformer (d 64, FFN
256) on a synthetic histogram task (its FFN layers are made sparse; attention stays dense).
The chosen layers are made sparse at density 1/G for G in {2, 4, 8} in six ways:

    dense          the trained dense model, fine-tuned the same way (the reference)
    keep           convert(keep_weights=True): topology chosen to keep the most energy
    keep+orth      the same, each block replaced by its scaled polar factor (orthogonalize=True)
    random-kept    W's values on a uniformly random SAO partition (isolates the topology choice)
    sao-reinit     convert's default: a random SAO topology, SAO-initialised (weights dropped)
    magnitude      torch.nn.utils.prune.l1_unstructured per layer at amount 1 - 1/G (same
                   density, unstructured: the peer a user would pick; no speed-up by itself)

Reported: the retained energy ||W*M||^2 / ||W||^2 of each sparse layer (keep vs the mean and
spread of ``draws`` random SAO partitions, and unstructured magnitude's, the most any mask
of that density can keep), and test accuracy before fine-tuning (step 0) and after 100
fine-tuning steps (Adam, batch 64, the task's lr; the same for every variant), mean and
standard deviation over 3 seeds (the seed sets the batch order and every random choice of
the conversion).  Writes ``pretrained_<date>.{json,md}`` into --out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import pathlib
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import pretrained
from sao_kernels.bench.machine import machine_meta, recording_load
from sao_kernels.bench.results import json_file, text_file, write_outputs

VARIANTS = ("dense", "keep", "keep+orth", "random-kept", "sao-reinit", "magnitude")


@dataclasses.dataclass
class Task:
    """A model trained here, the layers made sparse, and how it is trained."""

    name: str
    description: str
    data: tuple  # (x_train, y_train, x_test, y_test)
    build: Callable[[], nn.Module]
    sparse: tuple[str, ...]  # qualified names of the layers made sparse
    train_steps: int
    lr: float


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


def histogram_data(vocab: int, seq: int, n_train: int, n_test: int) -> tuple:
    """The histogram task: for each position, how often its token occurs in the sequence."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n_train + n_test, seq), generator=gen)
    y = (x[:, :, None] == x[:, None, :]).sum(-1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + fc2(gelu(fc1(LN x)))."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int, seq: int, d: int, heads: int, ffn: int, layers: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(seq, d))
        self.blocks = nn.Sequential(*[Block(d, heads, ffn) for _ in range(layers)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x) + self.pos)))


def tasks(quick: bool) -> list[Task]:
    width, d, ffn, seq = (32, 16, 32, 8) if quick else (256, 64, 256, 16)
    mlp_task = Task(
        "digits-mlp",
        f"tanh MLP 64 -> {width} -> {width} -> 10 on scikit-learn digits (1437 train / 360 test); the two "
        "hidden layers are made sparse (the output layer stays dense)",
        load_digits_split(),
        lambda: mlp(width),
        ("0", "2"),
        60 if quick else 1500,
        1e-3,
    )
    layers = 2
    tf_task = Task(
        "histogram-transformer",
        f"{layers}-layer pre-norm transformer (d {d}, 4 heads, FFN {ffn}, GELU) on the histogram task (for each "
        f"of {seq} tokens from a vocabulary of 8, how often it occurs in the sequence; per-token accuracy, "
        "8192 train / 2048 test sequences); the FFN layers are made sparse (attention stays dense)",
        histogram_data(8, seq, 8192, 2048),
        lambda: TinyTransformer(8, seq, d, 4, ffn, layers, seq + 1),
        tuple(f"blocks.{i}.{fc}" for i in range(layers) for fc in ("fc1", "fc2")),
        60 if quick else 1000,
        3e-3,
    )
    return [mlp_task, tf_task]


def _loss_and_hits(model: nn.Module, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return nn.functional.cross_entropy(logits, y), (logits.argmax(-1) == y)


def train(model: nn.Module, x, y, steps: int, seed: int, lr: float = 1e-3, batch: int = 64) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        _loss_and_hits(model, x[idx], y[idx])[0].backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return float(_loss_and_hits(model, x, y)[1].float().mean())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def sparse_variant(trained: nn.Module, task: Task, variant: str, G: int, seed: int) -> nn.Module:
    """A copy of ``trained`` with the task's sparse layers at density 1/G."""
    model = copy.deepcopy(trained)
    gen = torch.Generator().manual_seed(seed)

    def chosen(name: str, module: nn.Module) -> bool:
        return name in task.sparse

    if variant == "dense":
        return model
    if variant in ("keep", "keep+orth"):
        return sk.convert(
            model, groups=G, filter_fn=chosen, keep_weights=True, orthogonalize=variant == "keep+orth", generator=gen
        )
    if variant == "sao-reinit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sk.ReinitializedWarning)  # the point of this variant
            return sk.convert(model, groups=G, filter_fn=chosen, generator=gen)
    for name in task.sparse:
        layer = model.get_submodule(name)
        if variant == "random-kept":
            blocks, _ = pretrained.random_blocks(layer.weight, G, generator=gen)
            _replace(model, name, sk.SAOLinear.from_blocks(blocks, layer.bias.detach().clone()))
        elif variant == "magnitude":
            prune.l1_unstructured(layer, "weight", amount=1.0 - 1.0 / G)
        else:
            raise ValueError(f"variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return model


def energy_rows(trained: nn.Module, task: Task, groups, draws: int, seed: int) -> list[dict]:
    rows = []
    for G in groups:
        for name in task.sparse:
            w = trained.get_submodule(name).weight.detach()
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


def accuracy_rows(trained, task: Task, groups, seeds, steps: int) -> list[dict]:
    x_tr, y_tr, x_te, y_te = task.data
    rows = []
    for G in groups:
        for variant in VARIANTS:
            before, after = [], []
            for seed in seeds:
                model = sparse_variant(trained, task, variant, G, seed)
                before.append(accuracy(model, x_te, y_te))
                train(model, x_tr, y_tr, steps, seed=1000 + seed, lr=task.lr)
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


def task_markdown(task: dict, cfg: dict) -> list[str]:
    lines = [
        f"## {task['name']}",
        "",
        f"Model: {task['description']}. Trained {task['train_steps']} steps (Adam, lr {task['lr']:g}, batch 64): "
        f"dense test accuracy {task['dense_acc']:.4f}.",
        "",
        "### Retained energy ||W*M||^2 / ||W||^2 of the trained layers",
        "",
        f"keep = this conversion; random = a uniformly random SAO partition (mean +- std over {cfg['draws']} "
        "draws; max); magnitude = unstructured top-1/G entries (the most any mask of that density keeps; "
        "not SAO-structured). A random SAO partition keeps 1/G in expectation.",
        "",
        "| G | layer | shape | keep | random mean +- std (max) | magnitude (unstructured) |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in task["energy"]:
        lines.append(
            f"| {r['groups']} | {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['keep']:.4f} | "
            f"{r['random_mean']:.4f} +- {r['random_std']:.4f} ({r['random_max']:.4f}) | {r['magnitude']:.4f} |"
        )
    lines += [
        "",
        f"### Test accuracy at step 0 and after {cfg['steps']} fine-tuning steps",
        "",
        f"Mean +- standard deviation over {len(cfg['seeds'])} seeds ({', '.join(map(str, cfg['seeds']))}); "
        f"fine-tuning: Adam, lr {task['lr']:g}, batch 64, {cfg['steps']} steps, the same for every variant.",
        "",
        "| G | variant | accuracy at step 0 | accuracy after fine-tuning |",
        "| ---: | --- | ---: | ---: |",
    ]
    for r in task["accuracy"]:
        lines.append(
            f"| {r['groups']} | {r['variant']} | {r['acc0_mean']:.4f} +- {r['acc0_std']:.4f} | "
            f"{r['accN_mean']:.4f} +- {r['accN_std']:.4f} |"
        )
    return lines + [""]


def markdown(meta: dict, results: list[dict], cfg: dict) -> str:
    lines = [
        f"# Keeping pretrained weights: convert(keep_weights=True) vs baselines ({meta['date'][:10]})",
        "",
        f"Machine: {meta['cpu']}, {meta['threads']} torch thread(s), torch {meta['torch']}; load average before "
        f"{meta.get('load_before')}, after {meta.get('load_after')}; run time {cfg['seconds']:.0f} s.",
        f"Command: `{meta['command']}`",
        "",
        "Variants: dense (the trained model, fine-tuned alike); keep = convert(keep_weights=True); keep+orth = "
        "with orthogonalize=True; random-kept = W's values on a random SAO partition; sao-reinit = convert's "
        "default (random topology, SAO values); magnitude = torch.nn.utils.prune.l1_unstructured per layer at "
        "amount 1 - 1/G (same density, unstructured).",
        "",
    ]
    for task in results:
        lines += task_markdown(task, cfg)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    cfg = dict(steps=100, groups=(2, 4, 8), seeds=(0, 1, 2), draws=20)
    if args.quick:
        cfg.update(steps=5, groups=(2, 4), seeds=(0,), draws=3)
    # One thread: these layers are small, and on a shared 2-core machine a 2-thread region waits
    # for a descheduled thread at every op (measured: 0.6 s per step with 2 threads under load,
    # 5 ms with 1).
    torch.set_num_threads(1)
    meta = machine_meta("cpu")
    meta["command"] = " ".join(["python benchmarks/pretrained_study.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    results = []
    with recording_load(meta):
        for task in tasks(args.quick):
            torch.manual_seed(0)
            x_tr, y_tr, x_te, y_te = task.data
            trained = train(task.build(), x_tr, y_tr, task.train_steps, seed=0, lr=task.lr)
            dense_acc = accuracy(trained, x_te, y_te)
            print(f"{task.name}: dense accuracy {dense_acc:.4f}", flush=True)
            results.append(
                dict(
                    name=task.name,
                    description=task.description,
                    train_steps=task.train_steps,
                    lr=task.lr,
                    dense_acc=dense_acc,
                    energy=energy_rows(trained, task, cfg["groups"], cfg["draws"], seed=0),
                    accuracy=accuracy_rows(trained, task, cfg["groups"], cfg["seeds"], cfg["steps"]),
                )
            )
    cfg["seconds"] = time.perf_counter() - start
    stem = f"pretrained_{datetime.date.fromisoformat(meta['date'][:10]).isoformat()}"
    md = markdown(meta, results, cfg)
    out = pathlib.Path(args.out)
    write_outputs(
        out,
        {
            f"{stem}.json": json_file({"meta": meta, "settings": cfg, "tasks": results}),
            f"{stem}.md": text_file(md),
        },
    )
    print(md)
    print(f"wrote {out / stem}.json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
