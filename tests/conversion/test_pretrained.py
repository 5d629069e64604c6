"""Keeping trained weights: the topology search, its values, and convert(keep_weights=True)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import pretrained
from sao_kernels.init import sao_blocks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_mean(weight: torch.Tensor, G: int, b: int = 1, draws: int = 20) -> float:
    E = pretrained.energy_matrix(weight)
    Et = E.view(E.shape[0] // b, b, E.shape[1] // b, b).sum((1, 3))
    g = _gen(123)
    kept = [
        pretrained.partition_energy(
            Et, pretrained.random_partition(Et.shape[0], G, g), pretrained.random_partition(Et.shape[1], G, g), G
        )
        for _ in range(draws)
    ]
    return float(np.mean(kept)) / float(E.sum())


def _check_balanced(out_index, in_index, m, n, G, b):
    """Both are permutations made of aligned runs of b (the format's own checks) and the
    groups have m/G and n/G features."""
    values = torch.zeros(G, m // G, n // G, dtype=torch.float64)
    blocks = sk.GroupedBlockFormat(values, in_index, out_index, b)  # raises when not
    assert blocks.mask().sum() == m * n // G
    assert (blocks.mask().sum(1) == n // G).all() and (blocks.mask().sum(0) == m // G).all()


@pytest.mark.parametrize(
    "m, n, G, b", [(96, 64, 4, 1), (64, 96, 4, 1), (48, 48, 3, 1), (64, 128, 8, 1), (64, 128, 4, 4), (128, 64, 2, 8)]
)
def test_recovers_a_permuted_block_diagonal(m, n, G, b):
    """A weight that IS SAO-structured (any permutation, random values) is kept whole."""
    blocks = sao_blocks(m, n, groups=G, init="rg-n", block_size=b, generator=_gen(1), dtype=torch.float64)
    # scramble both sides with aligned tile permutations, so the groups are not contiguous
    g = _gen(2)
    rows = (torch.randperm(m // b, generator=g)[:, None] * b + torch.arange(b)).flatten()
    cols = (torch.randperm(n // b, generator=g)[:, None] * b + torch.arange(b)).flatten()
    weight = blocks.to_dense()[rows][:, cols]
    out_index, in_index, retained = pretrained.fit_topology(weight, G, block_size=b, generator=_gen(3))
    assert retained == pytest.approx(1.0, abs=1e-12)
    _check_balanced(out_index, in_index, m, n, G, b)
    kept, frac = pretrained.trained_blocks(weight, G, block_size=b, generator=_gen(3))
    torch.testing.assert_close(kept.to_dense(), weight, rtol=0, atol=0)
    assert frac == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["random", "low-rank", "heavy-tailed"])
@pytest.mark.parametrize("G, b", [(2, 1), (4, 1), (8, 1), (4, 2)])
def test_beats_random_partitions(kind, G, b):
    g = _gen(5)
    m, n = 128, 64
    if kind == "random":
        w = torch.randn(m, n, generator=g, dtype=torch.float64)
    elif kind == "low-rank":
        w = torch.randn(m, 4, generator=g, dtype=torch.float64) @ torch.randn(4, n, generator=g, dtype=torch.float64)
    else:
        w = torch.distributions.StudentT(2.0).sample((m, n)).to(torch.float64)
    out_index, in_index, retained = pretrained.fit_topology(w, G, block_size=b, generator=_gen(6))
    _check_balanced(out_index, in_index, m, n, G, b)
    assert retained >= _random_mean(w, G, b)
    assert retained <= 1.0 + 1e-12
    # the reported fraction is the energy under the returned mask
    mask = sk.GroupedBlockFormat(torch.zeros(G, m // G, n // G), in_index, out_index, b).mask()
    assert retained == pytest.approx(float((w * mask).square().sum() / w.square().sum()), rel=1e-12)


def test_exact_and_greedy_assignment_are_balanced_and_close():
    rng = np.random.default_rng(0)
    score = rng.random((120, 4))
    exact, greedy = pretrained._assign_exact(score, 30), pretrained._assign_greedy(score, 30)
    for labels in (exact, greedy):
        assert np.bincount(labels, minlength=4).tolist() == [30] * 4
    best = score[np.arange(120), exact].sum()
    # exact is optimal; the heuristic is close to it
    assert best >= score[np.arange(120), greedy].sum() >= 0.999 * best
    # the exact solve beats every single swap of its solution
    for i, j in [(0, 1), (5, 77), (10, 119)]:
        swapped = exact.copy()
        swapped[[i, j]] = swapped[[j, i]]
        assert best >= score[np.arange(120), swapped].sum() - 1e-12


def test_deterministic_given_a_generator():
    w = torch.randn(64, 32, generator=_gen(0))
    a = pretrained.fit_topology(w, 4, generator=_gen(9))
    b = pretrained.fit_topology(w, 4, generator=_gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_zero_weight_and_bad_arguments():
    out_index, in_index, retained = pretrained.fit_topology(torch.zeros(8, 4), 2)
    assert retained == 1.0
    _check_balanced(out_index, in_index, 8, 4, 2, 1)
    with pytest.raises(ValueError, match="must divide both sides"):
        pretrained.fit_topology(torch.randn(8, 6), 4)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        pretrained.fit_topology(torch.randn(8, 8), 0)
    with pytest.raises(ValueError, match="meta device"):
        pretrained.fit_topology(torch.empty(8, 8, device="meta"), 2)
    with pytest.raises(ValueError, match="orthogonal_scale"):
        pretrained.orthogonalize_blocks(torch.randn(2, 3, 3), "spectral")


@pytest.mark.parametrize("scale", ["norm", "nearest"])
@pytest.mark.parametrize("shape", [(4, 6, 12), (4, 12, 6), (2, 3, 4, 3, 3)])
def test_orthogonalize_gives_scaled_orthonormal_blocks(shape, scale):
    values = torch.randn(shape, generator=_gen(0), dtype=torch.float64)
    q = pretrained.orthogonalize_blocks(values, scale)
    G, a = shape[:2]
    B, Q = values.reshape(G, a, -1), q.reshape(G, a, -1)
    k = min(B.shape[1:])
    s = torch.linalg.svdvals(B)
    alpha = B.norm(dim=(1, 2)) / k**0.5 if scale == "norm" else s.mean(-1)
    gram = Q @ Q.mT if B.shape[1] <= B.shape[2] else Q.mT @ Q
    torch.testing.assert_close(gram, alpha[:, None, None] ** 2 * torch.eye(k, dtype=torch.float64).expand(G, k, k))
    if scale == "norm":
        torch.testing.assert_close(Q.norm(dim=(1, 2)), B.norm(dim=(1, 2)))
    else:  # the nearest scaled orthogonal matrix: no other scale of the polar factor is closer
        for f in (0.9, 1.1):
            assert ((B - Q) ** 2).sum() < ((B - f * Q) ** 2).sum()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 16)
    ).double()


@pytest.mark.parametrize("orthogonalize", [False, True])
def test_convert_keep_weights_forward_equals_masked_dense(orthogonalize):
    model = _model()
    dense = {name: m.weight.detach().clone() for name, m in model.named_modules() if hasattr(m, "weight")}
    biases = {name: m.bias for name, m in model.named_modules() if hasattr(m, "bias")}
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64, generator=_gen(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ReinitializedWarning: nothing was re-initialised
        sparse = sk.convert(model, groups=4, keep_weights=True, orthogonalize=orthogonalize, generator=_gen(0))
    report = pretrained.retained_energy(sparse)
    assert sorted(report) == ["0", "3", "5"]
    # the masked-dense reference: the original weights on each layer's mask (or the
    # orthogonalised blocks), run through the dense modules
    ref = _model()
    for name, layer in sparse.named_modules():
        if isinstance(layer, (sk.SAOLinear, sk.SAOConv2d)):
            assert layer.bias is biases[name]  # the very Parameter
            mask = layer.blocks().mask()
            w = dense[name]
            kept = w * (mask[:, :, None, None] if w.dim() == 4 else mask)
            energy = float(kept.square().sum() / w.square().sum())
            assert report[name] == pytest.approx(energy, rel=1e-12)
            assert report[name] >= _random_mean(w, 4)
            if orthogonalize:
                kept = layer.dense_weight().detach()
                v = layer.values.detach().reshape(4, layer.values.shape[1], -1)
                assert torch.allclose(v @ v.mT, (v @ v.mT).diagonal(dim1=1, dim2=2).diag_embed(), atol=1e-10)
            else:
                torch.testing.assert_close(layer.dense_weight().detach(), kept, rtol=0, atol=0)
            with torch.no_grad():
                getattr(ref, name).weight.copy_(kept)
    torch.testing.assert_close(sparse(x), ref(x))


def test_convert_keep_weights_arguments():
    with pytest.raises(TypeError, match="keep_weights must be a bool"):
        sk.convert(_model(), groups=2, keep_weights=1)
    with pytest.raises(ValueError, match="orthogonalize=True needs keep_weights=True"):
        sk.convert(_model(), groups=2, orthogonalize=True)
    with torch.device("meta"):
        meta = nn.Linear(8, 8)
    with pytest.raises(ValueError, match="meta device"):
        sk.convert(meta, groups=2, keep_weights=True)
    # an unreachable G is left dense with a warning, as without keep_weights
    with pytest.warns(UserWarning, match="left .* dense"):
        out = sk.convert(nn.Sequential(nn.Linear(6, 6)), groups=4, keep_weights=True)
    assert isinstance(out[0], nn.Linear)
    # a fresh convert: nothing kept, nothing reported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pretrained.retained_energy(sk.convert(_model(), groups=2)) == {}


def test_keep_weights_block_size_and_state_dict_round_trip():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 32))
    sparse = sk.convert(model, groups=4, block_size=4, keep_weights=True, generator=_gen(0))
    for layer in (sparse[0], sparse[2]):
        assert layer.block_size == 4
        _check_balanced(layer.out_index, layer.in_index, layer.out_features, layer.in_features, 4, 4)
    twin = nn.Sequential(
        sk.SAOLinear(32, 64, groups=4, block_size=4), nn.Tanh(), sk.SAOLinear(64, 32, groups=4, block_size=4)
    )
    twin.load_state_dict(sparse.state_dict())
    x = torch.randn(5, 32)
    torch.testing.assert_close(twin(x), sparse(x))


def test_random_blocks_baseline():
    w = torch.randn(32, 16, generator=_gen(0), dtype=torch.float64)
    blocks, retained = pretrained.random_blocks(w, 4, block_size=2, generator=_gen(1))
    _check_balanced(blocks.out_index, blocks.in_index, 32, 16, 4, 2)
    mask = blocks.mask()
    torch.testing.assert_close(blocks.to_dense(), w * mask, rtol=0, atol=0)
    assert retained == pytest.approx(float((w * mask).square().sum() / w.square().sum()), rel=1e-12)
    assert pretrained.fit_topology(w, 4, block_size=2, generator=_gen(1))[2] >= retained


def test_docs_snippet_runs():
    """The Python block of docs/pretrained.md runs as written (in a fresh interpreter)."""
    import os
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    (code,) = re.findall(r"^```python\n(.*?)^```", (root / "docs" / "pretrained.md").read_text(), flags=re.S | re.M)
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("path", ["greedy above EXACT_MAX_ITEMS", "no scipy"])
def test_heuristic_assignment_paths(monkeypatch, path):
    """The heuristic path (large layers, or scipy missing) still recovers block structure,
    keeps the balance, and beats random partitions."""
    if path == "no scipy":

        def missing(score, cap):
            raise ImportError("scipy")

        monkeypatch.setattr(pretrained, "_assign_exact", missing)
    else:
        monkeypatch.setattr(pretrained, "EXACT_MAX_ITEMS", 4)
    blocks = sao_blocks(64, 96, groups=4, init="rg-n", generator=_gen(1), dtype=torch.float64)
    perm = torch.randperm(64, generator=_gen(2))
    weight = blocks.to_dense()[perm]
    out_index, in_index, retained = pretrained.fit_topology(weight, 4, generator=_gen(3))
    assert retained == pytest.approx(1.0, abs=1e-12)
    w = torch.randn(64, 96, generator=_gen(4), dtype=torch.float64)
    out_index, in_index, retained = pretrained.fit_topology(w, 4, generator=_gen(3))
    _check_balanced(out_index, in_index, 64, 96, 4, 1)
    assert retained > _random_mean(w, 4)
