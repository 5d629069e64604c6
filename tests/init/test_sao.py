"""sao_kernels.init: the SAO construction (linear layers, SAO-Delta and SAO-ECO convolutions),
its topology and tiles, reproducibility and dtypes.

Every structural claim is checked on the dense weight with the independent re-derivations of
tests/init/_sao_reference.py (and, for SAO-ECO, the Jacobian of a circular convolution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _sao_reference import (
    CASES,
    Case,
    check_groups,
    check_looks_linear,
    check_semi_orthogonal,
    check_smaller_rule,
    check_tiles,
    dense_from_blocks,
    gen,
)

from sao_kernels.init import (
    eco_frequency_pairs,
    rg_normal_,
    rg_uniform_,
    sao_,
    sao_blocks,
    sao_delta_,
    sao_eco_,
    sao_topology,
)
from sao_kernels.sizes import resolve_sizes


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


# ====================================================== tiles as wide as a group
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
