"""The conversion summary (issue 22): one row per candidate module, dry runs, output heads,
1x1 convolutions, the registry of module types, and the walk-through fixes on selection
(filter_fn in either order, PEFT-style target / exclude lists, a call that converts nothing)
and on ReinitializedWarning (only for weights that look trained)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import SAOConv2d, SAOLinear
from sao_kernels.conversion import ReinitializedWarning
from sao_kernels.convert_select import TRAINED_SPECTRAL_RATIO, looks_trained, spectral_ratio


def quiet_convert(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sk.convert(model, **kwargs)


def recorded(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sk.convert(model, **kwargs)
    return out, [(w.category, str(w.message)) for w in caught]


class Net(nn.Module):
    """A CNN with a 1x1 shortcut, a body MLP and a classifier head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12))
        self.classifier = nn.Linear(12, 8)

    def forward(self, x):
        h = (self.conv(x) + self.shortcut(x)).mean((2, 3))
        return self.classifier(self.body(h))


# ------------------------------------------------------------------------- summary rows
def test_dry_run_rows_change_nothing_and_draw_nothing():
    torch.manual_seed(0)
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dry run warns about nothing
        summary = sk.convert(model, groups=2, dry_run=True)
    assert isinstance(summary, sk.ConversionSummary) and summary.dry_run
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU, nn.Sequential, Net) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    assert [r.path for r in summary] == ["conv", "shortcut", "body.0", "body.2", "classifier"]
    conv = summary["conv"]
    assert (conv.type, conv.shape, conv.status, conv.groups, conv.sparsity) == (
        "Conv2d",
        (16, 8, 3, 3),
        "converted",
        2,
        0.5,
    )
    assert conv.params_before == 16 * 8 * 9 + 16 and conv.params_after == 16 * 8 * 9 // 2 + 16
    assert conv.flops_before == 2 * 16 * 8 * 9 and conv.flops_after == conv.flops_before // 2
    assert summary["shortcut"].status == "converted" and "1x1 convolution" in summary["shortcut"].note
    body2 = summary["body.2"]  # 12 x 32 at G=2: converts
    assert body2.flops_after == 2 * 12 * 32 // 2 and body2.params_after == 12 * 16 + 12
    head = summary["classifier"]
    assert (head.status, head.groups, head.params_after, head.flops_after) == ("dense", 1, 12 * 8 + 8, 2 * 12 * 8)
    assert "output head" in head.reason and "include_heads=True" in head.reason
    t = summary.totals
    assert t["converted"] == 4 and t["candidates"] == 5
    assert t["params_before"] == sum(r.params_before for r in summary)
    assert t["model_params_after"] == t["model_params_before"] - (t["params_before"] - t["params_after"])
    assert summary.to_dicts()[0]["path"] == "conv" and len(summary.to_dicts()) == 5


def test_summary_after_convert_matches_the_model():
    model = Net()
    root, caught = recorded(model, groups=2, skip_pointwise_conv=True)
    summary = sk.conversion_summary(root)
    assert not summary.dry_run and summary is sk.conversion_summary(model)
    for row in summary:
        module = model.get_submodule(row.path)
        assert isinstance(module, (SAOLinear, SAOConv2d)) == (row.status == "converted"), row
        assert sum(p.numel() for p in module.parameters()) == row.params_after, row
    assert summary["shortcut"].status == "dense" and "skip_pointwise_conv" in summary["shortcut"].reason
    assert type(model.shortcut) is nn.Conv2d and type(model.classifier) is nn.Linear
    # a warning for the head (not asked for), none for the 1x1 conv the call asked to skip
    assert [m for _, m in caught] == ["convert: left classifier dense: an output head (include_heads=True converts it)"]
    text, md = str(summary), summary.to_markdown()
    assert text.splitlines()[0] == "sao_kernels.convert of Net (groups=2): converted 3 of 5 modules"
    assert re.search(
        r"^classifier\s+Linear\s+8x12\s+1\s+0\s+104 -> 104\s+192 -> 192\s+dense: an output head", text, re.M
    )
    assert "| body.0 | Linear | 32x16 | 2 | 0.5 | 544 -> 288 | 1,024 -> 512 |  |" in md
    assert md.splitlines()[-1].startswith("| total | 3/5 converted |")


