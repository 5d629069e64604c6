"""sk.convert on transformers models built from tiny configs (issue 22): GPT-2's Conv1D
projections convert, output heads stay dense unless asked, the summary covers BERT, GPT-2,
Llama, ViT and T5, fresh models raise no ReinitializedWarning, and sk.report reads a
ModelOutput.  No downloads: every model is built from its config."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

import sao_kernels as sk
from sao_kernels import SAOLinear
from sao_kernels.conversion import ReinitializedWarning

transformers.logging.set_verbosity_error()
BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 64}


def gpt2(layers=2):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=layers, n_head=2, vocab_size=64, n_positions=32))


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return LlamaForCausalLM(config)


def vit():
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=4,
    )
    return ViTForImageClassification(config)


def t5():
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))


def convert_strict(model, **kwargs):
    """convert, failing on a ReinitializedWarning (the models here are freshly built)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", ReinitializedWarning)
        out = sk.convert(model, **kwargs)
    return out, [str(w.message) for w in caught]


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))


def test_gpt2_converts_every_conv1d_projection():
    model = gpt2()
    ref_shapes = {n: (m.nf, m.nx) for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(ref_shapes) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    _, caught = convert_strict(model, groups=4)
    for name, (out_f, in_f) in ref_shapes.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, SAOLinear) and (layer.out_features, layer.in_features) == (out_f, in_f), name
        assert layer.groups == 4
    # the tied lm_head is the only module left dense, and the only warning
    assert caught == [
        "convert: left lm_head dense: its weight is tied to transformer.wte.weight (converting it would break the tie)"
    ]
    summary = sk.conversion_summary(model)
    assert [r.path for r in summary.converted] == list(ref_shapes)
    assert {r.type for r in summary.converted} == {"Conv1D"}
    assert summary["transformer.h.0.attn.c_attn"].shape == (96, 32)  # (out, in), not Conv1D's stored (in, out)
    out = model(IDS, labels=IDS)
    out.loss.backward()  # trains: every SAO layer gets a gradient
    assert all(model.get_submodule(n).values.grad is not None for n in ref_shapes)


def test_gpt2_selection_by_torchao_filter_and_target_modules():
    model = gpt2(layers=1)
    convert_strict(model, groups=2, filter_fn=lambda mod, fqn: ".mlp." in fqn)
    assert [r.path for r in sk.conversion_summary(model).converted] == [
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]
    summary = sk.conversion_summary(gpt2(layers=1), groups=2, target_modules=["c_attn"])
    assert [r.path for r in summary.converted] == ["transformer.h.0.attn.c_attn"]


def test_llama_lm_head_is_left_dense_unless_asked():
    model = llama()
    _, caught = convert_strict(model, groups=4)
    assert type(model.lm_head) is torch.nn.Linear
    assert caught == ["convert: left lm_head dense: an output head (include_heads=True converts it)"]
    summary = sk.conversion_summary(model)
    assert len(summary.converted) == 7 and summary["lm_head"].reason.startswith("an output head")
    model = llama()
    convert_strict(model, groups=4, include_heads=True)
    assert isinstance(model.lm_head, SAOLinear)
    assert model(IDS).logits.shape == (2, 7, 64)


@pytest.mark.parametrize(
    "build, converted, dense",
    [
        (
            lambda: BertForMaskedLM(BertConfig(**BERT)),
            7,  # q, k, v, attention output, intermediate, output, cls transform (no pooler in an MLM)
            {"cls.predictions.decoder": "its weight is tied to bert.embeddings.word_embeddings.weight"},
        ),
        (
            lambda: BertForSequenceClassification(BertConfig(**BERT, num_labels=4)),
            7,
            {"classifier": "an output head"},
        ),
        (gpt2, 8, {"lm_head": "its weight is tied to transformer.wte.weight"}),
        (llama, 7, {"lm_head": "an output head"}),
        (
            vit,
            6,
            {
                "vit.embeddings.patch_embeddings.projection": "init='delta' needs odd kernel sizes",
                "classifier": "an output head",
            },
        ),
        (t5, 16, {"lm_head": "its weight is tied to shared.weight"}),
    ],
    ids=["bert-mlm", "bert-classifier", "gpt2", "llama", "vit", "t5"],
)
def test_summary_covers_the_walk_through_models(build, converted, dense):
    model = build()
    summary = sk.conversion_summary(model, groups=4)
    assert len(summary.converted) == converted
    assert {r.path: r.reason for r in summary.dense}.keys() == dense.keys()
    for path, reason in dense.items():
        assert summary[path].reason.startswith(reason), summary[path].reason
    for row in summary.converted:
        assert row.groups == 4 and row.flops_after * 4 == row.flops_before and row.params_after < row.params_before
    t = summary.totals
    assert t["model_params_before"] == sum(p.numel() for p in model.parameters())
    md = summary.to_markdown()
    assert all(f"| {r.path} |" in md for r in summary)
    # and the real conversion does what the plan said, without a ReinitializedWarning
    convert_strict(model, groups=4)
    assert [r.as_dict() for r in sk.conversion_summary(model)] == [r.as_dict() for r in summary]


def test_report_reads_a_model_output():
    model = gpt2(layers=1)
    convert_strict(model, groups=4)
    rep = sk.report(model, IDS, measure_latency=False)  # GPT2LMHeadModel returns a ModelOutput
    rows = {r["name"]: r for r in rep.rows}
    c_fc = rows["transformer.h.0.mlp.c_fc"]
    assert c_fc["type"] == "SAOLinear" and c_fc["flops_fwd"] == 2 * 14 * 128 * 32 // 4
    assert c_fc["flops_fwd_bwd"] == 3 * c_fc["flops_fwd"]  # forward, input gradient, values gradient
    fwd_only = sk.report(model, IDS, measure_latency=False, backward=False)
    assert all(r["flops_fwd_bwd"] is None for r in fwd_only.rows) and fwd_only.totals["flops_fwd_bwd"] is None
    assert "fwd+bwd" not in fwd_only.to_markdown().split("| layer |")[1]
