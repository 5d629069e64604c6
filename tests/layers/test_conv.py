"""SAOConv2d as a drop-in nn.Conv2d: equivalence with nn.Conv2d's own forward on the dense
weight for every padding mode / padding / stride / dilation, gradients on the mask, inits,
flops, from_dense, errors, autocast, state_dict and copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

import sao_kernels as sk
from sao_kernels import SAOConv2d

F64 = torch.float64

# torch's own warning for padding='same' with even kernels (nn.Conv2d emits it too).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def on_mask(dense, layer):
    """(m, n, kh, kw) -> (G, m/G, n/G, kh, kw): the kept kernels in group order."""
    G, a, c = layer.values.shape[:3]
    return dense[layer.out_index.view(G, a, 1), layer.in_index.view(G, 1, c)]


def twin_conv(layer, **kwargs):
    """An nn.Conv2d with the layer's hyper-parameters, used for its (reference) _conv_forward."""
    return nn.Conv2d(layer.in_channels, layer.out_channels, dtype=layer.values.dtype, **kwargs)


CONV_ARGS = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": (1, 2), "padding_mode": "replicate"},
    {"kernel_size": 3, "padding": 1, "padding_mode": "circular"},
    {"kernel_size": (3, 5), "padding": "same"},
    {"kernel_size": (3, 5), "padding": "same", "dilation": 2, "padding_mode": "reflect"},
    {"kernel_size": (2, 4), "padding": "same", "padding_mode": "circular"},  # asymmetric 'same'
    {"kernel_size": (2, 4), "padding": "same", "dilation": (2, 1)},
    {"kernel_size": 3, "padding": "valid", "stride": 2},
    {"kernel_size": (1, 3), "stride": (2, 1), "padding": (0, 1), "dilation": (1, 2)},
    {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2, "padding_mode": "replicate", "bias": False},
]


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("n,m,G", [(8, 16, 4), (12, 6, 3)], ids=str)
@pytest.mark.parametrize("kwargs", CONV_ARGS, ids=_id)
def test_matches_nn_conv2d_and_gradients_on_mask(kwargs, n, m, G, batched):
    ks = kwargs["kernel_size"]
    even = any(k % 2 == 0 for k in ((ks, ks) if isinstance(ks, int) else ks))
    layer = SAOConv2d(n, m, groups=G, init="rg-n" if even else "delta", generator=gen(1), dtype=F64, **kwargs)
    ref = twin_conv(layer, **kwargs)
    shape = (2, n, 9, 10) if batched else (n, 9, 10)
    x = torch.randn(shape, generator=gen(2), dtype=F64, requires_grad=True)
    y = layer(x)

    W = layer.dense_weight().detach().requires_grad_(True)
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    y_ref = ref._conv_forward(xd, W, b)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)

    dy = torch.randn(y.shape, generator=gen(3), dtype=F64)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.values.grad, on_mask(W.grad, layer), rtol=1e-12, atol=1e-12)
    if b is not None:
        torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-12, atol=1e-12)
    else:
        assert layer.bias is None


def test_parameters_buffers_attributes_repr():
    layer = SAOConv2d(8, 16, (3, 5), padding=1, padding_mode="circular", sparsity=0.75, generator=gen())
    assert set(dict(layer.named_parameters())) == {"values", "bias"}
    assert layer.values.shape == (4, 4, 2, 3, 5)
    assert set(dict(layer.named_buffers())) == {"in_index", "out_index"}
    assert layer.in_index.dtype == layer.out_index.dtype == torch.int64
    assert layer.groups == 4 and layer.sparsity == 0.75
    assert (layer.in_channels, layer.out_channels) == (8, 16)
    assert layer.kernel_size == (3, 5) and layer.padding == (1, 1)
    W = layer.dense_weight()
    assert W.shape == (16, 8, 3, 5)
    kept = W.detach().flatten(2).ne(0).any(-1)
    assert kept.sum().item() == 16 * 8 // 4
    r = repr(layer)
    assert "sparsity=0.75" in r and "groups=4" in r and "padding_mode='circular'" in r


@pytest.mark.parametrize("init", ["delta", "eco", "rg-n", "rg-u"])
def test_inits(init):
    layer = SAOConv2d(8, 16, 3, padding=1, padding_mode="circular", groups=2, init=init, generator=gen(4), dtype=F64)
    x = torch.randn(2, 8, 6, 6, generator=gen(5), dtype=F64)
    ref = twin_conv(layer, kernel_size=3, padding=1, padding_mode="circular")
    torch.testing.assert_close(layer(x), ref._conv_forward(x, layer.dense_weight(), layer.bias))
    W = layer.dense_weight().detach()
    off_centre = W.clone()
    off_centre[..., 1, 1] = 0
    if init == "delta":
        assert torch.equal(off_centre, torch.zeros_like(W))
        c = W[..., 1, 1]  # (16, 8): columns orthonormal (out > in)
        torch.testing.assert_close(c.T @ c, torch.eye(8, dtype=F64))
    else:
        assert off_centre.abs().sum() > 0


