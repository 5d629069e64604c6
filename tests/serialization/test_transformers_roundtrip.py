"""sk.from_pretrained: a converted transformers model survives save_pretrained.

Acceptance test of issue 14: BertModel -> sk.convert -> save_pretrained -> sk.from_pretrained
gives outputs equal to 1e-6 (here: exactly equal, and the same state).  Tiny configs built in
the test (no downloads).  transformers and safetensors are required (the [hf] extra).
"""

import json
import pickle
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertForMaskedLM, BertModel

import sao_kernels as sk
from sao_kernels.serialization import from_pretrained

CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}
transformers.logging.set_verbosity_error()  # the expected load reports of the head <-> base cases


def converted(cls=BertModel, **config):
    """A tiny model converted at sparsity 0.75, its values moved away from their init."""
    torch.manual_seed(0)
    model = cls(BertConfig(**{**CONFIG, **config}))
    with warnings.catch_warnings():  # which layers stay dense, which are re-initialised: known here
        warnings.simplefilter("ignore")
        sk.convert(model, sparsity=0.75, block_size=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def sao_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (sk.SAOLinear, sk.SAOConv2d))}


def assert_same_state(loaded, ref):
    state, ref_state = loaded.state_dict(), ref.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    layers, ref_layers = sao_layers(loaded), sao_layers(ref)
    assert layers.keys() == ref_layers.keys() and len(layers) > 0
    for name, layer in ref_layers.items():
        other = layers[name]
        assert (other.groups, other.block_size, other.values.requires_grad) == (
            layer.groups,
            layer.block_size,
            layer.values.requires_grad,
        ), name


INPUT_IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))


def test_bert_round_trip_through_save_pretrained(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    saved = load_file(tmp_path / "model.safetensors")
    assert {
        "encoder.layer.0.intermediate.dense.in_index",
        "encoder.layer.0.intermediate.dense.out_index",
    } <= saved.keys()

    loaded, info = from_pretrained(BertModel, tmp_path, output_loading_info=True)
    assert type(loaded) is BertModel and not loaded.training
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert_same_state(loaded, model)
    with torch.no_grad():
        out, ref = loaded(INPUT_IDS).last_hidden_state, model(INPUT_IDS).last_hidden_state
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)  # the acceptance criterion ...
    assert torch.equal(out, ref)  # ... and in fact bit-exact
    pickle.loads(pickle.dumps(loaded))  # a plain BertModel again, not the loading subclass

    loaded.save_pretrained(tmp_path / "again")  # and it survives a second round
    assert_same_state(from_pretrained(BertModel, tmp_path / "again"), model)


