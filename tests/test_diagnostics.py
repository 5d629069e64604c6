"""sao_kernels.diagnostics: Jacobian isometry, orthogonality, connectivity, spectral gaps."""

import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import diagnostics as dg


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- brute force
def _components_bfs(mask: np.ndarray) -> int:
    """Connected components of the bipartite graph of an (out, in) mask, by BFS."""
    m, n = mask.shape
    seen_out = np.zeros(m, bool)
    seen_in = np.zeros(n, bool)
    comps = 0
    for start in range(m + n):
        if (start < m and seen_out[start]) or (start >= m and seen_in[start - m]):
            continue
        comps += 1
        frontier_out = np.zeros(m, bool)
        frontier_in = np.zeros(n, bool)
        if start < m:
            frontier_out[start] = seen_out[start] = True
        else:
            frontier_in[start - m] = seen_in[start - m] = True
        while frontier_out.any() or frontier_in.any():
            new_in = mask[frontier_out].any(0) & ~seen_in
            new_out = mask[:, frontier_in].any(1) & ~seen_out
            seen_in |= new_in
            seen_out |= new_out
            frontier_in, frontier_out = new_in, new_out
    return comps


def _reach_brute(masks):
    """Boolean matrix products in numpy: reach[k] (in x out_k) after k+1 layers."""
    reach = np.eye(masks[0].shape[1], dtype=bool)
    out = []
    for mk in masks:
        reach = (reach.astype(np.int64) @ mk.T.astype(np.int64)) > 0
        out.append(reach.copy())
    return out


# ---------------------------------------------------------------- Jacobians
def test_orthogonal_dense_linear_net_is_isometric():
    g = _gen(1)
    layers = []
    for _ in range(4):
        lin = nn.Linear(32, 32).double()
        nn.init.orthogonal_(lin.weight, generator=g)
        layers.append(lin)
    net = nn.Sequential(*layers)
    sv = dg.jacobian_singular_values(net, torch.randn(5, 32, dtype=torch.float64, generator=g))
    assert sv.shape == (5, 32) and sv.dtype == torch.float64
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-12, rtol=0)


def test_deep_sao_linear_stack_is_isometric():
    g = _gen(2)
    net = nn.Sequential(
        *[
            sk.SAOLinear(64, 64, sparsity=0.875, activation="linear", generator=g, dtype=torch.float64)
            for _ in range(50)
        ]
    )
    sv = dg.jacobian_singular_values(net, torch.randn(3, 64, dtype=torch.float64, generator=g))
    assert sv.shape == (3, 64)
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-10, rtol=0)


def test_jacobian_rectangular_and_chunked_matches_jacrev_and_dense():
    g = _gen(3)
    net = nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 7)).double()
    x = torch.randn(4, 20, dtype=torch.float64, generator=g)
    a = dg.jacobian_singular_values(net, x, max_rows=6)  # several output chunks
    b = dg.jacobian_singular_values(net, x, method="jacrev")
    assert a.shape == (4, 7)
    torch.testing.assert_close(a, b)
    # and against the explicit product W2 diag(tanh') W1
    w1, w2 = net[0].weight, net[2].weight
    h = x @ w1.T + net[0].bias
    for i in range(4):
        jac = w2 @ torch.diag(1 - torch.tanh(h[i]) ** 2) @ w1
        torch.testing.assert_close(a[i], torch.linalg.svdvals(jac.detach()))


def test_jacobian_of_sao_matches_dense_equivalent():
    g = _gen(4)
    sao = nn.Sequential(
        sk.SAOLinear(48, 24, sparsity=0.5, generator=g, dtype=torch.float64),
        nn.Tanh(),
        sk.SAOLinear(24, 48, sparsity=0.75, generator=g, dtype=torch.float64),
    )
    dense = nn.Sequential(nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 48)).double()
    with torch.no_grad():
        for s, d in zip(sao[::2], dense[::2], strict=True):
            d.weight.copy_(s.dense_weight())
            d.bias.copy_(s.bias)
    x = torch.randn(3, 48, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        dg.jacobian_singular_values(sao, x), dg.jacobian_singular_values(dense, x, method="jacrev")
    )


