"""sao_kernels.convert on an MLP, a small CNN and a TransformerEncoderLayer, and what it keeps.

Weight ties (GPT-2's lm_head / wte) are kept by leaving the tied layer dense with a warning
naming both; frozen flags are kept; forward hooks, forward pre-hooks and full backward hooks
move to the SAO layer (and their handles still remove them), others are named in a warning;
a model that *is* a Linear / Conv2d comes back converted (the return value is the new root);
the re-initialisation of the weights is said once per call; bad arguments raise up front.
"""

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


# ======================================================== what convert keeps
def run_convert(model, **kwargs):
    """(new root, [(category, message)]) with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sk.convert(model, **kwargs)
    return out, [(w.category, str(w.message)) for w in caught]


class TinyGPT(nn.Module):
    """GPT-2's tie: the output projection's weight *is* the token embedding's."""

    def __init__(self, vocab=64, d=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        return self.lm_head(self.mlp(self.wte(tokens)))


@torch.no_grad()
def looking_trained(model):
    """Give every weight the learned structure of a trained one: a rank-1 component whose
    singular value is 3x the random bulk's edge (see convert_select.TRAINED_SPECTRAL_RATIO)."""
    gen = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            w = module.weight.flatten(1)
            u = torch.randn(w.shape[0], 1, generator=gen, dtype=w.dtype)
            v = torch.randn(1, w.shape[1], generator=gen, dtype=w.dtype)
            spike = u @ v / (u.norm() * v.norm())
            edge = w.square().mean().sqrt() * (w.shape[0] ** 0.5 + w.shape[1] ** 0.5)
            module.weight.add_((3 * edge * spike).view_as(module.weight))
    return model


# ---------------------------------------------------------------------------------- ties
def test_weight_tied_to_an_embedding_stays_dense_and_tied():
    torch.manual_seed(0)
    model = TinyGPT()
    wte = model.wte.weight
    out, caught = run_convert(model, sparsity=0.5)
    assert out is model
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is wte is model.wte.weight
    assert isinstance(model.mlp[0], SAOLinear) and isinstance(model.mlp[2], SAOLinear)
    tie = [m for c, m in caught if "lm_head" in m]
    assert len(tie) == 1 and "left lm_head dense" in tie[0] and "tied to wte.weight" in tie[0]
    tokens = torch.randint(0, 64, (2, 5))
    model(tokens).sum().backward()
    assert wte.grad is not None  # one parameter, trained through both uses


def test_two_linears_sharing_one_weight_both_stay_dense():
    a, b = nn.Linear(16, 16), nn.Linear(16, 16)
    b.weight = a.weight
    model = nn.Sequential(a, nn.Tanh(), b, nn.Tanh(), nn.Linear(16, 16))
    _out, caught = run_convert(model, groups=2)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear and model[0].weight is model[2].weight
    assert isinstance(model[4], SAOLinear)
    msgs = [m for _, m in caught]
    assert any("left 0 dense" in m and "tied to 2.weight" in m for m in msgs), msgs
    assert any("left 2 dense" in m and "tied to 0.weight" in m for m in msgs), msgs


def test_a_shared_module_is_not_a_tie():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    _out, caught = run_convert(model, groups=2)
    assert isinstance(model[0], SAOLinear) and model[0] is model[2]
    assert caught == []  # no tie warning, and no ReinitializedWarning for a freshly built layer


# ---------------------------------------------------------------------- frozen flags
def test_frozen_flags_are_kept():
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16), nn.Conv2d(8, 8, 3))
    model[0].requires_grad_(False)  # weight and bias frozen
    model[2].weight.requires_grad_(False)  # only the weight
    model[3].bias.requires_grad_(False)  # only the bias
    sk.convert(model, groups=2)
    assert not model[0].values.requires_grad and not model[0].bias.requires_grad
    assert not model[2].values.requires_grad and model[2].bias.requires_grad
    assert model[3].values.requires_grad and not model[3].bias.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"2.bias", "3.values"}


def test_the_bias_parameter_itself_is_kept():
    lin = nn.Linear(16, 32)
    bias = lin.bias
    model = nn.Sequential(lin)
    sk.convert(model, groups=2)
    assert model[0].bias is bias


# ----------------------------------------------------------------------------- hooks
def test_forward_hooks_and_pre_hooks_are_carried_and_removable():
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))
    calls = []
    h1 = model[0].register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    h2 = model[0].register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__, out.shape)))
    model[2].register_forward_hook(lambda m, args, kwargs, out: out * 2, with_kwargs=True)
    model[2].register_forward_pre_hook(lambda m, args, kwargs: None, with_kwargs=True)
    sk.convert(model, groups=2)
    x = torch.randn(3, 16)
    y = model(x)
    assert calls == [("pre", "SAOLinear"), ("post", "SAOLinear", torch.Size([3, 32]))]
    torch.testing.assert_close(y, 2 * model[2].__class__.forward(model[2], torch.tanh(model[0](x))))
    h1.remove()
    h2.remove()
    calls.clear()
    model(x)
    assert calls == []  # the handles taken on the dense layer removed the hooks from the SAO layer


def test_full_backward_hooks_are_carried():
    model = nn.Sequential(nn.Linear(16, 32))
    seen = []
    model[0].register_full_backward_hook(lambda m, gin, gout: seen.append((type(m).__name__, gout[0].shape)))
    model[0].register_full_backward_pre_hook(lambda m, gout: seen.append(("pre", gout[0].shape)))
    sk.convert(model, groups=2)
    model(torch.randn(3, 16, requires_grad=True)).sum().backward()
    assert seen == [("pre", torch.Size([3, 32])), ("SAOLinear", torch.Size([3, 32]))]