def test_conv_errors():
    with pytest.raises(ValueError, match="init='delta'"):
        SAOConv2d(8, 8, 2, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        SAOConv2d(8, 8, 3, groups=2, padding_mode="mirror")
    with pytest.raises(ValueError, match="same"):
        SAOConv2d(8, 8, 3, groups=2, padding="same", stride=2)
    with pytest.raises(ValueError, match="exactly one"):
        SAOConv2d(8, 8, 3, groups=2, sparsity=0.5)
    with pytest.raises(ValueError, match="init"):
        SAOConv2d(8, 8, 3, groups=2, init="sao")
    layer = SAOConv2d(8, 8, 3, groups=2, dtype=F64)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        layer(torch.randn(1, 7, 5, 5, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 8, 5, 5))


# ----------------------------------------------------------------------------------- flops
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (3, 5), "stride": 2, "padding_mode": "reflect", "padding": 2},
        {"kernel_size": 1},
    ],
    ids=_id,
)
@pytest.mark.parametrize("G", [2, 4])
def test_flops_are_one_over_g_of_dense(kwargs, G):
    layer = SAOConv2d(8, 16, groups=G, init="rg-u", generator=gen(6), **kwargs)
    dense = nn.Conv2d(8, 16, **kwargs)
    x = torch.randn(2, 8, 11, 12)
    with FlopCounterMode(display=False) as sparse_fc:
        ys = layer(x)
    with FlopCounterMode(display=False) as dense_fc:
        yd = dense(x)
    assert ys.shape == yd.shape
    assert dense_fc.get_total_flops() > 0
    assert sparse_fc.get_total_flops() * G == dense_fc.get_total_flops()


# ------------------------------------------------------------------------------ from_dense
def test_from_dense_of_sao_delta_conv():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, padding_mode="reflect", dtype=F64)
    with torch.no_grad():
        sk.init.sao_delta_(conv.weight, sparsity=0.5, generator=gen(7))
    layer = SAOConv2d.from_dense(conv)
    assert isinstance(layer, SAOConv2d) and layer.groups == 2
    assert (layer.stride, layer.padding, layer.padding_mode) == ((2, 2), (1, 1), "reflect")
    x = torch.randn(2, 8, 9, 9, generator=gen(8), dtype=F64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(layer.dense_weight().detach(), conv.weight.detach())


def test_from_dense_of_pruned_conv():
    conv = nn.Conv2d(12, 6, (3, 5), padding="same", bias=False, dtype=F64)  # dense random kernels
    tmp = torch.empty(6, 12, 3, 5, dtype=F64)
    mask = sk.init.rg_normal_(tmp, groups=3, generator=gen(9))  # SAO kernel mask, (6, 12, 3, 5)
    prune.custom_from_mask(conv, "weight", mask)
    layer = SAOConv2d.from_dense(conv)
    assert layer.groups == 3 and layer.bias is None
    x = torch.randn(1, 12, 7, 8, generator=gen(10), dtype=F64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


def test_from_dense_refuses_bad_convs():
    conv = nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(8, 8, 1, 1, generator=gen(11)) < 0.5)
    with pytest.raises(
        ValueError, match=r"SAOConv2d.from_dense: its non-zeros do not form an SAO pattern.*keep_weights"
    ):
        SAOConv2d.from_dense(conv)
    with pytest.raises(ValueError, match="groups"):
        SAOConv2d.from_dense(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SAOConv2d.from_dense(nn.Linear(8, 8))


# ------------------------------------------------------------------------------- ecosystem
def test_autocast_bfloat16():
    layer = SAOConv2d(8, 16, 3, padding=1, groups=4, generator=gen(12))
    ref = copy.deepcopy(layer)
    x = torch.randn(2, 8, 6, 6, generator=gen(13))
    y_ref = ref(x)
    y_ref.square().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert layer.values.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.values.grad, ref.values.grad, rtol=5e-2, atol=1e-1)


def test_state_dict_round_trip_and_copies(tmp_path):
    src = SAOConv2d(8, 16, 3, padding=1, groups=4, generator=gen(14), dtype=F64)
    dst = SAOConv2d(8, 16, 3, padding=1, groups=4, generator=gen(15), dtype=F64)
    x = torch.randn(2, 8, 5, 5, generator=gen(16), dtype=F64)
    assert not torch.allclose(src(x), dst(x))
    torch.save(src.state_dict(), tmp_path / "conv.pt")
    dst.load_state_dict(torch.load(tmp_path / "conv.pt", weights_only=True))
    assert torch.equal(dst(x), src(x))
    for clone in (copy.deepcopy(src), pickle.loads(pickle.dumps(src))):
        assert torch.equal(clone(x), src(x))


def test_load_state_dict_index_change_takes_effect():
    # out > in: in_index (the smaller side) is the identity
    layer = SAOConv2d(4, 8, 3, padding=1, groups=2, generator=gen(17), dtype=F64)
    assert torch.equal(layer.in_index, torch.arange(4))
    sd = dict(layer.state_dict())
    sd["in_index"] = torch.tensor([2, 0, 3, 1])
    layer.load_state_dict(sd)
    x = torch.randn(1, 4, 5, 5, generator=gen(18), dtype=F64)
    ref = twin_conv(layer, kernel_size=3, padding=1)
    torch.testing.assert_close(layer(x), ref._conv_forward(x, layer.dense_weight(), layer.bias))


def test_to_dtype_casts_values_keeps_indices():
    layer = SAOConv2d(8, 16, 3, groups=4).to(F64)
    assert layer.values.dtype == layer.bias.dtype == F64
    assert layer.in_index.dtype == layer.out_index.dtype == torch.int64
    assert layer(torch.randn(1, 8, 4, 4, dtype=F64)).dtype == F64
