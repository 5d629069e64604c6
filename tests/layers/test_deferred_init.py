"""SAO layers on the meta device and deferred initialisation.

Construction on the meta device (``device="meta"``, ``with torch.device("meta")``, convert of a
meta model) draws nothing (checked by making every random draw of the construction raise)
and never looks at data (it used to fail with ``aten::equal ... Meta tensors``).  Deferred
initialisation, ``to_empty`` then ``reset_parameters(generator)``, gives exactly the layer
the constructor builds from the same seed.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sao_kernels as sk
import sao_kernels.init as sk_init
from sao_kernels import SAOConv2d, SAOLinear

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def no_draws(monkeypatch):
    """Every random draw or QR of the SAO construction raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("a random draw happened during meta construction")

    for name in ("sao_topology", "_haar_rows", "_random_values", "_sao_values"):
        monkeypatch.setattr(sk_init, name, refuse)
    monkeypatch.setattr(torch.linalg, "qr", refuse)


LAYERS = [
    (SAOLinear, (8192, 8192), {"sparsity": 0.875}),
    (SAOLinear, (4096, 1024), {"groups": 4, "activation": "relu", "init": "rg-n", "bias": False}),
    (SAOConv2d, (512, 1024, 3), {"groups": 8, "init": "eco", "block_size": 4}),
    (SAOConv2d, (64, 64, (1, 3)), {"groups": 2, "init": "rg-u", "padding": (0, 1)}),
]