def test_hooks_that_cannot_be_carried_are_named():
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # register_backward_hook is deprecated
        model[0].register_backward_hook(lambda m, gin, gout: None)
    model[0]._register_state_dict_hook(lambda m, sd, prefix, meta: None)
    model[1].weight.register_hook(lambda g: g)
    _out, caught = run_convert(model, groups=2)
    msgs = [m for c, m in caught if c is not ReinitializedWarning]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("convert: 0: not carried to the SAO layer") and "register_backward_hook" in msgs[0]
    assert "state_dict hook" in msgs[0]
    assert msgs[1].startswith("convert: 1: not carried") and "hook(s) on its weight tensor" in msgs[1]


# ------------------------------------------------------------------------------ root
@pytest.mark.parametrize("root", [nn.Linear(16, 32), nn.Conv2d(8, 16, 3)], ids=["linear", "conv"])
def test_a_model_that_is_a_linear_or_conv_returns_the_converted_layer(root):
    looking_trained(root)
    frozen_bias = root.bias
    root.weight.requires_grad_(False)
    out, caught = run_convert(root, groups=2)
    assert isinstance(out, SAOLinear if isinstance(root, nn.Linear) else SAOConv2d)
    assert out.bias is frozen_bias and not out.values.requires_grad
    reinit = [m for c, m in caught if c is ReinitializedWarning]
    assert len(reinit) == 1 and "the model itself" in reinit[0]


def test_a_root_that_stays_dense_is_returned_as_is():
    root = nn.Linear(16, 10)
    out, caught = run_convert(root, sparsity=0.75)
    assert out is root
    assert next(m for _, m in caught).startswith("convert: left the model itself (Linear) dense")
    with pytest.warns(UserWarning, match=r"no module of Linear was converted .*\(root\): filter_fn returned False"):
        assert sk.convert(root, groups=2, filter_fn=lambda name, m: name != "") is root


# ---------------------------------------------------------------------- re-init warning
def test_reinitialisation_is_said_once_per_call():
    model = looking_trained(nn.Sequential(*[nn.Linear(32, 32) for _ in range(8)]))
    pretrained = model[0].weight.detach().clone()
    _out, caught = run_convert(model, groups=2)
    reinit = [m for c, m in caught if c is ReinitializedWarning]
    assert len(reinit) == 1
    assert "8 layer(s) whose weights look trained were re-initialised by SAO (0, 1, 2, 3, 4 and 3 more)" in reinit[0]
    assert "not kept" in reinit[0] and "keep_weights=True" in reinit[0] and "SAOLinear.from_dense" in reinit[0]
    assert issubclass(ReinitializedWarning, UserWarning)
    assert not torch.allclose(model[0].dense_weight().detach(), pretrained)
    with warnings.catch_warnings():
        warnings.filterwarnings("error")
        warnings.filterwarnings("ignore", category=ReinitializedWarning)
        sk.convert(looking_trained(nn.Sequential(nn.Linear(32, 32))), groups=2)  # silenced by category
    assert "re-initialised by SAO" in sk.convert.__doc__ and "return value" in sk.convert.__doc__


# ----------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"sparsity": float("nan")}, ValueError, r"convert: sparsity must be a float in \[0, 1\), got nan"),
        ({"sparsity": float("inf")}, ValueError, r"convert: sparsity must be"),
        ({"sparsity": True}, ValueError, r"convert: sparsity must be"),
        ({"sparsity": "0.5"}, ValueError, r"convert: sparsity must be"),
        ({"degree": 2.5}, ValueError, r"convert: degree must be a positive int, got 2.5"),
        ({"groups": 0}, ValueError, r"convert: groups must be a positive int, got 0"),
        ({"groups": 2, "gain": float("nan")}, ValueError, r"convert: gain must be a finite float > 0, got nan"),
        ({"groups": 2, "gain": float("inf")}, ValueError, r"convert: gain must be a finite float > 0"),
        ({"groups": 2, "gain": "1"}, TypeError, r"convert: gain must be a number"),
        ({"groups": 2, "block_size": 0}, ValueError, r"convert: block_size must be a positive int"),
        ({"groups": 2, "activation": "gelu"}, ValueError, r"convert: activation='gelu' is not supported"),
        ({"groups": 2, "linear_init": "delta"}, ValueError, r"convert: linear_init='delta' is not supported"),
        ({"groups": 2, "conv_init": "sao"}, ValueError, r"convert: conv_init='sao' is not supported"),
        ({"groups": 2, "filter_fn": 3}, TypeError, r"convert: filter_fn must be a callable"),
        ({"groups": 2, "skip_invalid": "yes"}, TypeError, r"convert: skip_invalid must be a bool"),
        ({"groups": 2, "generator": 0}, TypeError, r"convert: generator must be a torch.Generator"),
    ],
)
def test_bad_arguments_raise_up_front_even_with_skip_invalid(kwargs, exc, pattern):
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))
    first = model[0]
    with pytest.raises(exc, match=pattern):
        sk.convert(model, **kwargs)
    assert model[0] is first  # nothing replaced


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="convert: model must be an nn.Module"):
        sk.convert([nn.Linear(4, 4)], groups=2)