def test_include_heads_and_summary_of_an_unconverted_model():
    model = Net()
    quiet_convert(model, groups=2, include_heads=True)
    assert isinstance(model.classifier, SAOLinear)
    with pytest.raises(
        ValueError, match=r"no convert\(\) of this Net is recorded.*conversion_summary\(model, groups=4\)"
    ):
        sk.conversion_summary(Net())
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sk.conversion_summary("not a model")


def test_shared_module_is_one_row_and_an_invalid_shape_a_reason():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(16, 10))
    summary = sk.conversion_summary(model, sparsity=0.75)
    assert [r.path for r in summary] == ["0", "3"]
    assert summary["0"].also_at == ("2",) and summary["2"] is summary["0"]
    assert summary["3"].status == "dense" and "sparsity=0.75 is not reachable for 10x16" in summary["3"].reason
    assert "shared with 2" in str(summary)
    with pytest.raises(ValueError, match="convert: cannot convert 3"):
        sk.conversion_summary(model, sparsity=0.75, skip_invalid=False)
    with pytest.raises(KeyError, match="no candidate module at 'nope'"):
        summary["nope"]


# ------------------------------------------------------------------------------- registry
class Transposed(nn.Module):
    """A user's linear layer with its weight stored (in, out), like transformers' Conv1D."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


def to_sao(module, settings):
    n_in, n_out = module.weight.shape
    layer = settings.linear(n_in, n_out, True, like=module)
    layer.bias = module.bias
    return layer


@pytest.fixture
def registered():
    sk.register_conversion(Transposed, to_sao, shape=lambda m: tuple(m.weight.shape[::-1]), kind="linear")
    yield
    sk.register_conversion(Transposed, None)


def test_register_conversion_converts_summarises_and_loads(registered):
    torch.manual_seed(0)
    model = nn.Sequential(Transposed(16, 32), nn.Tanh(), Transposed(32, 8)).double()
    bias = model[0].bias
    summary = sk.conversion_summary(model, groups=4)
    assert [(r.type, r.shape, r.status) for r in summary] == [
        ("Transposed", (32, 16), "converted"),
        ("Transposed", (8, 32), "converted"),
    ]
    sk.convert(model, groups=4, generator=torch.Generator().manual_seed(1))
    assert isinstance(model[0], SAOLinear) and model[0].groups == 4 and model[0].values.dtype == torch.float64
    assert model[0].bias is bias
    x = torch.randn(3, 16, dtype=torch.float64)
    # a checkpoint of the converted model loads into freshly built code with the user's type
    fresh = nn.Sequential(Transposed(16, 32), nn.Tanh(), Transposed(32, 8)).double()
    sk.load_sparse_state_dict(fresh, model.state_dict())
    assert isinstance(fresh[2], SAOLinear)
    assert torch.equal(fresh(x), model(x))


def test_register_conversion_declines_and_errors():
    sk.register_conversion(Transposed, lambda m, s: None)
    try:
        model = nn.Sequential(Transposed(16, 32))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sk.convert(model, groups=2)
        messages = [str(w.message) for w in caught]
        assert messages[0] == "convert: left 0 dense: the conversion function registered for Transposed returned None"
        assert messages[1].startswith("convert: no module of Sequential was converted")
        assert type(model[0]) is Transposed
    finally:
        sk.register_conversion(Transposed, None)
    assert sk.conversion_summary(nn.Sequential(Transposed(4, 4)), groups=2).rows == []  # unregistered again
    with pytest.raises(TypeError, match="module_type must be an nn.Module subclass"):
        sk.register_conversion(int, to_sao)
    with pytest.raises(TypeError, match="fn must be a callable"):
        sk.register_conversion(Transposed, 3)
    with pytest.raises(ValueError, match="kind must be"):
        sk.register_conversion(Transposed, to_sao, shape=lambda m: (1, 1), kind="conv3d")
    with pytest.raises(ValueError, match="kind needs shape"):
        sk.register_conversion(Transposed, to_sao, kind="linear")


# ------------------------------------------------------------------------------ selection
def mlp():
    return nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))


@pytest.mark.parametrize(
    "filter_fn",
    [
        lambda mod, fqn: isinstance(mod, nn.Linear) and fqn != "2",  # torchao's sparsify_ order, by name
        lambda name, module: name != "2",
        lambda a, b: isinstance(a, nn.Linear) and b != "2",  # no hint: (module, name) is what selects
        lambda a, b: a != "2",  # no hint: (name, module) works
    ],
    ids=["torchao", "named", "anonymous-module-first", "anonymous-name-first"],
)
def test_filter_fn_in_either_order(filter_fn):
    model = mlp()
    quiet_convert(model, groups=2, filter_fn=filter_fn)
    assert [type(model[i]).__name__ for i in (0, 2, 4)] == ["SAOLinear", "Linear", "SAOLinear"]
    assert sk.conversion_summary(model)["2"].reason == "filter_fn returned False"


def test_filter_fn_order_from_annotations():
    def by_type(x: nn.Module, y: str) -> bool:
        return y == "0"

    def by_name(x: str, y: nn.Module) -> bool:
        return x == "4"

    model = mlp()
    quiet_convert(model, groups=2, filter_fn=by_type)
    quiet_convert(model, groups=2, filter_fn=by_name)
    assert [type(model[i]).__name__ for i in (0, 2, 4)] == ["SAOLinear", "Linear", "SAOLinear"]


@pytest.mark.parametrize(
    "kwargs, converted",
    [
        ({"target_modules": ["0", "4"]}, ["0", "4"]),
        ({"target_modules": r"0\.[02]"}, ["0", "2"]),  # a regex fully matches the qualified name
        ({"exclude_modules": ["2"]}, ["0", "4"]),
        ({"exclude_modules": r"0\.[24]"}, ["0"]),
        ({"exclude_modules": r"[24]"}, ["0", "2", "4"]),
        ({"target_modules": ["0", "2"], "exclude_modules": ["2"]}, ["0"]),
        ({"target_modules": ["1.2"]}, []),  # a suffix match is on whole name parts
    ],
)
def test_target_and_exclude_modules(kwargs, converted):
    model = nn.Sequential(mlp())
    summary = sk.conversion_summary(model, groups=2, **kwargs)
    assert [r.path.removeprefix("0.") for r in summary.converted] == converted
    reasons = {r.reason for r in summary.excluded}
    assert reasons <= {"excluded by exclude_modules", "not in target_modules"} and len(summary.excluded) == 3 - len(
        converted
    )


def test_peft_suffix_match():
    model = nn.ModuleDict({"attn": nn.ModuleDict({"q_proj": nn.Linear(8, 8), "o_proj": nn.Linear(8, 8)})})
    summary = sk.conversion_summary(model, groups=2, target_modules=["q_proj"])
    assert [r.path for r in summary.converted] == ["attn.q_proj"]


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"target_modules": 3}, TypeError, r"target_modules must be a list of module names"),
        ({"exclude_modules": [""]}, TypeError, r"exclude_modules must be a list"),
        ({"target_modules": "("}, ValueError, r"target_modules='\(' is not a valid regular expression"),
        ({"on_empty": "loud"}, ValueError, r"on_empty='loud' is not supported; allowed: 'warn', 'raise', 'ignore'"),
        ({"include_heads": 1}, TypeError, r"include_heads must be a bool"),
        ({"dry_run": "yes"}, TypeError, r"dry_run must be a bool"),
    ],
)
def test_bad_selection_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sk.convert(mlp(), groups=2, **kwargs)


@pytest.mark.filterwarnings("ignore:convert. left")
def test_a_call_that_converts_nothing_warns_or_raises():
    model = mlp()
    with pytest.warns(
        UserWarning, match=r"no module of Sequential was converted \(3 candidate\(s\)\): 0: sparsity=0.3"
    ):
        sk.convert(model, sparsity=0.3)
    with pytest.raises(ValueError, match=r"no module of Sequential was converted.*not in target_modules"):
        sk.convert(model, groups=2, target_modules=["nothing"], on_empty="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk.convert(model, groups=2, target_modules=["nothing"], on_empty="ignore")
        with pytest.raises(ValueError, match="has no nn.Linear, nn.Conv2d, transformers Conv1D or registered"):
            sk.convert(nn.Tanh(), groups=2, on_empty="raise")
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))


# --------------------------------------------------------------------- trained weights
@pytest.mark.parametrize("shape", [(4, 4), (16, 16), (10, 64), (64, 32), (96, 32)])
def test_random_inits_do_not_look_trained(shape):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for w in (
            nn.init.kaiming_uniform_(torch.empty(shape), a=5**0.5, generator=gen),
            0.02 * torch.randn(shape, generator=gen),
            nn.init.orthogonal_(torch.empty(shape), generator=gen),
        ):
            assert spectral_ratio(w) < TRAINED_SPECTRAL_RATIO


@pytest.mark.filterwarnings("ignore:convert. left")
def test_fresh_models_convert_silently_and_trained_ones_warn():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReinitializedWarning)
        sk.convert(nn.TransformerEncoderLayer(64, 4), sparsity=0.75)  # the README's first example, smaller
        sk.convert(Net(), groups=2)

    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    x = torch.randn(256, 32)
    y = (x[:, :4].sum(1) > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert looks_trained(model[0]) and looks_trained(model[2])
    _out, caught = recorded(model, groups=2, include_heads=True)
    reinit = [m for c, m in caught if c is ReinitializedWarning]
    assert len(reinit) == 1 and "layer(s) whose weights look trained were re-initialised by SAO (0, 2" in reinit[0]
    assert not looks_trained(nn.Linear(8, 8, device="meta"))


class TaggedConv(nn.Conv2d):
    """A user's Conv2d subclass: left dense unless registered (it may read its weight)."""