def test_auto_class_and_dtype(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(AutoModel, tmp_path, dtype=torch.float64)
    assert type(loaded) is BertModel
    for name, layer in sao_layers(model).items():
        other = loaded.get_submodule(name)
        assert other.values.dtype == torch.float64 and other.in_index.dtype == other.out_index.dtype == torch.int64
        assert torch.equal(other.values, layer.values.double()) and torch.equal(other.in_index, layer.in_index)


def test_masked_lm_with_its_tied_decoder_and_a_sharded_checkpoint(tmp_path):
    model = converted(BertForMaskedLM)  # convert leaves the decoder dense: it is tied to the word embeddings
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = from_pretrained(BertForMaskedLM, tmp_path)
    decoder, embedding = loaded.cls.predictions.decoder, loaded.bert.embeddings.word_embeddings
    assert type(decoder) is torch.nn.Linear and decoder.weight is embedding.weight  # still tied
    assert_same_state(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(INPUT_IDS).logits, model(INPUT_IDS).logits)


def test_an_sao_layer_where_transformers_ties_a_weight(tmp_path):
    model = converted(BertForMaskedLM)
    model.cls.predictions.decoder = sk.SAOLinear(32, 128, groups=4, generator=torch.Generator().manual_seed(4))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(BertForMaskedLM, tmp_path)
    assert "cls.predictions.decoder.weight" not in loaded.all_tied_weights_keys  # untied, as it was saved
    assert_same_state(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(INPUT_IDS).logits, model(INPUT_IDS).logits)


def test_base_model_from_a_head_checkpoint_and_back(tmp_path):
    model = converted(BertForMaskedLM)
    model.save_pretrained(tmp_path / "mlm")
    base, info = from_pretrained(BertModel, tmp_path / "mlm", output_loading_info=True)
    assert info["missing_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}  # no pooler in BertForMaskedLM
    assert set(sao_layers(base)) == {k.removeprefix("bert.") for k in sao_layers(model.bert)}
    with torch.no_grad():
        assert torch.equal(base.encoder(base.embeddings(INPUT_IDS))[0], model.bert(INPUT_IDS).last_hidden_state)

    model.bert.save_pretrained(tmp_path / "base")
    head, info = from_pretrained(BertForMaskedLM, tmp_path / "base", output_loading_info=True)
    assert all(k.startswith("cls.") for k in info["missing_keys"])  # the new head, dense and initialised
    assert_same_state(head.bert, model.bert)


def test_a_dense_checkpoint_loads_as_transformers_loads_it(tmp_path):
    torch.manual_seed(0)
    dense = BertModel(BertConfig(**CONFIG)).eval()
    dense.save_pretrained(tmp_path)
    loaded = from_pretrained(BertModel, tmp_path)
    assert not sao_layers(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(INPUT_IDS).last_hidden_state, dense(INPUT_IDS).last_hidden_state)


def test_legacy_bin_checkpoint(tmp_path):
    model = converted()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert_same_state(from_pretrained(BertModel, tmp_path), model)


def test_state_dict_argument():
    model = converted()
    loaded = from_pretrained(BertModel, None, config=model.config, state_dict=model.state_dict())
    assert_same_state(loaded, model)


def test_a_config_that_contradicts_the_checkpoint(tmp_path):
    converted().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(
        ValueError,
        match=r"holds an SAO linear layer 64x32 \(out x in, G=4\) for "
        r"'encoder.layer.0.intermediate.dense', where the model has a Linear 128x32",
    ):
        from_pretrained(BertModel, tmp_path)


def test_a_corrupted_index_is_refused(tmp_path):
    converted().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["encoder.layer.1.output.dense.out_index"] = torch.zeros_like(state["encoder.layer.1.output.dense.out_index"])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"'encoder.layer.1.output.dense' is not a valid SAO layer: out_index must "
        r"be a permutation",
    ):
        from_pretrained(BertModel, tmp_path)


def test_a_half_stored_layer_is_refused(tmp_path):
    converted().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["pooler.dense.in_index"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"'pooler.dense' holds pooler.dense.out_index, pooler.dense.values but "
        r"not pooler.dense.in_index",
    ):
        from_pretrained(BertModel, tmp_path)


def test_not_a_transformers_class():
    with pytest.raises(
        TypeError,
        match=r"model_class must be a transformers model class \(e.g. BertModel\) or an "
        r"Auto class",
    ):
        from_pretrained(torch.nn.Linear, "unused")


# ------------------------------------------------------------------ GPT-2 (issue 22)
def converted_gpt2():
    """A tiny GPT-2 whose Conv1D projections are SAO layers, values moved from their init."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    with warnings.catch_warnings():  # the tied lm_head stays dense: known here
        warnings.simplefilter("ignore")
        sk.convert(model, groups=4, block_size=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_gpt2_round_trip_through_save_pretrained(tmp_path):
    model = converted_gpt2()
    assert len(sao_layers(model)) == 8  # c_attn, c_proj, c_fc, c_proj per block
    model.save_pretrained(tmp_path)
    loaded, info = from_pretrained(transformers.GPT2LMHeadModel, tmp_path, output_loading_info=True)
    assert type(loaded) is transformers.GPT2LMHeadModel
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert_same_state(loaded, model)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    with torch.no_grad():
        out, ref = loaded(INPUT_IDS).logits, model(INPUT_IDS).logits
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.equal(out, ref)
    loaded.save_pretrained(tmp_path / "again")  # the SAO block survives a second round
    again = from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "again")
    assert type(again) is transformers.GPT2LMHeadModel and type(again.config) is transformers.GPT2Config
    assert_same_state(again, model)
    pickle.loads(pickle.dumps(again))


def test_config_carries_an_sao_block_and_the_plain_loader_refuses(tmp_path):
    model = converted_gpt2()
    model.save_pretrained(tmp_path)
    block = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert block["quant_method"] == "sao_kernels" and block["converted_layers"] == 8
    assert block["load_with"] == "sao_kernels.from_pretrained(GPT2LMHeadModel, path)"
    # without the block transformers would build random dense Conv1D layers and say little
    with pytest.raises(
        ValueError, match=r"holds sao_kernels SAO sparse layers.*sao_kernels\.from_pretrained\(GPT2LMHead"
    ):
        transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"sao_kernels\.from_pretrained"):
        transformers.AutoModel.from_pretrained(tmp_path)
    loaded = from_pretrained(transformers.GPT2LMHeadModel, tmp_path, config=model.config)  # a config object too
    assert loaded.config.quantization_config["quant_method"] == "sao_kernels"
    assert model.config.quantization_config["quant_method"] == "sao_kernels"  # the caller's config kept it


def test_bert_checkpoint_has_the_block_and_a_dense_one_has_none(tmp_path):
    converted().save_pretrained(tmp_path / "sao")
    assert "quantization_config" in json.loads((tmp_path / "sao" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"sao_kernels\.from_pretrained\(BertModel, path\)"):
        BertModel.from_pretrained(tmp_path / "sao")
    torch.manual_seed(0)
    BertModel(BertConfig(**CONFIG)).save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    BertModel.from_pretrained(tmp_path / "dense")  # untouched