def test_jacrev_through_sao_ops_matches_autograd():
    """The sao_kernels ops have functorch rules now: jacrev through them is exact."""
    g = _gen(14)
    net = nn.Sequential(
        sk.SAOLinear(16, 24, sparsity=0.5, generator=g, dtype=torch.float64),
        nn.Tanh(),
        sk.SAOLinear(24, 12, sparsity=0.5, generator=g, dtype=torch.float64),
    )
    x = torch.randn(3, 16, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        dg.jacobian_singular_values(net, x, method="jacrev"),
        dg.jacobian_singular_values(net, x),
        rtol=1e-12,
        atol=1e-12,
    )


class _NoFunctorch(torch.autograd.Function):
    """An old-style autograd.Function (forward takes ctx): torch.func cannot transform it."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_jacrev_through_an_op_without_functorch_rules_fails_with_a_clear_message():
    net = nn.Sequential(sk.SAOLinear(16, 16, sparsity=0.5, dtype=torch.float64), nn.Tanh())

    def model(v):
        return _NoFunctorch.apply(net(v))

    with pytest.raises(RuntimeError, match="method='autograd'"):
        dg.jacobian_singular_values(model, torch.randn(2, 16, dtype=torch.float64), method="jacrev")
    assert dg.jacobian_singular_values(model, torch.randn(2, 16, dtype=torch.float64)).shape == (2, 16)


def test_jacobian_of_a_conv_net_flattens_per_sample():
    g = _gen(5)
    net = nn.Sequential(sk.SAOConv2d(8, 8, 3, padding=1, sparsity=0.5, generator=g, dtype=torch.float64), nn.Tanh())
    sv = dg.jacobian_singular_values(net, torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=g))
    assert sv.shape == (2, 200)
    assert bool((sv[:, :-1] >= sv[:, 1:]).all())


def test_jacobian_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        dg.jacobian_singular_values(nn.Linear(3, 3), torch.randn(2, 3), method="jacfwd")
    with pytest.raises(ValueError, match="batch"):
        dg.jacobian_singular_values(nn.Linear(3, 3), torch.randn(3))


# ------------------------------------------------------------ orthogonality
def test_orthogonality_error_of_layers_and_tensors():
    g = _gen(6)
    assert dg.orthogonality_error(sk.SAOLinear(64, 128, sparsity=0.75, generator=g)) < 1e-5
    assert dg.orthogonality_error(sk.SAOLinear(128, 64, sparsity=0.75, generator=g)) < 1e-5  # out > in: W^T W
    lin = nn.Linear(32, 16)
    nn.init.orthogonal_(lin.weight, generator=g)
    assert dg.orthogonality_error(lin) < 1e-5
    assert dg.orthogonality_error(torch.eye(5)) == 0.0
    assert abs(dg.orthogonality_error(2.0 * torch.eye(5)) - 3.0) < 1e-12  # gain g: |g^2 - 1|
    blocks = sk.sao_blocks(32, 32, sparsity=0.5, generator=g, dtype=torch.float64)
    assert dg.orthogonality_error(blocks) < 1e-12
    # a random matrix is far from orthogonal
    assert dg.orthogonality_error(torch.randn(16, 16, generator=g)) > 0.5


def test_orthogonality_error_of_pruned_linear_sees_the_masked_weight():
    g = _gen(7)
    lin = nn.Linear(32, 32)
    nn.init.orthogonal_(lin.weight, generator=g)
    prune.random_unstructured(lin, "weight", amount=0.75)
    assert dg.orthogonality_error(lin) > 0.3  # pruning an orthogonal matrix breaks orthogonality


def test_orthogonality_error_of_convolutions():
    g = _gen(8)
    delta = sk.SAOConv2d(16, 16, 3, sparsity=0.75, init="delta", generator=g, dtype=torch.float64)
    eco = sk.SAOConv2d(16, 16, 3, sparsity=0.75, init="eco", generator=g, dtype=torch.float64)
    for layer in (delta, eco):
        assert dg.orthogonality_error(layer) < 1e-10  # (out, in*k*k) flattening, Parseval
    assert dg.orthogonality_error(delta, conv="centre") < 1e-10
    # SAO-Delta is an orthogonal operator on circular inputs of any size; SAO-ECO on the
    # kernel-size-periodic ones it is built for.
    assert dg.orthogonality_error(delta, conv="operator", input_size=8) < 1e-10
    assert dg.orthogonality_error(eco, conv="operator", input_size=3) < 1e-10
    # the operator check agrees with a brute-force circular convolution matrix
    w = eco.dense_weight().detach()
    n = 8
    basis = torch.eye(16 * n * n, dtype=torch.float64).view(-1, 16, n, n)
    with torch.no_grad():
        op = torch.nn.functional.conv2d(torch.nn.functional.pad(basis, (1, 1, 1, 1), mode="circular"), w)
    op = op.reshape(16 * n * n, -1)
    brute = float((op.T @ op - torch.eye(op.shape[1], dtype=torch.float64)).abs().max())
    spectral = dg.orthogonality_error(eco, conv="operator", input_size=n)
    # max-entry errors of the two bases differ, but both say "orthogonal" or both "not"
    assert (brute < 1e-8) == (spectral < 1e-8)
    # ECO's own setting: dilation n / k makes the kernel an orthogonal operator on n x n inputs
    assert dg.orthogonality_error(eco, conv="operator", input_size=9, dilation=3) < 1e-10
    assert dg.orthogonality_error(eco, conv="operator", input_size=9) > 1e-3  # the layer's dilation 1
    dil = sk.SAOConv2d(
        16,
        16,
        3,
        padding=3,
        dilation=3,
        padding_mode="circular",
        sparsity=0.75,
        init="eco",
        generator=g,
        dtype=torch.float64,
    )
    assert dg.orthogonality_error(dil, conv="operator", input_size=9) < 1e-10  # reads layer.dilation
    basis = torch.eye(16 * 81, dtype=torch.float64).view(-1, 16, 9, 9)
    with torch.no_grad():  # brute force: the circular dilated convolution as a matrix
        op = torch.nn.functional.conv2d(
            torch.nn.functional.pad(basis, (3, 3, 3, 3), mode="circular"), dil.dense_weight(), dilation=3
        ).reshape(16 * 81, -1)
    torch.testing.assert_close(op.T @ op, torch.eye(16 * 81, dtype=torch.float64))
    with pytest.raises(ValueError, match="input_size"):
        dg.orthogonality_error(eco, conv="operator")
    with pytest.raises(ValueError, match="dilated kernel"):
        dg.orthogonality_error(eco, conv="operator", input_size=4, dilation=2)
    with pytest.raises(ValueError, match="conv="):
        dg.orthogonality_error(eco, conv="nope")


# ------------------------------------------------------------- connectivity
@pytest.mark.parametrize("G", [2, 4, 8])
def test_single_sao_layer_has_G_components(G):
    layer = sk.SAOLinear(64, 32, groups=G, generator=_gen(G))
    mask = dg.layer_mask(layer).numpy()
    assert _components_bfs(mask) == G
    assert dg.spectral_gap(layer).components == G


def test_connectivity_matches_brute_force_on_random_stacks():
    g = _gen(9)
    rng = np.random.default_rng(0)
    widths = [24, 24, 16, 24, 24, 24, 24]
    masks = [rng.random((widths[i + 1], widths[i])) < 0.12 for i in range(len(widths) - 1)]
    got = dg.connectivity([torch.from_numpy(m) for m in masks])
    brute = _reach_brute(masks)
    assert got.fractions == pytest.approx([r.mean() for r in brute])
    assert got.min_fractions == pytest.approx([r.mean(1).min() for r in brute])
    expected_full = next((k + 1 for k, r in enumerate(brute) if r.all()), None)
    assert got.full_depth == expected_full
    # SAO stacks: the group path must agree with the same brute force
    for sp in (0.75, 0.875):
        layers = [sk.SAOLinear(32, 32, sparsity=sp, generator=g) for _ in range(6)]
        brute = _reach_brute([dg.layer_mask(layer).numpy() for layer in layers])
        got = dg.connectivity(layers)
        assert got.fractions == pytest.approx([r.mean() for r in brute])
        assert got.full_depth == next((k + 1 for k, r in enumerate(brute) if r.all()), None)
        assert got.fractions[0] == pytest.approx(1 - sp)


def test_connectivity_of_mixed_layer_kinds():
    g = _gen(10)
    pruned = nn.Linear(16, 32)
    prune.random_unstructured(pruned, "weight", amount=0.8)
    dense = nn.Linear(32, 32)
    conv = nn.Conv2d(32, 8, 3)
    stack = [sk.SAOLinear(16, 16, sparsity=0.75, generator=g), pruned, dense, conv]
    brute = _reach_brute([dg.layer_mask(layer).numpy() for layer in stack])
    got = dg.connectivity(stack)
    assert got.fractions == pytest.approx([r.mean() for r in brute])
    assert got.out_features == [16, 32, 32, 8]
    with pytest.raises(ValueError, match="inputs follows"):
        dg.connectivity([sk.SAOLinear(16, 16, sparsity=0.5), nn.Linear(8, 8)])


def test_block_diagonal_stack_never_connects():
    mask = torch.block_diag(*[torch.ones(4, 4, dtype=torch.bool)] * 4)
    got = dg.connectivity([mask] * 5)
    assert got.full_depth is None
    assert got.fractions == pytest.approx([0.25] * 5)


def test_connectivity_is_fast_at_width_4096():
    g = _gen(11)
    sizes = sk.resolve_sizes(4096, 4096, sparsity=0.875)
    layers = []
    for _ in range(10):  # the SAO topology only (no QR of the values): what connectivity reads
        out_index, in_index = sk.init.sao_topology(sizes, smaller_groups="contiguous", generator=g)
        layers.append(sk.GroupedBlockFormat(torch.zeros(8, 512, 512), in_index, out_index))
    t = time.perf_counter()
    got = dg.connectivity(layers)
    elapsed = time.perf_counter() - t
    assert got.fractions[0] == pytest.approx(0.125)
    assert got.full_depth == 2  # each input reaches 512 outputs, spread over all 8 groups of layer 2
    assert elapsed < 30.0  # ~0.3 s on 2 cores; a loose bound against pathological regressions


# ------------------------------------------------------------- spectral gap
def test_spectral_gap_of_one_sao_layer_is_disconnected_with_a_note():
    layer = sk.SAOLinear(64, 64, sparsity=0.75, generator=_gen(12))
    sg = dg.spectral_gap(layer)
    c = d = 16
    assert sg.components == 4 and sg.biregular
    assert sg.left_degree == c and sg.right_degree == d
    assert sg.sigma1 == pytest.approx(math.sqrt(c * d))
    assert sg.sigma2 == pytest.approx(sg.sigma1)
    assert sg.ramanujan_bound == pytest.approx(2 * math.sqrt(15))
    assert not sg.ramanujan
    assert "disconnected" in sg.note and "trivially" in sg.note and "stack_spectral_gap" in sg.note


def test_spectral_gap_of_connected_graphs():
    full = dg.spectral_gap(torch.ones(8, 8, dtype=torch.bool))  # K(8, 8): sigma2 = 0
    assert full.components == 1 and full.ramanujan and full.sigma2 == pytest.approx(0.0, abs=1e-9)
    assert "Ramanujan" in full.note
    rng = np.random.default_rng(1)
    sg = dg.spectral_gap(torch.from_numpy(rng.random((40, 40)) < 0.3))
    assert not sg.biregular and "irregular" in sg.note


def test_stack_spectral_gap_mixes_with_depth():
    g = _gen(13)
    layers = [sk.SAOLinear(64, 64, sparsity=0.75, generator=g) for _ in range(5)]
    st = dg.stack_spectral_gap(layers)
    assert st.exact
    assert st.sigma1 == pytest.approx([1.0] * 5)
    assert st.sigma2[0] == pytest.approx(1.0)  # one layer: disconnected
    assert all(b < a for a, b in zip(st.sigma2, st.sigma2[1:], strict=False))
    assert st.sigma2[-1] < 0.05
    assert st.layer_bounds[0] == pytest.approx(2 * math.sqrt(15) / 16)
    assert st.ramanujan_reference[1] == pytest.approx(st.layer_bounds[0] ** 2)
    # the group path agrees with the dense-mask path
    dense = dg.stack_spectral_gap([dg.layer_mask(layer) for layer in layers])
    assert dense.sigma2 == pytest.approx(st.sigma2, abs=1e-9)
    # low-rank estimate above max_exact
    approx = dg.stack_spectral_gap(layers, max_exact=16)
    assert not approx.exact
    assert approx.sigma2[1:3] == pytest.approx(st.sigma2[1:3], rel=0.05)
