"""An index rewritten in place (``copy_``), a new buffer assigned, or a state_dict loaded into
an SAO layer takes effect in the next forward, on every backend.

The layers used to cache "this index is the identity" as a Python bool, so after
``layer.out_index.copy_(perm)`` forward still skipped the scatter and returned the old
layer's output.  The reference here is a float64 dense weight written by loops over the
defining formula W[out_index[g*a + i], in_index[g*c + k]] = values[g, i, k], from the
buffers as they are at call time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sao_kernels as sk
from sao_kernels import SAOConv2d, SAOLinear

F64 = torch.float64


def _native_available() -> bool:
    try:
        from sao_kernels._extension import available
    except ImportError:
        return False
    return available()


# every backend this build has (native only with the extension: absent, never skipped)
BACKENDS = ["auto", "torch", "triton", "dense"] + (["native"] if _native_available() else [])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def loop_dense(values, in_index, out_index):
    v = values.detach().to(F64)
    G, a, c = v.shape[:3]
    W = torch.zeros(G * a, G * c, *v.shape[3:], dtype=F64)
    for g in range(G):
        for i in range(a):
            for k in range(c):
                W[int(out_index[g * a + i]), int(in_index[g * c + k])] = v[g, i, k]
    return W


def linear_ref(layer, x):
    return F.linear(x, loop_dense(layer.values, layer.in_index, layer.out_index), layer.bias)


def conv_ref(layer, x):
    w = loop_dense(layer.values, layer.in_index, layer.out_index)
    return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation)


def test_layers_hold_no_index_cache():
    for layer in (SAOLinear(8, 16, groups=2), SAOConv2d(4, 8, 3, groups=2)):
        for attr in ("_in_identity", "_out_identity", "_refresh_index_flags", "_indices"):
            assert not hasattr(layer, attr), attr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["in_index", "out_index"])
def test_linear_copy_into_an_identity_index_takes_effect(backend, which):
    # in > out: out_index (the smaller side) is the identity; out > in: in_index is
    n, m = (24, 12) if which == "out_index" else (12, 24)
    layer = SAOLinear(n, m, groups=3, generator=gen(1), dtype=F64)
    index = getattr(layer, which)
    assert torch.equal(index, torch.arange(index.numel()))
    x = torch.randn(5, n, generator=gen(2), dtype=F64)
    with sk.backend(backend):
        before = layer(x)
        torch.testing.assert_close(before, linear_ref(layer, x), rtol=1e-12, atol=1e-12)
        perm = torch.randperm(index.numel(), generator=gen(3))
        index.copy_(perm)  # in place: same tensor object, new version
        after = layer(x)
        torch.testing.assert_close(after, linear_ref(layer, x), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(after, before)
        index.copy_(torch.arange(index.numel()))  # and back to the identity
        torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_assigning_new_index_buffers_takes_effect(backend):
    layer = SAOLinear(24, 12, groups=3, generator=gen(4), dtype=F64)
    x = torch.randn(4, 24, generator=gen(5), dtype=F64)
    with sk.backend(backend):
        before = layer(x)
        layer.out_index = torch.randperm(12, generator=gen(6))
        layer.in_index = torch.randperm(24, generator=gen(7))
        assert set(dict(layer.named_buffers())) == {"in_index", "out_index"}
        after = layer(x)
        torch.testing.assert_close(after, linear_ref(layer, x), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(after, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_gradients_follow_a_rewritten_index(backend):
    layer = SAOLinear(12, 24, groups=2, generator=gen(8), dtype=F64)
    with torch.no_grad():
        layer.in_index.copy_(torch.randperm(12, generator=gen(9)))
    x = torch.randn(3, 12, generator=gen(10), dtype=F64, requires_grad=True)
    with sk.backend(backend):
        layer(x).square().sum().backward()
    values = layer.values.detach().clone().requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    F.linear(xd, loop_dense_differentiable(values, layer), layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.values.grad, values.grad, rtol=1e-12, atol=1e-12)


def loop_dense_differentiable(values, layer):
    G, a, c = values.shape
    rows = layer.out_index.view(G, a, 1).expand(G, a, c).reshape(-1)
    cols = layer.in_index.view(G, 1, c).expand(G, a, c).reshape(-1)
    return torch.zeros(G * a, G * c, dtype=F64).index_put((rows, cols), values.reshape(-1))


@pytest.mark.parametrize("backend", ["auto", "dense"])
def test_conv_copy_into_an_identity_index_takes_effect(backend):
    layer = SAOConv2d(4, 8, 3, padding=1, groups=2, generator=gen(11), dtype=F64)  # in_index: identity
    assert torch.equal(layer.in_index, torch.arange(4))
    x = torch.randn(2, 4, 5, 5, generator=gen(12), dtype=F64)
    with sk.backend(backend):
        before = layer(x)
        layer.in_index.copy_(torch.tensor([2, 0, 3, 1]))
        after = layer(x)
        torch.testing.assert_close(after, conv_ref(layer, x), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(after, before)
        layer.out_index = torch.randperm(8, generator=gen(13))
        torch.testing.assert_close(layer(x), conv_ref(layer, x), rtol=1e-12, atol=1e-12)


def test_a_corrupt_index_written_in_place_is_caught_by_the_next_forward():
    layer = SAOLinear(12, 24, groups=2, generator=gen(14), dtype=F64)
    x = torch.randn(2, 12, dtype=F64)
    layer(x)
    layer.in_index[0] = layer.in_index[1]  # a duplicate: no longer a permutation
    with pytest.raises((ValueError, IndexError), match="in_index"):
        layer(x)
