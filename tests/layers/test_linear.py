"""SAOLinear as a drop-in nn.Linear: shapes, parameters, equivalence with its dense weight,
gradients on the mask, constructors (init / activation / from_dense), errors, and the
ecosystem (autocast, state_dict, deepcopy / pickle, dtype casts)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import SAOLinear

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def on_mask(dense, layer):
    """(m, n) tensor -> (G, m/G, n/G): its entries at the layer's kept positions, in group order."""
    G, a, c = layer.values.shape
    return dense[layer.out_index.view(G, a, 1), layer.in_index.view(G, 1, c)]


@pytest.fixture(scope="module")
def layer64():
    return SAOLinear(48, 72, groups=3, generator=gen(1), dtype=F64)


# ------------------------------------------------------------------------- shapes / math
@pytest.mark.parametrize("lead", [(), (5,), (2, 7), (2, 3, 4), (0,), (2, 0)], ids=str)
@pytest.mark.parametrize("n,m,G", [(48, 72, 3), (96, 24, 4), (40, 40, 8)], ids=str)
def test_any_leading_dims_match_f_linear(lead, n, m, G):
    layer = SAOLinear(n, m, groups=G, generator=gen(G), dtype=F64)
    x = torch.randn(*lead, n, generator=gen(2), dtype=F64)
    y = layer(x)
    assert y.shape == (*lead, m)
    assert y.dtype == F64
    torch.testing.assert_close(y, F.linear(x, layer.dense_weight(), layer.bias), rtol=1e-12, atol=1e-12)


def test_dense_weight_really_is_structured(layer64):
    W = layer64.dense_weight()
    assert W.shape == (72, 48)
    nz = (W != 0).sum().item()
    assert nz == layer64.values.numel() == 72 * 48 // 3
    # every row reads exactly n/G inputs, every column feeds exactly m/G outputs
    assert ((W != 0).sum(1) == 16).all() and ((W != 0).sum(0) == 24).all()


def test_empty_batch_forward_and_backward():
    layer = SAOLinear(48, 24, groups=2, generator=gen(), dtype=F64)
    x = torch.zeros(0, 48, dtype=F64, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 24)
    y.sum().backward()
    assert x.grad.shape == (0, 48)
    assert torch.equal(layer.values.grad, torch.zeros_like(layer.values))
    assert torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))
    y3 = layer(torch.zeros(3, 0, 48, dtype=F64))
    assert y3.shape == (3, 0, 24)


def test_non_contiguous_input(layer64):
    x = torch.randn(48, 6, generator=gen(3), dtype=F64).T
    assert not x.is_contiguous()
    torch.testing.assert_close(layer64(x), F.linear(x, layer64.dense_weight(), layer64.bias))


# ------------------------------------------------------------------ parameters and attributes
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_buffers_and_attributes(bias):
    layer = SAOLinear(96, 48, bias=bias, sparsity=0.75, generator=gen())
    params = dict(layer.named_parameters())
    assert set(params) == ({"values", "bias"} if bias else {"values"})
    assert params["values"].shape == (4, 12, 24)
    assert params["values"].is_contiguous()
    if bias:
        assert params["bias"].shape == (48,)
    else:
        assert layer.bias is None
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"in_index", "out_index"}
    assert buffers["in_index"].dtype == buffers["out_index"].dtype == torch.int64
    assert sorted(buffers["in_index"].tolist()) == list(range(96))
    assert sorted(buffers["out_index"].tolist()) == list(range(48))
    assert not any(b.requires_grad for b in buffers.values())
    assert layer.in_features == 96 and layer.out_features == 48
    assert layer.groups == 4 and layer.sparsity == 0.75
    assert sum(p.numel() for p in layer.parameters()) == 96 * 48 // 4 + (48 if bias else 0)


def test_extra_repr_shows_sparsity_and_groups():
    r = repr(SAOLinear(96, 48, groups=4, bias=False))
    assert "in_features=96" in r and "out_features=48" in r
    assert "sparsity=0.75" in r and "groups=4" in r and "bias=False" in r


def test_dense_weight_is_differentiable(layer64):
    layer = copy.deepcopy(layer64)
    W = layer.dense_weight()
    assert W.requires_grad and W.grad_fn is not None
    R = torch.randn(W.shape, generator=gen(4), dtype=F64)
    (W * R).sum().backward()
    torch.testing.assert_close(layer.values.grad, on_mask(R, layer), rtol=0, atol=0)


# --------------------------------------------------------------------- gradients on the mask
@pytest.mark.parametrize("n,m,G", [(48, 72, 3), (96, 24, 4)], ids=str)
def test_gradients_equal_masked_dense_gradients(n, m, G):
    layer = SAOLinear(n, m, groups=G, generator=gen(5), dtype=F64)
    x = torch.randn(4, 3, n, generator=gen(6), dtype=F64, requires_grad=True)
    target = torch.randn(4, 3, m, generator=gen(7), dtype=F64)
    F.mse_loss(torch.tanh(layer(x)), target).backward()

    W = layer.dense_weight().detach().requires_grad_(True)
    mask = (W != 0).to(F64)
    b = layer.bias.detach().clone().requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    F.mse_loss(torch.tanh(F.linear(xd, W * mask, b)), target).backward()

    torch.testing.assert_close(layer.values.grad, on_mask(W.grad, layer))
    torch.testing.assert_close(layer.bias.grad, b.grad)
    torch.testing.assert_close(x.grad, xd.grad)
    # the masked dense gradient is zero off the mask: nothing is lost by the compact form
    assert torch.equal(W.grad * (1 - mask), torch.zeros_like(W))


