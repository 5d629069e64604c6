"""Tests for sao_kernels.init: the SAO construction and the paper's baselines.

All structural claims are checked directly on the dense weight (or mask) with small
independent re-derivations written here: row/column counts, connected components of the
bipartite mask graph (union-find), float64 Gram matrices, the Jacobian of a circular
convolution.  Nothing is compared against the code under test itself.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sao_kernels.init import (
    eco_frequency_pairs,
    magnitude_prune_,
    random_prune_,
    rg_normal_,
    rg_uniform_,
    sao_,
    sao_blocks,
    sao_delta_,
    sao_eco_,
    sao_topology,
)
from sao_kernels.sizes import resolve_sizes


# ===================================================================== helpers
def components(mask: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Connected components of the bipartite graph rows <-> columns of ``mask`` (union-find)."""
    m, n = mask.shape
    parent = list(range(m + n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, c in zip(*np.nonzero(mask), strict=True):
        ra, rb = find(int(r)), find(m + int(c))
        if ra != rb:
            parent[ra] = rb
    comps: dict[int, list[int]] = {}
    for v in range(m + n):
        comps.setdefault(find(v), []).append(v)
    return [([v for v in vs if v < m], [v - m for v in vs if v >= m]) for vs in comps.values()]


def check_groups(mask, G: int) -> list[tuple[list[int], list[int]]]:
    """Exactly G disjoint components, each a complete bipartite K(m/G, n/G), and nothing else."""
    mask = np.asarray(mask, dtype=bool)
    m, n = mask.shape
    assert m % G == 0 and n % G == 0
    a, c = m // G, n // G
    # exact density 1/G (sparsity exactly 1 - 1/G)
    assert int(mask.sum()) * G == m * n
    # regular degrees: every output row has n/G non-zeros, every input column m/G.
    # (n/G or m/G is the degree d = L/G along the larger dimension, the other S/G)
    assert (mask.sum(1) == c).all()
    assert (mask.sum(0) == a).all()
    comps = components(mask)
    assert len(comps) == G
    for rows, cols in comps:
        assert len(rows) == a and len(cols) == c
        assert mask[np.ix_(rows, cols)].all()  # complete bipartite
    return comps


def dense_from_blocks(values: torch.Tensor, in_index: torch.Tensor, out_index: torch.Tensor) -> np.ndarray:
    """Float64 dense weight from the compact triple, group by group, in numpy."""
    v = values.detach().to(torch.float64).numpy()
    G, a, c = v.shape[:3]
    oi, ii = out_index.numpy(), in_index.numpy()
    W = np.zeros((a * G, c * G, *v.shape[3:]))
    for g in range(G):
        W[np.ix_(oi[g * a : (g + 1) * a], ii[g * c : (g + 1) * c])] = v[g]
    return W


def check_semi_orthogonal(W, gain: float = 1.0, tol: float = 1e-5) -> None:
    W = np.asarray(W, dtype=np.float64)
    m, n = W.shape
    gram = W @ W.T if m <= n else W.T @ W
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(m, n)), atol=tol, rtol=0)


