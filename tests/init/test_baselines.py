"""sao_kernels.init: the paper's baselines, RG-N / RG-U (random groups: statistics and mask)
and LMP / LRP (magnitude and random pruning of a dense orthogonal or Kaiming base)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _sao_reference import check_groups, gen

from sao_kernels.init import (
    magnitude_prune_,
    random_prune_,
    rg_normal_,
    rg_uniform_,
)


# ============================================================ RG-N and RG-U
@pytest.mark.parametrize("fill", [rg_normal_, rg_uniform_])
@pytest.mark.parametrize(
    "shape, kw, G",
    [
        ((256, 256), {"groups": 4, "gain": 1.5}, 4),
        ((128, 256), {"sparsity": 0.5}, 2),
        ((256, 64), {"groups": 8, "activation": "relu"}, 8),
        ((64, 128, 3, 3), {"groups": 4, "gain": 0.7}, 4),
        ((128, 64, 3, 5), {"groups": 2, "block_size": 4}, 2),
    ],
)
def test_rg_statistics_and_mask(fill, shape, kw, G):
    w = torch.full(shape, float("nan"), dtype=torch.float64)
    mask = fill(w, **kw, generator=gen(10))
    assert mask.shape == w.shape and mask.dtype == torch.bool
    pair = (w != 0).flatten(2).any(-1) if w.dim() == 4 else (w != 0)
    if w.dim() == 4:
        assert torch.equal(mask, pair[:, :, None, None].expand(shape))
        assert (w[pair] != 0).all()  # whole kernels kept
    else:
        assert torch.equal(mask, pair)
    check_groups(pair.numpy(), G)
    m, n = shape[:2]
    fan_in = (n // G) * math.prod(shape[2:])
    gain = kw.get("gain", 1.0)
    vals = w[mask]
    var = gain**2 / fan_in
    assert abs(vals.mean().item()) < 5 * math.sqrt(var / vals.numel())
    assert abs(vals.var().item() / var - 1) < 0.1
    if fill is rg_uniform_:
        assert vals.abs().max().item() <= gain * math.sqrt(3.0 / fan_in)
    else:
        # Gaussian: the fourth moment is about 3 var^2 (uniform would be 1.8 var^2)
        assert abs((vals**4).mean().item() / vals.var().item() ** 2 - 3) < 0.4
    if kw.get("activation") == "relu":
        W = w.numpy()
        M = W[: m // 2, : n // 2]
        np.testing.assert_array_equal(W, np.block([[M, -M], [-M, M]]))


# ================================================================= LMP / LRP
def dense_base(shape, base, activation, gain, seed):
    """The dense init the pruning baselines start from, rebuilt with torch.nn.init."""
    w = torch.empty(shape, dtype=torch.float64)
    g = gen(seed)
    if base == "orthogonal":
        torch.nn.init.orthogonal_(w, gain=gain, generator=g)
    else:
        torch.nn.init.kaiming_normal_(w, nonlinearity=activation, generator=g)
        w *= gain
    return w


PRUNE_SHAPES = [(32, 48), (48, 32), (16, 8, 3, 3), (8, 16, 5, 3)]


@pytest.mark.parametrize("base", ["orthogonal", "kaiming"])
@pytest.mark.parametrize("shape", PRUNE_SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9, 0.97])
def test_magnitude_prune(base, shape, sparsity):
    w = torch.full(shape, float("nan"), dtype=torch.float64)
    mask = magnitude_prune_(w, sparsity, base=base, activation="relu", gain=1.3, generator=gen(12))
    assert mask.shape == w.shape and mask.dtype == torch.bool
    conv = len(shape) == 4
    count = shape[0] * shape[1] if conv else w.numel()
    pair = mask.flatten(2) if conv else mask.flatten()[:, None]
    if conv:  # whole kernels
        assert torch.equal(pair.all(-1), pair.any(-1))
    kept = pair.any(-1).flatten()
    assert int(kept.sum()) == max(1, round((1 - sparsity) * count))
    ref = dense_base(shape, base, "relu", 1.3, 12)
    assert torch.equal(w, ref * mask)  # kept entries are the dense init, others zero
    score = ref.abs().flatten(2).sum(-1).flatten() if conv else ref.abs().flatten()
    if kept.all():
        return
    assert score[kept].min() >= score[~kept].max()


@pytest.mark.parametrize("base", ["orthogonal", "kaiming"])
@pytest.mark.parametrize("shape", PRUNE_SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95])
def test_random_prune(base, shape, sparsity):
    w = torch.full(shape, float("nan"), dtype=torch.float64)
    mask = random_prune_(w, sparsity, base=base, activation="tanh", generator=gen(13))
    conv = len(shape) == 4
    count = shape[0] * shape[1] if conv else w.numel()
    pair = mask.flatten(2) if conv else mask.flatten()[:, None]
    if conv:
        assert torch.equal(pair.all(-1), pair.any(-1))
    assert int(pair.any(-1).sum()) == max(1, round((1 - sparsity) * count))
    assert torch.equal(w, dense_base(shape, base, "tanh", 1.0, 13) * mask)
    # same seed -> same mask, other seed -> another mask
    w2, w3 = torch.empty(shape, dtype=torch.float64), torch.empty(shape, dtype=torch.float64)
    assert torch.equal(random_prune_(w2, sparsity, base=base, generator=gen(13)), mask)
    if 0 < sparsity:
        assert not torch.equal(random_prune_(w3, sparsity, base=base, generator=gen(14)), mask)


def test_random_prune_is_not_magnitude():
    w1, w2 = torch.empty(64, 64, dtype=torch.float64), torch.empty(64, 64, dtype=torch.float64)
    m1 = magnitude_prune_(w1, 0.5, generator=gen(0))
    m2 = random_prune_(w2, 0.5, generator=gen(0))
    assert not torch.equal(m1, m2)


def test_prune_errors():
    w = torch.empty(8, 8)
    for fn in (magnitude_prune_, random_prune_):
        for s in (1.0, -0.1, 2, True):
            with pytest.raises(ValueError, match=r"sparsity must be a float in \[0, 1\)"):
                fn(w, s)
        with pytest.raises(ValueError, match="base='xavier' is not supported"):
            fn(w, 0.5, base="xavier")
        with pytest.raises(ValueError, match=r"tensor must have shape"):
            fn(torch.empty(8), 0.5)
        with pytest.raises(TypeError, match="generator"):
            fn(w, 0.5, generator=0)