# ---------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("init", ["sao", "rg-n", "rg-u"])
def test_inits(init):
    layer = SAOLinear(96, 48, sparsity=0.5, init=init, generator=gen(8), dtype=F64)
    x = torch.randn(5, 96, generator=gen(9), dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias))
    W = layer.dense_weight().detach()
    if init == "sao":
        torch.testing.assert_close(W @ W.T, torch.eye(48, dtype=F64))
    else:
        assert not torch.allclose(W @ W.T, torch.eye(48, dtype=F64), atol=1e-3)


def test_unknown_init_raises():
    with pytest.raises(ValueError, match="init"):
        SAOLinear(32, 32, groups=2, init="delta")


def test_activation_relu_looks_linear():
    layer = SAOLinear(64, 64, sparsity=0.5, activation="relu", bias=False, generator=gen(10), dtype=F64)
    assert layer.groups == 2
    h = torch.randn(3, 32, generator=gen(11), dtype=F64)
    x = torch.cat([F.relu(h), F.relu(-h)], -1)
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, layer.dense_weight()))
    # looks-linear with a square orthogonal half M: the output is [M h, -M h], |y|^2 = 2 |h|^2
    torch.testing.assert_close(y[:, :32], -y[:, 32:])
    torch.testing.assert_close(y.norm(dim=-1) ** 2, 2 * h.norm(dim=-1) ** 2)


def test_block_size_layer_matches_dense():
    layer = SAOLinear(96, 48, groups=2, block_size=8, generator=gen(12), dtype=F64)
    assert layer.block_size == 8
    x = torch.randn(5, 96, generator=gen(13), dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias))


def test_generator_reproducibility():
    a = SAOLinear(96, 48, sparsity=0.75, generator=gen(123))
    b = SAOLinear(96, 48, sparsity=0.75, generator=gen(123))
    c = SAOLinear(96, 48, sparsity=0.75, generator=gen(124))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.values, c.values)
    assert not torch.equal(a.in_index, c.in_index)


@pytest.mark.parametrize("shape,sparsity", [((24, 48), 0.5), ((72, 48), 0.75), ((48, 48), 0.875)], ids=str)
def test_from_dense_of_sao_filled_linear(shape, sparsity):
    out_f, in_f = shape
    lin = nn.Linear(in_f, out_f, dtype=F64)
    with torch.no_grad():
        sk.init.sao_(lin.weight, sparsity=sparsity, generator=gen(14))
    layer = SAOLinear.from_dense(lin)
    assert isinstance(layer, SAOLinear)
    assert layer.sparsity == pytest.approx(sparsity)
    assert (layer.in_features, layer.out_features) == (in_f, out_f)
    assert torch.equal(layer.dense_weight().detach(), lin.weight.detach())
    assert torch.equal(layer.bias.detach(), lin.bias.detach())
    x = torch.randn(2, 5, in_f, generator=gen(15), dtype=F64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-12, atol=1e-12)
    # the new layer owns its parameters
    with torch.no_grad():
        layer.bias.add_(1)
    assert not torch.equal(layer.bias, lin.bias)


def test_from_dense_of_pruned_linear_and_explicit_mask():
    lin = nn.Linear(96, 48, dtype=F64)  # dense random weight
    mask_w = torch.empty(48, 96, dtype=F64)
    mask = sk.init.sao_(mask_w, groups=4, generator=gen(16))
    prune.custom_from_mask(lin, "weight", mask)
    assert hasattr(lin, "weight_orig") and hasattr(lin, "weight_mask")
    layer = SAOLinear.from_dense(lin)
    assert layer.groups == 4
    x = torch.randn(7, 96, generator=gen(17), dtype=F64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-12, atol=1e-12)
    # explicit (weight, mask) on an unpruned linear gives the same layer
    plain = nn.Linear(96, 48, dtype=F64)
    with torch.no_grad():
        plain.weight.copy_(lin.weight_orig)
        plain.bias.copy_(lin.bias)
    layer2 = SAOLinear.from_dense(plain, mask=mask)
    torch.testing.assert_close(layer2(x), lin(x), rtol=1e-12, atol=1e-12)


def test_from_dense_refuses_unstructured():
    lin = nn.Linear(32, 32, dtype=F64)
    rand_mask = torch.rand(32, 32, generator=gen(18)) < 0.5
    with torch.no_grad():
        lin.weight.mul_(rand_mask)
    with pytest.raises(ValueError, match="SAO|block diagonal"):
        SAOLinear.from_dense(lin)
    pruned = nn.Linear(32, 32)
    prune.random_unstructured(pruned, "weight", amount=0.5)
    with pytest.raises(ValueError, match="SAO|block diagonal"):
        SAOLinear.from_dense(pruned)
    with pytest.raises(TypeError, match="nn.Linear"):
        SAOLinear.from_dense(nn.Conv2d(4, 4, 1))


