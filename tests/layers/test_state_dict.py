"""load_state_dict into SAO layers validates the incoming tensors before writing any of them:
a corrupt state raises a ValueError naming the layer and the defect and leaves the layer
exactly as it was (same tensor objects, same data), with ``assign=False`` and ``assign=True``,
alone or inside a model.  Valid states (also strided ones, loaded with ``assign=True``) load
and compute what the dense reference computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sao_kernels import SAOConv2d, SAOLinear

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make(kind, seed=0, block_size=1):
    if kind == "linear":
        return SAOLinear(16, 8, groups=2, block_size=block_size, generator=gen(seed), dtype=F64)
    return SAOConv2d(8, 16, 3, padding=1, groups=2, block_size=block_size, generator=gen(seed), dtype=F64)


def snapshot(layer):
    """(name, tensor object, data_ptr, a copy) of every parameter and buffer."""
    return [(n, t, t.data_ptr(), t.detach().clone()) for n, t in layer.state_dict(keep_vars=True).items()]


def assert_unchanged(layer, snap):
    now = layer.state_dict(keep_vars=True)
    assert list(now) == [n for n, *_ in snap]
    for name, obj, ptr, copy in snap:
        assert now[name] is obj, name
        assert now[name].data_ptr() == ptr, name
        assert torch.equal(now[name].detach(), copy), name


def corrupt(state, kind):
    """The corruptions: (what, mutate(state dict) -> None, words the message must contain)."""
    n_in = state["in_index"].numel()

    def dup(s):
        s["in_index"][0] = s["in_index"][1]

    def out_of_range(s):
        s["out_index"][0] = 10_000

    def negative(s):
        s["in_index"][1] = -1

    def int32(s):
        s["in_index"] = s["in_index"].to(torch.int32)

    def float_index(s):
        s["out_index"] = s["out_index"].to(F64)

    def short(s):
        s["in_index"] = s["in_index"][:-2]

    def two_d(s):
        s["in_index"] = s["in_index"].view(2, -1)

    def values_shape(s):
        s["values"] = s["values"][:, :-1]

    def values_int(s):
        s["values"] = s["values"].to(torch.int64)

    def bias_shape(s):
        s["bias"] = s["bias"][:-1]

    def not_a_tensor(s):
        s["in_index"] = s["in_index"].tolist()

    return [
        ("duplicate", dup, ["in_index", "permutation"]),
        ("out_of_range", out_of_range, ["out_index", "permutation"]),
        ("negative", negative, ["in_index", "permutation"]),
        ("int32", int32, ["in_index", "int64"]),
        ("float", float_index, ["out_index", "int64"]),
        ("short", short, ["in_index", f"({n_in},)"]),
        ("2-D", two_d, ["in_index", f"({n_in},)"]),
        ("values shape", values_shape, ["values", "shape"]),
        ("values int", values_int, ["values", "floating"]),
        ("bias shape", bias_shape, ["bias", "shape"]),
        ("list", not_a_tensor, ["in_index", "int64"]),
    ]


CASES = [(kind, i) for kind in ("linear", "conv") for i in range(11)]


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
@pytest.mark.parametrize("kind,i", CASES, ids=lambda v: str(v))
def test_corrupt_state_raises_and_leaves_the_layer_as_it_was(kind, i, assign):
    layer = make(kind, seed=1)
    state = {k: v.clone() for k, v in make(kind, seed=2).state_dict().items()}
    what, mutate, words = corrupt(state, kind)[i]
    mutate(state)
    snap = snapshot(layer)
    with pytest.raises(ValueError, match="load_state_dict: .*not a valid SAO layer") as err:
        layer.load_state_dict(state, assign=assign)
    msg = str(err.value)
    for word in words:
        assert word in msg, (what, msg)
    assert "left unchanged" in msg
    assert_unchanged(layer, snap)


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
def test_block_size_mismatch_is_rejected(assign):
    layer = SAOLinear(16, 8, groups=2, block_size=4, generator=gen(3), dtype=F64)
    state = {k: v.clone() for k, v in SAOLinear(16, 8, groups=2, generator=gen(4), dtype=F64).state_dict().items()}
    assert not torch.equal(state["in_index"].view(-1, 4), state["in_index"].view(-1, 4)[:, :1] + torch.arange(4))
    snap = snapshot(layer)
    with pytest.raises(ValueError, match=r"in_index is not made of aligned runs of block_size=4"):
        layer.load_state_dict(state, assign=assign)
    assert_unchanged(layer, snap)


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
def test_a_failed_model_load_leaves_the_sao_layer_whole(assign):
    model = nn.Sequential(make("linear", seed=5), nn.Tanh(), SAOLinear(8, 16, groups=2, generator=gen(6), dtype=F64))
    source = nn.Sequential(make("linear", seed=7), nn.Tanh(), SAOLinear(8, 16, groups=2, generator=gen(8), dtype=F64))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["2.out_index"][3] = state["2.out_index"][4]
    snap = snapshot(model[2])
    with pytest.raises(ValueError, match=r"load_state_dict: 2 is not a valid SAO layer: out_index"):
        model.load_state_dict(state, assign=assign)
    assert_unchanged(model[2], snap)
    # the layer still works and computes its own (old) weight
    x = torch.randn(3, 16, dtype=F64)
    torch.testing.assert_close(model(x), model[2](torch.tanh(model[0](x))))


def test_a_partial_state_is_checked_against_the_layer_s_own_tensors():
    layer = make("linear", seed=9)
    other = make("linear", seed=10)
    # strict=False with only in_index: the result would pair other's in_index with layer's
    # out_index and values, which is valid; a duplicated in_index is not
    layer.load_state_dict({"in_index": other.in_index.clone()}, strict=False)
    assert torch.equal(layer.in_index, other.in_index)
    bad = other.in_index.clone()
    bad[0] = bad[1]
    snap = snapshot(layer)
    with pytest.raises(ValueError, match="in_index must be a permutation"):
        layer.load_state_dict({"in_index": bad}, strict=False)
    assert_unchanged(layer, snap)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_valid_state_loads_with_assign_from_strided_sources(kind):
    src, dst = make(kind, seed=11), make(kind, seed=12)
    # strided (non-contiguous) copies of every tensor: every other element of a bigger buffer
    state = {k: torch.stack([torch.zeros_like(v), v], -1)[..., 1] for k, v in src.state_dict().items()}
    for k, v in src.state_dict().items():
        assert torch.equal(state[k], v) and not state[k].is_contiguous(), k
    dst.load_state_dict(state, assign=True)
    assert dst.in_index is state["in_index"]
    if kind == "linear":
        x = torch.randn(4, 16, generator=gen(13), dtype=F64)
        torch.testing.assert_close(dst(x), F.linear(x, src.dense_weight(), src.bias), rtol=1e-12, atol=1e-12)
    else:
        x = torch.randn(2, 8, 5, 5, generator=gen(13), dtype=F64)
        torch.testing.assert_close(dst(x), F.conv2d(x, src.dense_weight(), src.bias, padding=1), rtol=1e-12, atol=1e-12)


def test_load_keeps_parameter_objects_and_bumps_index_versions():
    layer, src = make("linear", seed=14), make("linear", seed=15)
    values, in_index = layer.values, layer.in_index
    version = in_index._version
    layer.load_state_dict(src.state_dict())
    assert layer.values is values and layer.in_index is in_index
    assert in_index._version > version  # what tells the ops to check the index again
    assert torch.equal(layer.in_index, src.in_index)
