"""sao_kernels.diagnostics.graphs: connectivity of layer stacks, against a brute-force
breadth-first search on the dense masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import diagnostics as dg


def gen(seed=0):
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


# ------------------------------------------------------------- connectivity
@pytest.mark.parametrize("G", [2, 4, 8])
def test_single_sao_layer_has_G_components(G):
    layer = sk.SAOLinear(64, 32, groups=G, generator=gen(G))
    mask = dg.layer_mask(layer).numpy()
    assert _components_bfs(mask) == G
    assert dg.spectral_gap(layer).components == G


def test_connectivity_matches_brute_force_on_random_stacks():
    g = gen(9)
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
    g = gen(10)
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


def test_connectivity_at_width_4096():
    g = gen(11)
    sizes = sk.resolve_sizes(4096, 4096, sparsity=0.875)
    layers = []
    for _ in range(10):  # the SAO topology only (no QR of the values): what connectivity reads
        out_index, in_index = sk.init.sao_topology(sizes, smaller_groups="contiguous", generator=g)
        layers.append(sk.GroupedBlockFormat(torch.zeros(8, 512, 512), in_index, out_index))
    got = dg.connectivity(layers)  # group-level reachability: no 4096 x 4096 mask (no timing bound in tests)
    assert got.fractions[0] == pytest.approx(0.125)
    assert got.full_depth == 2  # each input reaches 512 outputs, spread over all 8 groups of layer 2