def test_from_dense_of_an_unstructured_prune_says_what_it_accepts():
    """Issue 22: the README said from_dense packs pruned modules; an l1-unstructured prune
    is refused with what it accepts and where a trained layer goes instead."""
    torch.manual_seed(0)
    pruned = nn.Linear(16, 16)
    prune.l1_unstructured(pruned, "weight", amount=0.75)
    with pytest.raises(ValueError) as info:
        SAOLinear.from_dense(pruned)
    msg = str(info.value)
    assert msg.startswith("SAOLinear.from_dense: the mask does not form an SAO pattern (not ")
    assert "row- and column-permuted block diagonal of G equal blocks" in msg and "prune.l1_unstructured" in msg
    assert "sk.convert(model, ..., keep_weights=True)" in msg


# ------------------------------------------------------------------------------- errors
def test_wrong_last_dim_names_in_features(layer64):
    with pytest.raises(ValueError, match="in_features=48"):
        layer64(torch.randn(3, 47, dtype=F64))


def test_dtype_mismatch_is_type_error(layer64):
    with pytest.raises(TypeError, match="dtype"):
        layer64(torch.randn(3, 48, dtype=torch.float32))


def test_sparsity_and_groups_both_given():
    with pytest.raises(ValueError, match="exactly one"):
        SAOLinear(32, 32, sparsity=0.5, groups=2)
    with pytest.raises(ValueError, match="exactly one"):
        SAOLinear(32, 32)


# ----------------------------------------------------------------------------- ecosystem
def test_autocast_bfloat16():
    layer = SAOLinear(96, 48, groups=4, generator=gen(19))
    x = torch.randn(6, 96, generator=gen(20))
    ref = SAOLinear(96, 48, groups=4, generator=gen(19))
    y_ref = ref(x)
    y_ref.square().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert layer.values.dtype == layer.values.grad.dtype == torch.float32
    assert layer.bias.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.values.grad, ref.values.grad, rtol=5e-2, atol=5e-2)


def _roundtrip(state, path):
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def test_state_dict_round_trip_into_other_seed(tmp_path):
    src = SAOLinear(96, 48, groups=4, generator=gen(21), dtype=F64)
    dst = SAOLinear(96, 48, groups=4, generator=gen(22), dtype=F64)
    x = torch.randn(5, 96, generator=gen(23), dtype=F64)
    assert not torch.allclose(src(x), dst(x))
    dst.load_state_dict(_roundtrip(src.state_dict(), tmp_path / "sd.pt"))
    assert torch.equal(dst(x), src(x))


def test_load_state_dict_index_change_takes_effect(tmp_path):
    # out > in: the input side uses contiguous groups, so in_index is the identity
    layer = SAOLinear(24, 48, groups=2, generator=gen(24), dtype=F64)
    assert torch.equal(layer.in_index, torch.arange(24))
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["in_index"] = torch.randperm(24, generator=gen(25))
    sd["out_index"] = torch.arange(48)
    layer.load_state_dict(_roundtrip(sd, tmp_path / "perm.pt"))
    x = torch.randn(5, 24, generator=gen(26), dtype=F64)
    W = layer.dense_weight()
    assert not torch.equal(W, SAOLinear(24, 48, groups=2, generator=gen(24), dtype=F64).dense_weight())
    torch.testing.assert_close(layer(x), F.linear(x, W, layer.bias), rtol=1e-12, atol=1e-12)
    # and back to the identity
    sd["in_index"] = torch.arange(24)
    layer.load_state_dict(sd)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias), rtol=1e-12, atol=1e-12)


def test_deepcopy_and_pickle(layer64):
    x = torch.randn(4, 48, generator=gen(27), dtype=F64)
    y = layer64(x)
    for clone in (copy.deepcopy(layer64), pickle.loads(pickle.dumps(layer64))):
        assert torch.equal(clone(x), y)
        assert clone.values.data_ptr() != layer64.values.data_ptr()
        with torch.no_grad():
            clone.values.mul_(2)
        assert torch.equal(layer64(x), y)


def test_to_dtype_casts_values_keeps_indices():
    layer = SAOLinear(48, 24, groups=2, generator=gen(28))
    assert layer.values.dtype == torch.float32
    layer = layer.to(torch.float64)
    assert layer.values.dtype == layer.bias.dtype == F64
    assert layer.in_index.dtype == layer.out_index.dtype == torch.int64
    x = torch.randn(3, 48, generator=gen(29), dtype=F64)
    assert layer(x).dtype == F64
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias))


def test_load_state_dict_rejects_an_index_that_is_not_a_permutation():
    layer = SAOLinear(16, 8, groups=2)
    state = layer.state_dict()
    state["in_index"] = state["in_index"].clone()
    state["in_index"][0] = state["in_index"][1]  # a duplicated feature
    with pytest.raises(ValueError, match="in_index must be a permutation"):
        layer.load_state_dict(state)