def test_a_registered_conv_type_converts_and_loads():
    torch.manual_seed(0)
    model = nn.Sequential(TaggedConv(8, 16, 3, padding=1, stride=2), nn.ReLU(), TaggedConv(16, 16, 1))
    assert sk.conversion_summary(model, groups=2)[0].reason.startswith("subclass TaggedConv of nn.Conv2d")

    def to_sao(m, s):
        return s.conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, like=m)

    sk.register_conversion(
        TaggedConv, to_sao, shape=lambda m: (m.out_channels, m.in_channels, *m.kernel_size), kind="conv2d"
    )
    try:
        quiet_convert(model, groups=2)
        assert isinstance(model[0], SAOConv2d) and model[0].stride == (2, 2) and model[0].groups == 2
        summary = sk.conversion_summary(model)
        assert [(r.shape, r.status) for r in summary] == [((16, 8, 3, 3), "converted"), ((16, 16, 1, 1), "converted")]
        assert "1x1 convolution" in summary[1].note
        skeleton = nn.Sequential(TaggedConv(8, 16, 3, padding=1, stride=2), nn.ReLU(), TaggedConv(16, 16, 1))
        sk.load_sparse_state_dict(skeleton, model.state_dict())
        x = torch.randn(2, 8, 6, 6)
        assert isinstance(skeleton[2], SAOConv2d) and torch.equal(skeleton(x), model(x))
    finally:
        sk.register_conversion(TaggedConv, None)
