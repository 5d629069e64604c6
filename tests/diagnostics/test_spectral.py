"""sao_kernels.diagnostics.spectral: spectral gaps of one layer and of a stack.

``spectral_gap`` of an SAO layer is read in closed form (a 4096 x 4096 layer took 432 s of
dense SVD) and other masks are solved per connected component, with a refusal above
``max_exact``; which routine ran is checked, never the wall clock.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sao_kernels as sk
from sao_kernels import diagnostics as dg

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- spectral gap
def test_spectral_gap_of_one_sao_layer_is_disconnected_with_a_note():
    layer = sk.SAOLinear(64, 64, sparsity=0.75, generator=gen(12))
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
    g = gen(13)
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


# ------------------------------------------- cost: closed form, one component at a time
@pytest.fixture
def no_dense_svd(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dense decomposition ran")

    for name in ("svdvals", "eigvalsh", "svd"):
        monkeypatch.setattr(torch.linalg, name, refuse)


def sao_format(width, groups, seed=0):
    """An SAO layer's topology without drawing its values (zeros)."""
    sizes = sk.resolve_sizes(width, width, groups=groups)
    out_index, in_index = sk.init.sao_topology(sizes, smaller_groups="contiguous", generator=gen(seed))
    return sk.GroupedBlockFormat(torch.zeros(groups, width // groups, width // groups), in_index, out_index)


def test_spectral_gap_of_a_4096_sao_layer_is_closed_form(no_dense_svd):
    sg = dg.spectral_gap(sao_format(4096, 8))
    assert sg.sigma1 == sg.sigma2 == 512.0 and sg.components == 8 and not sg.ramanujan
    assert sg.left_degree == sg.right_degree == 512 and sg.biregular
    assert "appears 8 times" in sg.note and "Every other singular value is 0" in sg.note


@pytest.mark.parametrize("shape,groups", [((24, 48), 4), ((48, 24), 3), ((32, 32), 1), ((30, 30), 15)])
def test_closed_form_equals_the_dense_mask_path(shape, groups):
    layer = sk.SAOLinear(shape[1], shape[0], groups=groups, generator=gen(3))
    closed = dg.spectral_gap(layer)
    dense = dg.spectral_gap(dg.layer_mask(layer))
    for field in ("sigma1", "sigma2", "ramanujan_bound", "left_degree", "right_degree"):
        assert getattr(closed, field) == pytest.approx(getattr(dense, field), rel=1e-12, abs=1e-9), field
    assert (closed.components, closed.ramanujan, closed.biregular) == (
        dense.components,
        dense.ramanujan,
        dense.biregular,
    )


def test_components_are_solved_separately_and_match_a_full_svd():
    rng = torch.Generator().manual_seed(4)
    parts = [torch.rand(r, c, generator=rng) < 0.6 for r, c in [(20, 30), (7, 5), (40, 40)]]
    mask = torch.block_diag(*parts)
    perm_r, perm_c = torch.randperm(mask.shape[0], generator=rng), torch.randperm(mask.shape[1], generator=rng)
    mask = mask[perm_r][:, perm_c]
    full = torch.linalg.svdvals(mask.to(F64))
    sg = dg.spectral_gap(mask)
    assert sg.sigma1 == pytest.approx(float(full[0]), rel=1e-12)
    assert sg.sigma2 == pytest.approx(float(full[1]), rel=1e-12)
    assert sg.components == dg.spectral_gap(mask, max_exact=4096).components


def test_large_component_uses_the_gram_path_exactly(monkeypatch):
    """A connected 1100 x 1200 mask (smaller side > 1024): eigenvalues of the Gram matrix."""
    mask = torch.rand(1100, 1200, generator=gen(5)) < 0.05
    calls = []
    inner = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda a: calls.append(a.shape) or inner(a))
    sg = dg.spectral_gap(mask)
    assert calls == [(1100, 1100)]
    monkeypatch.undo()
    full = torch.linalg.svdvals(mask.to(F64))
    assert sg.sigma1 == pytest.approx(float(full[0]), rel=1e-10)
    assert sg.sigma2 == pytest.approx(float(full[1]), rel=1e-10)
    assert sg.components == 1


def test_component_above_max_exact_is_refused():
    mask = torch.ones(64, 80, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"connected component of 64 x 80 .*64 x 64 Gram matrix.*above max_exact=16"):
        dg.spectral_gap(mask, max_exact=16)
    with pytest.raises(ValueError, match="max_exact must be a positive int"):
        dg.spectral_gap(mask, max_exact=0)
    # a block-diagonal mask whose blocks fit is fine at the same limit
    assert dg.spectral_gap(torch.block_diag(*[torch.ones(8, 8, dtype=torch.bool)] * 8), max_exact=16).components == 8


def test_stack_spectral_gap_reads_sao_degrees_without_dense_masks(monkeypatch):
    layers = [sao_format(64, 4, seed) for seed in range(3)]
    from sao_kernels.diagnostics import graphs

    monkeypatch.setattr(graphs.Topology, "dense", lambda self: (_ for _ in ()).throw(AssertionError("dense mask")))
    st = dg.stack_spectral_gap(layers)
    assert st.layer_bounds[0] == pytest.approx(2 * math.sqrt(15) / 16)
    assert st.sigma2[0] == pytest.approx(1.0)
