"""sao_kernels.convert on an MLP, a small CNN and a TransformerEncoderLayer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import SAOConv2d, SAOLinear
from sao_kernels.conversion import ReinitializedWarning

F64 = torch.float64

# convert() says, once per call, that it re-initialised the layers; the tests that check it record it.
pytestmark = pytest.mark.filterwarnings("ignore:convert.*re-initialised by SAO")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(F64)


def cnn():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(32, 32, (1, 3), padding=(0, 1), bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).to(F64)


def convert_recording(model, **kwargs):
    """(new root, the other warnings, the ReinitializedWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sk.convert(model, **kwargs)
    reinit = [str(w.message) for w in caught if issubclass(w.category, ReinitializedWarning)]
    return out, [str(w.message) for w in caught if not issubclass(w.category, ReinitializedWarning)], reinit


def run_forward_backward(model, x):
    x = x.clone().requires_grad_(True)
    y = model(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    return y


def test_mlp():
    model = mlp()
    before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    biases = {n: m.bias.detach().clone() for n, m in before.items()}
    out, warns, reinit = convert_recording(model, sparsity=0.75, generator=torch.Generator().manual_seed(0))
    assert out is model
    # 0 and 2 convert; Linear(64, 10) cannot reach 0.75 (4 groups do not divide 10): stays dense
    assert isinstance(model[0], SAOLinear) and isinstance(model[2], SAOLinear)
    assert type(model[4]) is nn.Linear and model[4] is before["4"]
    assert len(warns) == 1 and warns[0].startswith("convert: left 4 dense") and "10" in warns[0]
    # freshly built: nothing learned is lost, so no ReinitializedWarning (issue 22)
    assert reinit == []
    for i in (0, 2):
        layer = model[i]
        assert layer.sparsity == 0.75 and layer.groups == 4
        assert (layer.in_features, layer.out_features) == (before[str(i)].in_features, before[str(i)].out_features)
        assert layer.values.dtype == F64 and layer.values.device.type == "cpu"
        assert torch.equal(layer.bias.detach(), biases[str(i)])
    assert model[2].values.shape == (4, 16, 16)
    run_forward_backward(model, torch.randn(5, 32, dtype=F64))


def test_skip_invalid_false_raises_naming_the_layer():
    model = mlp()
    with pytest.raises(ValueError, match=r"convert: cannot convert 4:.*sparsity=0\.75"):
        sk.convert(model, sparsity=0.75, skip_invalid=False)


def test_filter_fn_respected():
    model = mlp()
    seen = []

    def only_first(name, module):
        seen.append(name)
        return name == "0"

    _out, warns, reinit = convert_recording(model, groups=2, filter_fn=only_first)
    assert seen == ["0", "2", "4"]
    assert isinstance(model[0], SAOLinear) and model[0].groups == 2
    assert type(model[2]) is nn.Linear and type(model[4]) is nn.Linear
    assert warns == []
    assert reinit == []  # freshly built


def test_degree_and_exactly_one_argument():
    model = mlp()
    sk.convert(model, degree=32, filter_fn=lambda n, m: n != "4")
    assert model[0].groups == 2 and model[2].groups == 2  # L=64, degree 32
    with pytest.raises(ValueError, match="exactly one"):
        sk.convert(mlp(), sparsity=0.5, groups=2)
    with pytest.raises(ValueError, match="exactly one"):
        sk.convert(mlp())


def test_cnn():
    model = cnn()
    model.eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    _out, warns, _ = convert_recording(model, sparsity=0.5, conv_init="delta")
    # Conv2d(3, 16): 2 groups do not divide 3 input channels -> dense with a warning
    assert type(model[0]) is nn.Conv2d
    assert any(w.startswith("convert: left 0 dense") for w in warns), warns
    assert isinstance(model[2], SAOConv2d) and isinstance(model[4], SAOConv2d)
    assert isinstance(model[8], SAOLinear)
    c2 = model[2]
    assert (c2.in_channels, c2.out_channels, c2.kernel_size, c2.stride, c2.padding, c2.padding_mode) == (
        16,
        32,
        (3, 3),
        (2, 2),
        (1, 1),
        "reflect",
    )
    assert torch.equal(c2.bias.detach(), convs["2"].bias.detach())
    assert model[4].bias is None and model[4].kernel_size == (1, 3)
    assert all(m.sparsity == 0.5 and m.values.dtype == F64 for m in (model[2], model[4], model[8]))
    assert not model[2].training  # eval mode kept
    model.train()
    y = run_forward_backward(model, torch.randn(2, 3, 8, 8, dtype=F64))
    assert y.shape == (2, 10)


def test_cnn_conv_init_eco_and_linear_init():
    model = cnn()
    sk.convert(model, groups=2, conv_init="eco", linear_init="rg-u", filter_fn=lambda n, m: n != "0")
    assert model[2].init == "eco" and model[8].init == "rg-u"
    run_forward_backward(model, torch.randn(1, 3, 6, 6, dtype=F64))


def test_transformer_encoder_layer():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=256, dropout=0.0, dtype=F64)
    lin1_bias = layer.linear1.bias.detach().clone()
    out_proj = layer.self_attn.out_proj
    _out, warns, reinit = convert_recording(layer, sparsity=0.75)
    assert isinstance(layer.linear1, SAOLinear) and isinstance(layer.linear2, SAOLinear)
    assert layer.linear1.values.shape == (4, 64, 16) and layer.linear2.values.shape == (4, 16, 64)
    assert torch.equal(layer.linear1.bias.detach(), lin1_bias)
    # MultiheadAttention reads out_proj.weight directly: left as is, with a warning
    assert layer.self_attn.out_proj is out_proj
    assert isinstance(layer.self_attn.out_proj, nn.Linear) and not isinstance(layer.self_attn.out_proj, SAOLinear)
    assert len(warns) == 1 and "self_attn.out_proj" in warns[0] and "MultiheadAttention" in warns[0]
    assert reinit == []  # freshly built (the README's first example): no ReinitializedWarning
    x = torch.randn(5, 2, 64, dtype=F64)  # (S, B, E)
    y = run_forward_backward(layer, x)
    assert y.shape == (5, 2, 64)
    layer.eval()
    with torch.no_grad():  # inference (batch_first=False: torch's fused fast path is not taken)
        torch.testing.assert_close(layer(x), y.detach())


def test_converted_model_matches_its_dense_equivalent():
    """After convert, each SAO layer computes exactly what a dense layer with its
    dense_weight() would: swap them back and compare the whole model."""
    model = mlp()
    sk.convert(model, groups=2)
    x = torch.randn(4, 32, dtype=F64)
    y = model(x)
    dense = nn.Sequential(*[m if not isinstance(m, SAOLinear) else _as_linear(m) for m in model])
    torch.testing.assert_close(y, dense(x))


def _as_linear(layer):
    lin = nn.Linear(layer.in_features, layer.out_features, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(layer.dense_weight())
        lin.bias.copy_(layer.bias)
    return lin


def test_shared_module_becomes_one_shared_sao_layer():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    sk.convert(model, groups=2)
    assert isinstance(model[0], SAOLinear) and model[0] is model[2]


def test_converted_transformer_encoder_runs_in_eval_with_padding_mask():
    """torch's fused fast path reads linear1.weight; convert switches it off for SAO FFNs."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2)
        sk.convert(enc, sparsity=0.5)
    enc.eval()
    x = torch.randn(2, 5, 32)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    with torch.no_grad():
        y = enc(x, src_key_padding_mask=mask)
        y_plain = enc(x)
    assert y.shape == (2, 5, 32) and torch.isfinite(y).all()
    # The unpadded sample is unaffected by the other sample's mask.
    assert torch.allclose(y[1], y_plain[1], atol=1e-5)
