"""sao_kernels.sao_linear / sao_conv2d called directly with explicit index maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sao_kernels as sk

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def explicit_dense(values, in_index, out_index):
    """Dense weight (m, n, *k) by explicit loops over groups and block rows."""
    G, a, c = values.shape[:3]
    W = values.new_zeros(G * a, G * c, *values.shape[3:])
    for g in range(G):
        for i in range(a):
            W[int(out_index[g * a + i]), in_index[g * c : (g + 1) * c]] = values[g, i]
    return W


@pytest.mark.parametrize("with_bias", [True, False])
def test_sao_linear_with_indices_any_leading_dims(with_bias):
    G, a, c = 3, 8, 5
    v = torch.randn(G, a, c, generator=gen(1), dtype=F64)
    ii, oi = torch.randperm(G * c, generator=gen(2)), torch.randperm(G * a, generator=gen(3))
    b = torch.randn(G * a, generator=gen(4), dtype=F64) if with_bias else None
    W = explicit_dense(v, ii, oi)
    for lead in [(), (4,), (2, 3), (2, 0, 3)]:
        x = torch.randn(*lead, G * c, generator=gen(5), dtype=F64)
        y = sk.sao_linear(x, v, ii, oi, b)
        assert y.shape == (*lead, G * a)
        torch.testing.assert_close(y, F.linear(x, W, b), rtol=1e-12, atol=1e-12)
    # None means contiguous groups: the same as passing arange
    x = torch.randn(4, G * c, generator=gen(6), dtype=F64)
    ar_in, ar_out = torch.arange(G * c), torch.arange(G * a)
    torch.testing.assert_close(sk.sao_linear(x, v, None, None, b), sk.sao_linear(x, v, ar_in, ar_out, b))


def test_sao_linear_errors():
    v = torch.randn(2, 4, 6, dtype=F64)
    with pytest.raises(ValueError, match="in_features=12"):
        sk.sao_linear(torch.randn(3, 13, dtype=F64), v)
    with pytest.raises(TypeError, match="dtype"):
        sk.sao_linear(torch.randn(3, 12), v)


def test_sao_linear_autocast_casts_values_and_bias():
    v = torch.randn(2, 4, 6, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    x = torch.randn(3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sk.sao_linear(x, v, None, None, b)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert v.grad.dtype == b.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), sk.sao_linear(x, v, None, None, b).detach(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("unbatched", [False, True])
def test_sao_conv2d_with_indices(unbatched):
    G, a, c = 2, 3, 4
    v = torch.randn(G, a, c, 3, 3, generator=gen(7), dtype=F64)
    ii, oi = torch.randperm(G * c, generator=gen(8)), torch.randperm(G * a, generator=gen(9))
    b = torch.randn(G * a, generator=gen(10), dtype=F64)
    W = explicit_dense(v, ii, oi)
    x = torch.randn(2, G * c, 7, 6, generator=gen(11), dtype=F64)
    if unbatched:
        x = x[0]
    y = sk.sao_conv2d(x, v, ii, oi, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    torch.testing.assert_close(y, F.conv2d(x, W, b, (2, 1), (1, 0), (1, 2)), rtol=1e-12, atol=1e-12)
    y = sk.sao_conv2d(x, v, ii, None, None, padding="same")
    torch.testing.assert_close(y, F.conv2d(x, explicit_dense(v, ii, torch.arange(G * a)), None, padding="same"))


def test_sao_conv2d_errors():
    v = torch.randn(2, 3, 4, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        sk.sao_conv2d(torch.randn(1, 7, 5, 5, dtype=F64), v)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        sk.sao_conv2d(torch.randn(8, 5, dtype=F64), v)
    with pytest.raises(TypeError, match="dtype"):
        sk.sao_conv2d(torch.randn(1, 8, 5, 5), v)
