"""``python -m sao_kernels bench --suite models``: whole models, dense vs converted to SAO.

BERT, GPT-2, Llama and ViT encoders built from transformers configs at base width
(hidden 768; FFN 3072, Llama's 2048 = 8/3 x 768), ``layers`` blocks each, and a ResNet-style
CNN (one basic block per stage, widths 64-512, 1x1 projection shortcuts).  Each model is
built once dense and once per G (``sao_kernels.convert(model, groups=G)``: what converts at
that G converts; the rest, e.g. a 3-channel stem, stays dense with convert's warning), and
timed in the same interleaved rounds:

* ``train_step``: forward, loss = mean(out^2), backward, AdamW step (the optimiser's state
  and update are G x smaller for the converted layers; part of what is measured);
* ``infer_b1`` / ``infer_bN``: forward under ``torch.inference_mode`` in eval mode at batch
  1 and at a larger batch (with ``--frozen-weights``, inside ``sao_kernels.frozen_weights()``).

Every row carries the parameters, the FLOPs of its mode (``FlopCounterMode``; a training
step counts forward + backward), how many Linear / Conv2d layers were converted, and the
harness's spread (min / median / IQR, a 95 % interval on the speed-up) and flags.  Dropout
is off (its random draws would differ between the candidates).  Vocabularies are 8192
tokens (an embedding's size changes nothing SAO touches; a real 30-50k vocabulary only adds
the same optimiser work to every candidate).  A model that converts no layer at any G is
not timed (it would be timed against itself) and is listed as not measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..weight_cache import frozen_weights as keep_weights
from .results import TIMING_FIELDS, fmt_ms, fmt_speedup, results_markdown, write_results
from .timing import TimingSettings, compare, interleave

MODELS = ("bert", "gpt2", "llama", "vit", "resnet")
GROUPS = (2, 4, 8)
MODEL_FIELDS = (
    "model",
    "config",
    "mode",
    "batch",
    "groups",
    "converted",
    "candidates",
    "params",
    "params_dense",
    "flops",
    "flops_dense",
) + TIMING_FIELDS


@dataclasses.dataclass(frozen=True)
class SuiteSize:
    """Sizes of one suite run: widths, depth, sequence / image size and batches."""

    hidden: int = 768
    ffn: int = 3072
    llama_ffn: int = 2048
    heads: int = 12
    layers: int = 2
    vocab: int = 8192
    seq: int = 128
    image: int = 224
    patch: int = 16
    cnn_widths: tuple[int, ...] = (64, 128, 256, 512)
    cnn_image: int = 224
    train_batch: int = 4
    infer_batch: int = 8


FULL = SuiteSize()
QUICK = SuiteSize(
    hidden=64,
    ffn=128,
    llama_ffn=128,
    heads=2,
    layers=1,
    vocab=128,
    seq=16,
    image=32,
    patch=8,
    cnn_widths=(16, 32),
    cnn_image=32,
    train_batch=2,
    infer_batch=4,
)


# ---------------------------------------------------------------------------- models
class MainOutput(nn.Module):
    """The wrapped model's main output tensor (``last_hidden_state`` of a transformers
    output, or the tensor itself), so that every model is ``inputs -> tensor``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out if torch.is_tensor(out) else out[0]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs + BN, identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet(widths: Sequence[int], classes: int = 1000) -> nn.Module:
    """A ResNet-style CNN: 7x7/2 stem + max-pool, one basic block per stage (stride 2 from
    the second stage), global pooling, linear classifier."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers.append(BasicBlock(cin, w, 1 if i == 0 else 2))
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def build(name: str, size: SuiteSize) -> tuple[nn.Module, Callable[[int], torch.Tensor], str]:
    """(model inputs -> tensor, make_inputs(batch), config description), seeded."""
    torch.manual_seed(0)
    if name == "resnet":
        model = resnet(size.cnn_widths)
        desc = f"widths {'/'.join(map(str, size.cnn_widths))}, {size.cnn_image}x{size.cnn_image}"
        return model, lambda batch: torch.randn(batch, 3, size.cnn_image, size.cnn_image), desc
    import transformers as tf

    h, L, heads = size.hidden, size.layers, size.heads
    if name == "bert":
        cfg = tf.BertConfig(
            vocab_size=size.vocab,
            hidden_size=h,
            num_hidden_layers=L,
            num_attention_heads=heads,
            intermediate_size=size.ffn,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = tf.BertModel(cfg, add_pooling_layer=False)
    elif name == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=size.vocab,
            n_embd=h,
            n_layer=L,
            n_head=heads,
            n_inner=size.ffn,
            bos_token_id=0,  # (GPT-2's default 50256 is outside the suite's vocabulary)
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = tf.GPT2Model(cfg)
    elif name == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=size.vocab,
            hidden_size=h,
            num_hidden_layers=L,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=size.llama_ffn,
            max_position_embeddings=max(2 * size.seq, 64),
        )
        model = tf.LlamaModel(cfg)
    elif name == "vit":
        cfg = tf.ViTConfig(
            hidden_size=h,
            num_hidden_layers=L,
            num_attention_heads=heads,
            intermediate_size=size.ffn,
            image_size=size.image,
            patch_size=size.patch,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = tf.ViTModel(cfg, add_pooling_layer=False)
        desc = f"hidden {h}, FFN {size.ffn}, {L} layers, {size.image}x{size.image} / {size.patch}"
        return MainOutput(model), lambda batch: torch.randn(batch, 3, size.image, size.image), desc
    else:
        raise ValueError(f"model {name!r} is not in the suite; allowed: {', '.join(MODELS)}")
    ffn = size.llama_ffn if name == "llama" else size.ffn
    desc = f"hidden {h}, FFN {ffn}, {L} layers, seq {size.seq}"
    return MainOutput(model), lambda batch: torch.randint(0, size.vocab, (batch, size.seq)), desc


def _candidates(model: nn.Module) -> int:
    """Linear / Conv2d layers, and transformers' Conv1D (GPT-2's linear layers)."""
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) or type(m).__name__ == "Conv1D" for m in model.modules())


def _converted(model: nn.Module) -> int:
    from ..layers import SAOConv2d, SAOLinear

    return sum(isinstance(m, (SAOLinear, SAOConv2d)) for m in model.modules())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops(model: nn.Module, x: torch.Tensor, train: bool) -> int:
    from .flop_count import flop_counter

    with flop_counter(display=False) as counter:
        if train:
            model(x).float().pow(2).mean().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- steps
def _train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()

    return step


def _infer(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def fwd() -> object:
        with torch.inference_mode():
            return model(x)

    return fwd


# ---------------------------------------------------------------------------- suite
def model_suite(
    settings: TimingSettings,
    *,
    models: Sequence[str] = MODELS,
    groups: Sequence[int] = GROUPS,
    size: SuiteSize = FULL,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    frozen_weights: bool = False,
) -> tuple[list[dict], list[dict]]:
    """One row per (model, mode, G); see the module docstring.  ``frozen_weights``: the
    inference modes run inside ``sao_kernels.frozen_weights()`` (held for the mode's whole
    timed block, so every call after the first reads the kept layouts).

    Returns:
        (rows, skipped): a model that converts nothing at any G is skipped with the reason.
    """
    from ..conversion import convert

    rows: list[dict] = []
    skipped: list[dict] = []
    modes = (("train_step", size.train_batch), ("infer_b1", 1), (f"infer_b{size.infer_batch}", size.infer_batch))
    for name in models:
        dense, make_inputs, desc = build(name, size)
        dense = dense.to(device)
        saos: dict[int, nn.Module] = {}
        notes: list[str] = []
        for G in groups:
            model, _, _ = build(name, size)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = convert(model.to(device), groups=G, generator=torch.Generator().manual_seed(G))
            notes += [str(w.message) for w in caught if "re-initialised" not in str(w.message)]
            if _converted(model):
                saos[G] = model
            else:
                skipped.append(
                    dict(
                        what=f"{name} G={G}",
                        reason=f"convert converted 0 of its {_candidates(dense)} Linear / Conv1D / Conv2d layers"
                        + (f" ({notes[-1][:160]})" if notes else ""),
                    )
                )
        if not saos:
            if progress:
                progress(name)
            continue
        for mode, batch in modes:
            x = make_inputs(batch).to(device)
            train = mode == "train_step"
            every = {"dense": dense, **{f"G={G}": m for G, m in saos.items()}}
            for m in every.values():
                m.train(train)
            flops = {k: _flops(m, x, train) for k, m in every.items()}
            make = _train_step if train else _infer
            with keep_weights() if frozen_weights and not train else contextlib.nullcontext():
                stats = interleave({k: make(m, x) for k, m in every.items()}, settings, device=device)
            for G, model in saos.items():
                key = f"G={G}"
                cmp = compare(stats["dense"], stats[key], ideal=float(G), flag_rel_spread=settings.flag_rel_spread)
                rows.append(
                    dict(
                        model=name,
                        config=desc,
                        mode=mode,
                        batch=batch,
                        groups=G,
                        converted=_converted(model),
                        candidates=_candidates(dense),
                        params=_params(model),
                        params_dense=_params(dense),
                        flops=flops[key],
                        flops_dense=flops["dense"],
                        **cmp.fields(),
                        ideal_speedup=float(G),
                        flag=cmp.flag,
                        flag_reason=cmp.flag_reason,
                    )
                )
        if progress:
            progress(name)
    return rows, skipped


def _si(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


MODEL_COLUMNS = [
    ("model", lambda r: r["model"], False),
    ("mode", lambda r: r["mode"], False),
    ("G", lambda r: str(r["groups"]), True),
    ("converted", lambda r: f"{r['converted']}/{r['candidates']}", True),
    ("params SAO / dense", lambda r: f"{_si(r['params'])} / {_si(r['params_dense'])}", True),
    ("FLOPs SAO / dense", lambda r: f"{_si(r['flops'])} / {_si(r['flops_dense'])}", True),
    ("SAO ms (IQR)", fmt_ms, True),
    ("dense ms (IQR)", lambda r: fmt_ms(r, side="_dense"), True),
    ("speed-up [95% CI]", fmt_speedup, True),
    ("rounds", lambda r: str(r["rounds"]), True),
]


def write_model_results(
    rows: Sequence[dict],
    meta: dict,
    out_dir,
    *,
    settings: TimingSettings,
    skipped: Sequence[dict] = (),
    stem: str = "results",
    plot_name: str | None = "speedup.png",
    keep_previous: bool = False,
) -> dict:
    """``{stem}.{json,csv,md}`` and the speed-up plot (a panel per mode, a line per model)."""
    from .plots import plot_speedup

    configs = {}
    for r in rows:
        configs.setdefault(r["model"], r["config"])
    notes = [
        "Models: " + "; ".join(f"{k}: {v}" for k, v in configs.items()) + ".",
        "",
        "mode: train_step = forward, loss mean(out^2), backward, AdamW step at the training batch; infer_bN = "
        "forward under torch.inference_mode in eval mode at batch N. FLOPs: FlopCounterMode (train_step: "
        "forward + backward). converted = SAO layers / Linear + Conv1D + Conv2d layers of the model. ideal = G (only "
        "the converted matmuls shrink, so model rows stay below it).",
    ]
    if meta.get("frozen_weights"):
        notes.append(
            "The infer_bN modes ran inside sao_kernels.frozen_weights() (--frozen-weights): the native forward "
            "kept each SAO weight's re-laid copy between calls."
        )
    md = results_markdown(
        rows,
        meta,
        what="Whole models, SAO vs dense",
        columns=MODEL_COLUMNS,
        flag_spread=settings.flag_rel_spread,
        skipped=skipped,
        notes=notes,
    )
    plot = None
    if plot_name and rows:
        title = f"Whole models, SAO vs dense, on {meta.get('gpu') or meta.get('cpu')} ({meta['date'][:10]})"
        plot = (
            plot_name,
            lambda path: plot_speedup(rows, path, title=title, panel_key=("mode",), color_key="model", style_keys=()),
        )
    return write_results(
        out_dir,
        rows,
        meta,
        stem=stem,
        fields=MODEL_FIELDS,
        markdown=md,
        skipped=skipped,
        plot=plot,
        owned_plot=plot_name,
        keep_previous=keep_previous,
    )