def check_looks_linear(W, gain: float = 1.0) -> np.ndarray:
    """W = [[M, -M], [-M, M]] with M semi-orthogonal, and [relu(h), relu(-h)] -> [Mh, -Mh]."""
    W = np.asarray(W, dtype=np.float64)
    m, n = W.shape
    M = W[: m // 2, : n // 2]
    np.testing.assert_array_equal(W, np.block([[M, -M], [-M, M]]))
    check_semi_orthogonal(M, gain)
    h = np.random.default_rng(0).standard_normal((n // 2, 7))
    x = np.concatenate([np.maximum(h, 0), np.maximum(-h, 0)])
    np.testing.assert_allclose(W @ x, np.concatenate([M @ h, -(M @ h)]), atol=1e-12)
    return M


def check_tiles(index: torch.Tensor, b: int) -> np.ndarray:
    """index is made of aligned runs of b consecutive features; returns the tile ids."""
    idx = index.numpy()
    assert sorted(idx.tolist()) == list(range(idx.size))
    runs = idx.reshape(-1, b)
    assert (runs[:, 0] % b == 0).all()
    assert (runs == runs[:, :1] + np.arange(b)).all()
    return runs[:, 0] // b


def check_smaller_rule(index: torch.Tensor, G: int, b: int, rule: str, relu: bool) -> None:
    """The smaller dimension follows the fixed interleaved / contiguous rule over tiles."""
    per = index.numpy().reshape(G, -1)
    if relu:  # group g owns base features f and their looks-linear partners f + S/2
        half = per.shape[1] // 2
        S2 = index.numel() // 2
        assert (per[:, half:] == per[:, :half] + S2).all()
        per = per[:, :half]
    tiles = per[:, ::b] // b  # (G, t)
    t = tiles.shape[1]
    for g in range(G):
        want = np.arange(g, G * t, G) if rule == "interleaved" else np.arange(g * t, (g + 1) * t)
        assert (tiles[g] == want).all(), (rule, g, tiles[g], want)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ======================================================================= cases
@dataclass
class Case:
    m: int
    n: int
    G: int  # the expected number of groups, worked out by hand
    kw: dict = field(default_factory=dict)

    @property
    def relu(self) -> bool:
        return self.kw.get("activation") == "relu"

    @property
    def b(self) -> int:
        return self.kw.get("block_size", 1)

    @property
    def gain(self) -> float:
        return self.kw.get("gain", 1.0)

    def __repr__(self) -> str:
        return f"{self.m}x{self.n}-G{self.G}-" + "-".join(f"{k}={v}" for k, v in self.kw.items())


def _random_cases(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        relu = rng.random() < 0.3
        b = rng.choice([1, 1, 2, 4])
        G = rng.randint(1, 8)
        a = rng.randint(1, 4) * b * (2 if relu else 1)  # side along the smaller dim
        d = rng.randint(max(1, a // b), 8) * b * (2 if relu else 1)  # side along the larger dim
        if d < (4 if relu else 2) or d < a:
            continue
        S, L = G * a, G * d
        if L > 256:
            continue
        m, n = (S, L) if rng.random() < 0.5 else (L, S)
        form = rng.choice(["sparsity", "degree", "groups"])
        kw = {"sparsity": 1.0 - 1.0 / G, "degree": d, "groups": G}
        kw = {form: kw[form]}
        if relu:
            kw["activation"] = "relu"
        if b > 1:
            kw["block_size"] = b
        if rng.random() < 0.3:
            kw["gain"] = rng.choice([0.5, 2.0, math.sqrt(2)])
        cases.append(Case(m, n, G, kw))
    return cases


CASES = [
    Case(64, 64, 4, {"groups": 4}),
    Case(100, 100, 10, {"sparsity": 0.9}),
    Case(48, 48, 1, {"groups": 1}),  # G = 1: dense orthogonal
    Case(32, 128, 32, {"groups": 32}),  # G = min(m, n), m < n
    Case(128, 32, 32, {"groups": 32}),  # G = min(m, n), m > n
    Case(64, 128, 4, {"sparsity": 0.75, "gain": 2.0}),
    Case(96, 48, 6, {"degree": 16}),
    Case(24, 96, 12, {"degree": 8}),
    Case(200, 40, 40, {"groups": 40}),
    Case(7, 21, 7, {"groups": 7}),
    Case(64, 128, 4, {"groups": 4, "activation": "relu"}),
    Case(128, 64, 16, {"groups": 16, "activation": "relu"}),
    Case(100, 100, 5, {"sparsity": 0.8, "activation": "relu"}),
    Case(32, 128, 16, {"groups": 16, "activation": "relu"}),
    Case(128, 32, 16, {"groups": 16, "activation": "relu", "gain": 0.5}),
    Case(64, 64, 1, {"groups": 1, "activation": "relu"}),
    Case(64, 128, 4, {"groups": 4, "block_size": 4}),
    Case(128, 256, 2, {"groups": 2, "block_size": 16}),
    Case(96, 48, 3, {"groups": 3, "block_size": 16}),
    Case(64, 64, 4, {"groups": 4, "block_size": 16}),
    Case(256, 64, 16, {"groups": 16, "block_size": 4}),
    Case(64, 128, 2, {"groups": 2, "activation": "relu", "block_size": 4}),
    Case(128, 128, 4, {"degree": 32, "activation": "relu", "block_size": 8}),
    Case(64, 32, 4, {"groups": 4, "activation": "linear"}),
] + _random_cases(11, 16)


# ================================================================ SAO, linear
@pytest.mark.parametrize("smaller_groups", ["interleaved", "contiguous"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_sao_blocks_structure(case: Case, smaller_groups: str):
    m, n, G, b = case.m, case.n, case.G, case.b
    fmt = sao_blocks(m, n, **case.kw, smaller_groups=smaller_groups, generator=gen(1), dtype=torch.float64)
    assert fmt.values.shape == (G, m // G, n // G)
    assert fmt.in_index.dtype == torch.int64 and fmt.out_index.dtype == torch.int64
    W = dense_from_blocks(fmt.values, fmt.in_index, fmt.out_index)
    mask = W != 0
    np.testing.assert_array_equal(fmt.mask().numpy(), mask)
    comps = check_groups(mask, G)

    # each group of the compact format is one component of the graph
    a, c = m // G, n // G
    as_sets = {(tuple(sorted(r)), tuple(sorted(k))) for r, k in comps}
    for g in range(G):
        rows = tuple(sorted(fmt.out_index[g * a : (g + 1) * a].tolist()))
        cols = tuple(sorted(fmt.in_index[g * c : (g + 1) * c].tolist()))
        assert (rows, cols) in as_sets

    if case.relu:
        M = check_looks_linear(W, case.gain)
        check_groups(M != 0, G)  # the half-size base has the same G groups
    else:
        check_semi_orthogonal(W, case.gain)

    # block_size: both indices are aligned runs of b consecutive features
    check_tiles(fmt.in_index, b)
    check_tiles(fmt.out_index, b)
    small = fmt.out_index if m <= n else fmt.in_index
    check_smaller_rule(small, G, b, smaller_groups, case.relu)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_sao_fill_(case: Case):
    m, n, G = case.m, case.n, case.G
    w = torch.full((m, n), float("nan"), dtype=torch.float64)
    mask = sao_(w, **case.kw, generator=gen(2))
    assert mask.dtype == torch.bool and mask.shape == (m, n)
    W = w.numpy()
    assert np.isfinite(W).all()
    np.testing.assert_array_equal(mask.numpy(), W != 0)
    check_groups(W != 0, G)
    if case.relu:
        check_looks_linear(W, case.gain)
    else:
        check_semi_orthogonal(W, case.gain)


def test_acceptance_example():
    w = torch.empty(64, 128)
    mask = sao_(w, sparsity=0.75)
    assert mask.dtype == torch.bool
    assert int(mask.sum()) * 4 == 64 * 128  # exactly 25 % density
    assert mask.float().mean().item() == 0.25
    w64 = w.double()
    assert torch.allclose(w64 @ w64.T, torch.eye(64, dtype=torch.float64), atol=1e-5)
    check_groups(mask.numpy(), 4)


def test_sao_m_equal_n_random_partition_is_on_inputs():
    """For m == n the input dimension takes the random partition (as in the paper's code),
    the output dimension the fixed rule."""
    sizes = resolve_sizes(32, 32, groups=4)
    out0, in0 = sao_topology(sizes, generator=gen(0))
    out1, in1 = sao_topology(sizes, generator=gen(1))
    assert torch.equal(out0, out1)
    assert not torch.equal(in0, in1)


@pytest.mark.parametrize("m, n", [(16, 96), (96, 16)])
def test_topology_is_uniform_random_partition_over_tiles(m, n):
    """The larger dimension is a uniformly random partition of its tiles into G equal groups:
    P(tile t in group g) = 1/G and P(tiles t, u share a group) = (d/b - 1) / (L/b - 1)."""
    b, G = 4, 4
    sizes = resolve_sizes(m, n, groups=G, block_size=b)
    L = max(m, n)
    T, per = L // b, L // b // G
    draws = 2000
    g = torch.Generator().manual_seed(123)
    member = np.zeros((T, G))
    together = np.zeros((T, T))
    seen = set()
    for _ in range(draws):
        out_index, in_index = sao_topology(sizes, smaller_groups="contiguous", generator=g)
        large = in_index if n > m else out_index
        tiles = check_tiles(large, b).reshape(G, per)
        # features ascending within each group
        assert (np.diff(large.numpy().reshape(G, -1), axis=1) > 0).all()
        group_of = np.empty(T, dtype=int)
        for k in range(G):
            group_of[tiles[k]] = k
        member[np.arange(T), group_of] += 1
        together += group_of[:, None] == group_of[None, :]
        seen.add(tuple(group_of))
    assert len(seen) > draws * 0.99  # essentially never the same partition twice
    np.testing.assert_allclose(member / draws, 1.0 / G, atol=0.05)
    p = (per - 1) / (T - 1)
    off = ~np.eye(T, dtype=bool)
    np.testing.assert_allclose((together / draws)[off], p, atol=0.05)


# ===================================================== reproducibility, dtypes
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[11], CASES[16]], ids=repr)
def test_generator_reproducibility(case: Case):
    a = sao_blocks(case.m, case.n, **case.kw, generator=gen(5))
    b = sao_blocks(case.m, case.n, **case.kw, generator=gen(5))
    c = sao_blocks(case.m, case.n, **case.kw, generator=gen(6))
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.in_index, b.in_index) and torch.equal(a.out_index, b.out_index)
    assert not torch.equal(a.values, c.values)
    large_a = a.in_index if case.n >= case.m else a.out_index
    large_c = c.in_index if case.n >= case.m else c.out_index
    if case.G > 1:
        assert not torch.equal(large_a, large_c)
    # the in-place helpers too
    w1, w2, w3 = (torch.empty(case.m, case.n) for _ in range(3))
    m1, m2 = sao_(w1, **case.kw, generator=gen(7)), sao_(w2, **case.kw, generator=gen(7))
    sao_(w3, **case.kw, generator=gen(8))
    assert torch.equal(w1, w2) and torch.equal(m1, m2)
    assert not torch.equal(w1, w3)


@pytest.mark.parametrize("fill", [sao_, rg_normal_, rg_uniform_])
def test_dtypes_filled_correctly(fill):
    ref = torch.empty(48, 96, dtype=torch.float64)
    ref_mask = fill(ref, groups=4, generator=gen(3))
    for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
        w = torch.empty(48, 96, dtype=dtype)
        mask = fill(w, groups=4, generator=gen(3))
        assert w.dtype == dtype
        assert torch.equal(mask, ref_mask)
        # built in float64, then cast: a seed gives the same layer in every dtype
        assert torch.equal(w, ref.to(dtype))
    w = torch.empty(48, 96, dtype=torch.float32)
    sao_(w, groups=4, generator=gen(3))
    check_semi_orthogonal(w.double().numpy(), tol=1e-5)


def test_sao_blocks_device_and_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        fmt = sao_blocks(32, 64, groups=4, generator=gen(0), dtype=dtype, device="cpu")
        assert fmt.values.dtype == dtype and fmt.values.device.type == "cpu"
        assert fmt.in_index.dtype == torch.int64
    assert sao_blocks(32, 64, groups=4).values.dtype == torch.get_default_dtype()
    f64 = sao_blocks(32, 64, groups=4, generator=gen(0), dtype=torch.float64)
    f32 = sao_blocks(32, 64, groups=4, generator=gen(0), dtype=torch.float32)
    assert torch.equal(f64.values.float(), f32.values)
    assert torch.equal(f64.in_index, f32.in_index)


# ================================================================== SAO-Delta
DELTA_CASES = [
    Case(16, 32, 4, {"groups": 4}),
    Case(32, 16, 4, {"groups": 4}),
    Case(24, 24, 3, {"groups": 3, "gain": 2.0}),
    Case(16, 32, 2, {"groups": 2, "activation": "relu"}),
    Case(32, 64, 4, {"groups": 4, "block_size": 4}),
]


@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (3, 5), (5, 3), (1, 1), (1, 3)])
@pytest.mark.parametrize("case", DELTA_CASES, ids=repr)
def test_sao_delta(case: Case, kernel):
    kh, kw = kernel
    m, n, G = case.m, case.n, case.G
    w = torch.full((m, n, kh, kw), float("nan"), dtype=torch.float64)
    mask = sao_delta_(w, **case.kw, generator=gen(4))
    assert mask.shape == w.shape and mask.dtype == torch.bool
    W = w.numpy()
    centre = W[:, :, kh // 2, kw // 2]
    others = W.copy()
    others[:, :, kh // 2, kw // 2] = 0
    assert (others == 0).all()  # every other tap is exactly zero
    pair = centre != 0
    check_groups(pair, G)
    # the returned mask keeps whole kernels of kept (out, in) pairs
    np.testing.assert_array_equal(mask.numpy(), np.broadcast_to(pair[:, :, None, None], W.shape))
    if case.relu:
        check_looks_linear(centre, case.gain)
    else:
        check_semi_orthogonal(centre, case.gain)


# ==================================================================== SAO-ECO
def circular_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    kh, kw = weight.shape[2:]
    return F.conv2d(F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="circular"), weight)


def conv_jacobian(weight: torch.Tensor) -> torch.Tensor:
    """The (out*kh*kw, in*kh*kw) matrix of x (in, kh, kw) -> circular conv (out, kh, kw),
    by pushing the identity basis through the convolution."""
    _m, n, kh, kw = weight.shape
    N = n * kh * kw
    basis = torch.eye(N, dtype=torch.float64).view(N, n, kh, kw)
    return circular_conv(basis, weight).reshape(N, -1).T


def check_operator_orthogonal(J: torch.Tensor, gain: float = 1.0) -> None:
    rows, cols = J.shape
    gram = J @ J.T if rows <= cols else J.T @ J
    torch.testing.assert_close(gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-8, rtol=0)


ECO_CASES = [
    Case(16, 32, 4, {"groups": 4}),  # m < n
    Case(32, 16, 2, {"groups": 2}),  # m > n
    Case(12, 12, 3, {"groups": 3}),  # m == n
    Case(8, 8, 1, {"groups": 1, "gain": 1.5}),  # G = 1: a plain ECO convolution
    Case(8, 24, 8, {"groups": 8}),  # G = min(m, n)
    Case(16, 32, 4, {"groups": 4, "block_size": 2}),
    Case(16, 32, 2, {"groups": 2, "activation": "relu"}),
    Case(32, 16, 4, {"degree": 8, "activation": "relu"}),
]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("case", ECO_CASES, ids=repr)
def test_sao_eco_is_orthogonal_convolution(case: Case, k: int):
    """What is verified numerically, in float64:

    * the weight W (m, n, k, k) made by sao_eco_ defines, through F.conv2d on a circularly
      padded input (pad k//2 on every side, then no padding), a linear map from inputs of
      shape (n, k, k) to outputs of shape (m, k, k); its full Jacobian J is built by pushing
      the identity basis through it, and J J^T = gain^2 I (m <= n) or J^T J = gain^2 I
      (m > n) to 1e-8 (for ReLU: the top-left (m/2, n/2) quadrant kernel K has that
      property and W = [[K, -K], [-K, K]] over channel halves, so [relu(h), relu(-h)] maps
      to [K*h, -K*h]);
    * the mask is on (out, in) channel pairs: every tap of a pruned pair is zero, kept pairs
      carry non-zero taps away from the centre too (it is not a delta kernel), and the pair
      mask is G disjoint complete bipartite groups;
    * a k-periodic input tiled to 2k x 2k keeps its norm through the convolution (m >= n),
      or does not gain norm (m < n) and keeps it for inputs in the row space of J.
    """
    m, n, G = case.m, case.n, case.G
    w = torch.full((m, n, k, k), float("nan"), dtype=torch.float64)
    mask = sao_eco_(w, **case.kw, generator=gen(9))
    assert torch.isfinite(w).all()

    # mask on channel pairs
    pair = (w != 0).flatten(2).any(-1)
    check_groups(pair.numpy(), G)
    assert torch.equal(mask, pair[:, :, None, None].expand(w.shape))
    assert (w[~pair] == 0).all()
    off_centre = w.clone()
    off_centre[:, :, k // 2, k // 2] = 0
    assert (off_centre[pair] != 0).float().mean() > 0.5

    if case.relu:
        K = w[: m // 2, : n // 2]
        torch.testing.assert_close(w, torch.cat([torch.cat([K, -K], 1), torch.cat([-K, K], 1)], 0), rtol=0, atol=0)
        check_operator_orthogonal(conv_jacobian(K), case.gain)
        h = torch.randn(3, n // 2, 2 * k, 2 * k, dtype=torch.float64, generator=gen(0))
        y = circular_conv(torch.cat([h.relu(), (-h).relu()], 1), w)
        Kh = circular_conv(h, K)
        torch.testing.assert_close(y, torch.cat([Kh, -Kh], 1), atol=1e-12, rtol=0)
        return

    J = conv_jacobian(w)
    assert J.shape == (m * k * k, n * k * k)
    check_operator_orthogonal(J, case.gain)

    # a k-periodic input tiled to 2k x 2k
    x = torch.randn(4, n, k, k, dtype=torch.float64, generator=gen(1))
    if m < n:
        # only inputs in the row space of J keep their norm; project onto it
        x = (J.T @ (J @ x.reshape(4, -1).T)).T.reshape(x.shape) / case.gain**2
    xt = x.repeat(1, 1, 2, 2)
    y = circular_conv(xt, w)
    assert y.shape == (4, m, 2 * k, 2 * k)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), case.gain * xt.flatten(1).norm(dim=1), atol=1e-9, rtol=1e-9)
    # and the tiled output is the tiling of the k x k output
    torch.testing.assert_close(y, circular_conv(x, w).repeat(1, 1, 2, 2), atol=1e-12, rtol=0)
    if m < n:
        z = torch.randn(4, n, k, k, dtype=torch.float64, generator=gen(2)).repeat(1, 1, 2, 2)
        assert (circular_conv(z, w).flatten(1).norm(dim=1) <= case.gain * z.flatten(1).norm(dim=1) * (1 + 1e-9)).all()


def test_sao_eco_non_square_kernel():
    w = torch.empty(16, 32, 3, 5, dtype=torch.float64)
    mask = sao_eco_(w, groups=4, generator=gen(0))
    check_groups(mask[:, :, 0, 0].numpy(), 4)
    check_operator_orthogonal(conv_jacobian(w))


def test_eco_frequency_pairs():
    for kh, kw in [(3, 3), (5, 5), (3, 5), (4, 4), (1, 1)]:
        pairs = eco_frequency_pairs(kh, kw)
        covered = set()
        for f, p in pairs:
            assert p == ((-f[0]) % kh, (-f[1]) % kw)
            covered |= {f, p}
        assert covered == {(i, j) for i in range(kh) for j in range(kw)}
        # classes of the conjugation f ~ -f
        assert len(pairs) == len({frozenset({f, p}) for f, p in pairs})
        if kh % 2 and kw % 2:
            assert len(pairs) == (kh * kw + 1) // 2


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


# ===================================================================== errors
@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: sao_blocks(8, 8, groups=2, init="foo"), ValueError, r"init='foo' is not supported for a linear layer"),
        (lambda: sao_blocks(8, 8, groups=2, init="delta"), ValueError, r"init='delta' is not supported for a linear"),
        (
            lambda: sao_blocks(8, 8, groups=2, init="sao", kernel_size=3),
            ValueError,
            r"init='sao' is not supported for a convolution",
        ),
        (lambda: sao_blocks(8, 8, groups=2, kernel_size=(3,)), ValueError, r"kernel_size must be"),
        (lambda: sao_blocks(8, 8, groups=2, kernel_size=0), ValueError, r"kernel_size must be"),
        (
            lambda: sao_blocks(8, 8, groups=2, kernel_size=4),
            ValueError,
            r"init='delta' needs odd kernel sizes.*\(4, 4\)",
        ),
        (lambda: sao_blocks(8, 8, groups=2, smaller_groups="random"), ValueError, r"smaller_groups='random'"),
        (lambda: sao_blocks(8, 8, groups=2, generator=1), TypeError, r"generator must be a torch.Generator"),
        (lambda: sao_blocks(8, 8, groups=2, gain="1"), TypeError, r"gain must be a number"),
        (lambda: sao_delta_(torch.empty(8, 8, 2, 2), groups=2), ValueError, r"init='delta' needs odd kernel sizes"),
        (
            lambda: sao_delta_(torch.empty(8, 8, 3, 4), groups=2),
            ValueError,
            r"init='delta' needs odd kernel sizes.*\(3, 4\)",
        ),
        (
            lambda: sao_(torch.empty(8, 8, 3, 3), groups=2),
            ValueError,
            r"sao_: tensor must have shape \(out, in\), got \(8, 8, 3, 3\)",
        ),
        (
            lambda: sao_delta_(torch.empty(8, 8), groups=2),
            ValueError,
            r"sao_delta_: tensor must have shape \(out, in, kh, kw\), got \(8, 8\)",
        ),
        (
            lambda: sao_eco_(torch.empty(8, 8), groups=2),
            ValueError,
            r"sao_eco_: tensor must have shape \(out, in, kh, kw\)",
        ),
        (
            lambda: rg_normal_(torch.empty(8), groups=2),
            ValueError,
            r"rg_normal_: tensor must have shape \(out, in\) or \(out, in, kh, kw\)",
        ),
        (lambda: rg_uniform_(torch.empty(2, 8, 8), groups=2), ValueError, r"rg_uniform_: tensor must have shape"),
        (
            lambda: sao_(torch.empty(8, 8, dtype=torch.int64), groups=2),
            TypeError,
            r"sao_: tensor must be a floating-point",
        ),
        (lambda: sao_(torch.empty(100, 100), sparsity=0.7), ValueError, r"sparsity=0.7 is not reachable for 100x100"),
        (
            lambda: sao_(torch.empty(100, 100), degree=3),
            ValueError,
            r"degree=3 is not reachable for 100x100.*does not divide 100",
        ),
        (lambda: sao_(torch.empty(100, 100), 0.5, degree=50), ValueError, r"exactly one.*sparsity and degree"),
        (lambda: sao_(torch.empty(100, 100)), ValueError, r"exactly one.*got none"),
        (lambda: sao_(torch.empty(100, 100), 1.0), ValueError, r"sparsity must be a float in \[0, 1\)"),
        (
            lambda: sao_(torch.empty(10, 8), groups=2, activation="relu"),
            ValueError,
            r"groups=2 .*10x8.*2 groups do not divide",
        ),
        (lambda: sao_(torch.empty(10, 9), groups=1, activation="relu"), ValueError, r"even sizes"),
        (
            lambda: sao_(torch.empty(100, 100), degree=2, activation="relu"),
            ValueError,
            r"degree 2 is below the minimum 4",
        ),
        (
            lambda: sao_(torch.empty(100, 100), degree=10, activation="relu", block_size=2),
            ValueError,
            r"degree=10 .*block_size=2 must divide",
        ),
        (
            lambda: sao_(torch.empty(100, 100), degree=1),
            ValueError,
            r"degree 1 is below the minimum 2 for activation='tanh'",
        ),
        (lambda: sao_(torch.empty(64, 64), groups=4, block_size=32), ValueError, r"block_size=32 must divide"),
        (lambda: sao_eco_(torch.empty(64, 64, 3, 3), groups=4, block_size=3), ValueError, r"block_size=3 must divide"),
        (
            lambda: rg_normal_(torch.empty(64, 60), groups=8),
            ValueError,
            r"groups=8 .*do not divide the smaller dimension 60",
        ),
    ],
)
def test_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_no_hang_on_reference_code_hanging_cases():
    """The paper's code loops forever when the degree does not divide L; ours raises."""
    code = (
        "import torch\n"
        "from sao_kernels.init import sao_\n"
        "from sao_kernels.sizes import resolve_sizes\n"
        "for call in (lambda: sao_(torch.empty(100, 100), sparsity=0.7),\n"
        "             lambda: sao_(torch.empty(100, 100), degree=3),\n"
        "             lambda: resolve_sizes(100, 100, sparsity=0.7),\n"
        "             lambda: resolve_sizes(100, 100, degree=3)):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ValueError:")]
    assert len(lines) == 4
    assert "sparsity=0.7" in lines[0] and "degree 30 does not divide 100" in lines[0]
    assert "degree=3" in lines[1] and "degree 3 does not divide 100" in lines[1]


def test_tile_as_wide_as_the_group_side_warns_and_the_stack_never_mixes():
    """b = group side on both dimensions: layers are permutations of whole groups, so a stack of
    them splits into G chains (the paper reproduction measured the accuracy cost)."""
    import warnings

    import sao_kernels as sk
    from sao_kernels import diagnostics as dg

    with pytest.warns(sk.DisconnectedTilesWarning, match="block_size=16 equals the group side"):
        layers = [sk.SAOLinear(64, 64, groups=4, block_size=16) for _ in range(4)]
    assert dg.connectivity(layers).full_depth is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", sk.DisconnectedTilesWarning)
        mixing = [sk.SAOLinear(64, 64, groups=4, block_size=8) for _ in range(6)]  # half the side: no warning
        sk.SAOLinear(64, 128, groups=4, block_size=16)  # one side has two tiles per group: mixes
    assert dg.connectivity(mixing).full_depth is not None