@pytest.mark.parametrize("how", ["context", "argument"])
@pytest.mark.parametrize("cls,args,kwargs", LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_meta_construction_draws_nothing(no_draws, cls, args, kwargs, how):
    if how == "context":
        with torch.device("meta"):
            layer = cls(*args, **kwargs)
    else:
        layer = cls(*args, device="meta", **kwargs)
    tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
    assert all(t.is_meta for t in tensors.values())
    out_f, in_f = (args[1], args[0])
    G = layer.groups
    assert layer.values.shape[:3] == (G, out_f // G, in_f // G)
    assert layer.in_index.shape == (in_f,) and layer.out_index.dtype == torch.int64
    assert layer.blocks().shape[:2] == (out_f, in_f)
    assert "groups=" in repr(layer)


def test_meta_construction_still_checks_the_request(no_draws):
    with pytest.raises(ValueError, match=r"sparsity=0.7 is not reachable for 100x100"):
        SAOLinear(100, 100, sparsity=0.7, device="meta")
    with pytest.raises(ValueError, match="init='delta' needs odd kernel sizes"):
        SAOConv2d(8, 8, 2, groups=2, device="meta")


def test_convert_of_a_meta_model(no_draws):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.Linear(4096, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = sk.convert(model, sparsity=0.75)
    assert isinstance(model[0], SAOLinear) and isinstance(model[2], SAOConv2d)
    assert all(t.is_meta for t in model.state_dict().values())
    # nothing pretrained was lost on meta: no re-initialisation warning, only the dense head
    assert [str(w.message).split(":")[1].strip() for w in caught] == ["left 3 dense"]


@pytest.mark.parametrize(
    "cls,args,kwargs",
    [
        (SAOLinear, (96, 48), {"groups": 4}),
        (SAOLinear, (48, 96), {"sparsity": 0.75, "activation": "relu", "init": "rg-u", "gain": 2.0}),
        (SAOLinear, (64, 64), {"groups": 4, "block_size": 4, "bias": False}),
        (SAOConv2d, (8, 16, 3), {"groups": 4, "init": "eco"}),
        (SAOConv2d, (16, 8, (3, 5)), {"groups": 2, "init": "delta", "block_size": 2, "padding": "same"}),
        (SAOConv2d, (8, 8, 2), {"groups": 2, "init": "rg-n", "activation": "relu"}),
    ],
    ids=str,
)
def test_deferred_init_equals_direct_construction(cls, args, kwargs):
    direct = cls(*args, **kwargs, generator=gen(5), dtype=F64)
    with torch.device("meta"):
        deferred = cls(*args, **kwargs, dtype=F64)
    deferred.to_empty(device="cpu")
    deferred.reset_parameters(generator=gen(5))
    assert deferred.state_dict().keys() == direct.state_dict().keys()
    for k, v in direct.state_dict().items():
        assert torch.equal(deferred.state_dict()[k], v), k
    deferred.blocks()  # a valid SAO layer (permutations, runs)


def test_reset_parameters_redraws_in_place():
    layer = SAOLinear(96, 48, groups=4, generator=gen(6), dtype=F64)
    objects = {k: v for k, v in layer.state_dict(keep_vars=True).items()}
    old = {k: v.detach().clone() for k, v in objects.items()}
    layer.reset_parameters(gen(7))
    for k, v in layer.state_dict(keep_vars=True).items():
        assert v is objects[k], k  # optimizers keep their references
    assert not torch.equal(layer.values, old["values"]) and not torch.equal(layer.bias, old["bias"])
    assert not torch.equal(layer.in_index, old["in_index"])  # a new topology, not only new values
    W = layer.dense_weight().detach()
    torch.testing.assert_close(W @ W.T, torch.eye(48, dtype=F64))  # still SAO
    x = torch.randn(3, 96, generator=gen(8), dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, W, layer.bias), rtol=1e-12, atol=1e-12)
    again = SAOLinear(96, 48, groups=4, generator=gen(6), dtype=F64)
    again.reset_parameters(gen(7))
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in again.state_dict().items())


def test_whole_model_deferred_init_the_usual_way():
    with torch.device("meta"):
        model = nn.Sequential(
            SAOLinear(64, 128, sparsity=0.5), nn.Tanh(), SAOLinear(128, 32, sparsity=0.75), nn.LayerNorm(32)
        )
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for layer in (model[0], model[2]):
        layer.blocks()
        W = layer.dense_weight().detach()
        small = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
        torch.testing.assert_close(small, torch.eye(small.shape[0]), atol=1e-5, rtol=0)
    x = torch.randn(4, 64)
    assert torch.isfinite(model(x)).all()


def test_meta_layer_loads_a_real_state_with_assign():
    src = SAOConv2d(8, 16, 3, padding=1, groups=4, generator=gen(9), dtype=F64)
    with torch.device("meta"):
        dst = SAOConv2d(8, 16, 3, padding=1, groups=4, dtype=F64)
    dst.load_state_dict(src.state_dict(), assign=True)
    x = torch.randn(1, 8, 5, 5, generator=gen(10), dtype=F64)
    torch.testing.assert_close(dst(x), src(x), rtol=1e-12, atol=1e-12)
    with torch.device("meta"):
        bad_dst = SAOConv2d(8, 16, 3, padding=1, groups=4, dtype=F64)
    state = src.state_dict()
    state["in_index"] = state["in_index"].flip(0).clone()
    state["in_index"][0] = state["in_index"][1]
    with pytest.raises(ValueError, match="in_index must be a permutation"):
        bad_dst.load_state_dict(state, assign=True)
    assert bad_dst.in_index.is_meta


def test_default_device_context_places_the_layer():
    with torch.device("meta"):
        assert SAOLinear(16, 8, groups=2).values.is_meta
    assert SAOLinear(16, 8, groups=2, device="cpu").values.device.type == "cpu"


LAYERS = {
    "linear": (lambda **kw: SAOLinear(16, 32, groups=4, **kw), lambda d: torch.randn(3, 16, dtype=F64, device=d)),
    "conv": (
        lambda **kw: SAOConv2d(8, 16, 3, padding=1, groups=4, **kw),
        lambda d: torch.randn(2, 8, 5, 5, dtype=F64, device=d),
    ),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_a_bias_left_on_meta_is_refused_by_name(kind):
    """A meta layer loaded with assign=True from a state without a bias keeps a meta bias:
    forward must say so (SAOConv2d used to run with an uninitialised bias)."""
    make, data = LAYERS[kind]
    src = make(dtype=F64, generator=gen(1))
    with torch.device("meta"):
        dst = make(dtype=F64)
    state = {k: v for k, v in src.state_dict().items() if k != "bias"}
    dst.load_state_dict(state, assign=True, strict=False)
    assert dst.bias.is_meta and not dst.values.is_meta
    with pytest.raises(ValueError, match="bias is on meta"):
        dst(data("cpu"))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_meta_forward_returns_the_dense_layers_shapes(kind):
    make, data = LAYERS[kind]
    layer = make(dtype=F64, device="meta")
    dense = (nn.Linear(16, 32, dtype=F64) if kind == "linear" else nn.Conv2d(8, 16, 3, padding=1, dtype=F64)).to("meta")
    x = data("meta")
    y = layer(x)
    assert y.is_meta and y.shape == dense(x).shape and y.dtype == F64
    # unbatched conv input too
    if kind == "conv":
        assert layer(x[0]).shape == dense(x[0]).shape


def test_sao_conv2d_checks_the_bias_device_and_dtype():
    conv = SAOConv2d(8, 16, 3, groups=4, dtype=F64)
    x = torch.randn(1, 8, 5, 5, dtype=F64)
    with pytest.raises(ValueError, match="sao_conv2d: bias is on meta but values are on cpu"):
        sk.sao_conv2d(x, conv.values, conv.in_index, conv.out_index, torch.zeros(16, dtype=F64, device="meta"))
    with pytest.raises(TypeError, match="sao_conv2d: bias has dtype torch.float32 but values have torch.float64"):
        sk.sao_conv2d(x, conv.values, conv.in_index, conv.out_index, torch.zeros(16))
    with pytest.raises(ValueError, match=r"sao_conv2d: bias must have shape \(16,\)"):
        sk.sao_conv2d(x, conv.values, conv.in_index, conv.out_index, torch.zeros(15, dtype=F64))
    # the linear twin says the same
    lin = SAOLinear(16, 32, groups=4, dtype=F64)
    with pytest.raises(ValueError, match="bias is on meta but values are on cpu"):
        sk.sao_linear(torch.randn(2, 16, dtype=F64), lin.values, None, None, torch.zeros(32, dtype=F64, device="meta"))
