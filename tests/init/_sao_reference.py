"""Independent re-derivations for the tests of sao_kernels.init (tests/init/test_sao.py,
test_baselines.py), and the cases they run on.

Structural claims are checked directly on the dense weight (or mask): row/column counts,
connected components of the bipartite mask graph (union-find), float64 Gram matrices.
Nothing here calls the code under test."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch


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
