"""Keep a trained weight: the SAO topology that retains the most of it, and its blocks.

An SAO mask M of a weight W (m, n) splits the rows into G groups of m/G and the columns
into G groups of n/G; group g keeps the pairs (rows of g) x (columns of g).  Keeping W's
values on M retains the energy ``||W * M||_F^2``; we choose M to maximise it.  With
E = W∘W (a convolution: summed over its taps, the mask is on channel pairs) and row / column
labels r, c, the objective is

    sum_g sum_{i: r(i)=g} sum_{j: c(j)=g} E[i, j]

a balanced co-clustering (block-diagonalisation) problem, NP-hard in general.  The method:

1. **Best responses are exact.**  Given the column labels, the best row labels solve a
   balanced assignment: row i earns ``S[i, g] = sum_{j: c(j)=g} E[i, j]`` in group g and
   each group takes exactly m/G rows, a transportation problem solved exactly as a linear
   assignment (``scipy.optimize.linear_sum_assignment`` on S with each group's column
   repeated m/G times).  Columns given rows likewise.  Alternating the two never lowers the
   objective, so it stops at a partition neither side can improve alone (a few iterations).
   Above ``EXACT_MAX_ITEMS`` items (where the exact solve gets slow), or without scipy, the
   assignment is a regret-ordered greedy followed by pairwise swap improvement between every
   two groups (exact for G = 2, 2-exchange optimal otherwise).
2. **Starts.**  Alternation finds a local optimum, so it is started several times and the
   best result kept: one spectral start (Dhillon's bipartite spectral co-clustering: the
   top-G singular vectors of D_r^-1/2 E D_c^-1/2 embed the rows; a balanced k-means on
   that embedding, with the same exact assignment step, gives the first row labels) and
   ``restarts - 1`` random balanced row partitions drawn from ``generator``.  For a weight
   that *is* a permuted block diagonal, the spectral start already separates the blocks
   (the embedding is constant on each block) and retention is 1.0.
3. **Tiles.**  With ``block_size`` b the items are tiles of b consecutive rows / columns
   (E summed over each b x b tile): the same problem on (m/b, n/b), so the result is a valid
   layer at that block size.

Values are W's entries on the chosen blocks.  With ``orthogonalize`` each block B (a, c) --
a convolution's flattened to (a, c*kh*kw) -- is replaced by ``alpha * U V^T`` (its polar
factor: the nearest semi-orthogonal matrix in Frobenius norm, rows orthonormal when a <= c)
with ``alpha = ||B||_F / sqrt(min(a, c))`` ("norm", default): the block keeps its Frobenius
norm, so the layer keeps its output energy on isotropic inputs (what the SAO initialisation
preserves) and the retained energy is unchanged.  ``orthogonal_scale="nearest"`` takes
``alpha = mean singular value``, which makes ``alpha U V^T`` the Frobenius-nearest *scaled*
semi-orthogonal matrix to B (minimising ||B - alpha Q|| over alpha and Q jointly); it is
smaller than "norm" whenever the singular values differ.

Cost (2-core CPU): a 768 x 3072 weight at G = 4 takes a few seconds (see EXACT_MAX_ITEMS).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_generator, is_int
from .format import GroupedBlockFormat

__all__ = [
    "EXACT_MAX_ITEMS",
    "ORTHOGONAL_SCALES",
    "energy_matrix",
    "fit_topology",
    "orthogonalize_blocks",
    "partition_energy",
    "random_blocks",
    "random_partition",
    "retained_energy",
    "trained_blocks",
    "trained_layer",
]

# Above this many items (row or column tiles) an assignment step uses the greedy + swap
# heuristic: the exact solve grows about cubically and slows down on the ties of low-rank
# weights (0.2 s at 768 items, 0.2-1.1 s at 3072, G = 4, on the 2-core CPU) while the
# heuristic takes 14 ms at 3072 items and came within 0.001 % of the exact optimum on
# random scores (600 items, G = 4).
EXACT_MAX_ITEMS = 256
# Alternation stops when a round gains less than this fraction of the kept energy.
REL_TOL = 1e-6
ORTHOGONAL_SCALES = ("norm", "nearest")
_KMEANS_ITERS = 10


# --------------------------------------------------------------------------- energy
def energy_matrix(weight: Tensor) -> Tensor:
    """(m, n) float64 energy of each (out, in) pair: W**2, summed over a convolution's taps."""
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() not in (2, 4):
        got = f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}"
        raise ValueError(f"weight must be a floating tensor of shape (m, n) or (m, n, kh, kw), got {got}")
    if weight.is_meta:
        raise ValueError("weight is on the meta device: there are no trained values to keep")
    e = weight.detach().to(device="cpu", dtype=torch.float64).square()
    return e.flatten(2).sum(-1) if e.dim() == 4 else e


def _tile_energy(energy: Tensor, block_size: int) -> Tensor:
    m, n = energy.shape
    b = block_size
    return energy.view(m // b, b, n // b, b).sum((1, 3))


def partition_energy(energy: Tensor, row_labels: Tensor, col_labels: Tensor, groups: int) -> float:
    """Energy kept by the partition: sum of ``energy[i, j]`` over pairs with equal labels."""
    rows = torch.nn.functional.one_hot(row_labels, groups).to(energy.dtype)
    cols = torch.nn.functional.one_hot(col_labels, groups).to(energy.dtype)
    return float((rows.T @ energy @ cols).diagonal().sum())


def random_partition(items: int, groups: int, generator: torch.Generator | None = None) -> Tensor:
    """Balanced random labels: ``items / groups`` items per group, uniformly at random."""
    perm = torch.randperm(items, generator=generator)
    labels = torch.empty(items, dtype=torch.int64)
    labels[perm] = torch.arange(items) // (items // groups)
    return labels


# ------------------------------------------------------------------------ assignment
def _assign_exact(score: np.ndarray, cap: int) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    _, slot = linear_sum_assignment(np.repeat(score, cap, axis=1), maximize=True)
    return slot // cap


def _assign_greedy(score: np.ndarray, cap: int) -> np.ndarray:
    """Regret-ordered greedy, then pairwise swaps while any swap gains."""
    N, G = score.shape
    order_g = np.argsort(-score, axis=1)
    top = np.take_along_axis(score, order_g[:, :2], axis=1) if G > 1 else score[:, :1].repeat(2, 1)
    labels = np.full(N, -1)
    room = np.full(G, cap)
    tol = 1e-12 * (float(np.abs(score).max()) + 1e-300)
    for i in np.argsort(-(top[:, 0] - top[:, 1]), kind="stable"):
        g = next(g for g in order_g[i] if room[g])
        labels[i], room[g] = g, room[g] - 1
    for _ in range(100):
        swapped = False
        for g in range(G):
            for h in range(g + 1, G):
                ig, ih = np.flatnonzero(labels == g), np.flatnonzero(labels == h)
                dg = score[ig, h] - score[ig, g]  # gain of moving each of g's items to h
                dh = score[ih, g] - score[ih, h]
                og, oh = np.argsort(-dg, kind="stable"), np.argsort(-dh, kind="stable")
                # pairing the best mover of each side: the pair gains are non-increasing
                k = int(np.sum(dg[og] + dh[oh] > tol))
                if k:
                    labels[ig[og[:k]]], labels[ih[oh[:k]]] = h, g
                    swapped = True
        if not swapped:
            break
    return labels


def _assign(score: np.ndarray, cap: int) -> np.ndarray:
    """Labels maximising sum score[i, label[i]] with exactly ``cap`` items per label."""
    if score.shape[1] == 1:
        return np.zeros(score.shape[0], dtype=np.int64)
    if score.shape[0] <= EXACT_MAX_ITEMS:
        try:
            return _assign_exact(score, cap)
        except ImportError:
            pass
    return _assign_greedy(score, cap)


# ------------------------------------------------------------------------- the search
def _onehot(labels: np.ndarray, G: int) -> np.ndarray:
    out = np.zeros((labels.size, G))
    out[np.arange(labels.size), labels] = 1.0
    return out


def _alternate(E: np.ndarray, rows: np.ndarray, G: int, max_iters: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Best responses from row labels ``rows`` until the kept energy stops rising."""
    R, C = E.shape
    best = (-math.inf, rows, None)
    for _ in range(max_iters):
        cols = _assign(E.T @ _onehot(rows, G), C // G)
        score = E @ _onehot(cols, G)
        rows = _assign(score, R // G)
        kept = float(score[np.arange(R), rows].sum())
        if kept <= best[0]:
            break
        gain = kept - best[0]
        best = (kept, rows, cols)
        if gain <= REL_TOL * kept:
            break
    return best


def _top_singular(A: Tensor, k: int, rng: np.random.Generator, iters: int = 8) -> tuple[Tensor, Tensor]:
    """Top-k left singular vectors and values of A by randomised subspace iteration
    (Halko et al. 2011; oversampled by 8), drawn from ``rng``: O(R C k) per iteration where a
    full SVD or eigendecomposition of a 768-wide Gram matrix took seconds here."""
    q = min(k + 8, *A.shape)
    Y = A @ torch.from_numpy(rng.standard_normal((A.shape[1], q)))
    for _ in range(iters):
        Y = A @ (A.T @ torch.linalg.qr(Y).Q)
    Q = torch.linalg.qr(Y).Q
    Ub, S, _ = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return (Q @ Ub)[:, :k], S[:k]


def _spectral_rows(E: np.ndarray, G: int, rng: np.random.Generator) -> np.ndarray:
    """Row labels from a balanced k-means on the bipartite spectral embedding."""
    R = E.shape[0]
    dr = 1.0 / np.sqrt(E.sum(1) + 1e-300)
    dc = 1.0 / np.sqrt(E.sum(0) + 1e-300)
    A = torch.from_numpy(dr[:, None] * E * dc[None, :])
    u, s = _top_singular(A, G, rng)
    z = dr[:, None] * (u * s).numpy()
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-300)
    # k-means++ seeding, then Lloyd steps whose assignment is balanced.
    centres = [z[rng.integers(R)]]
    for _ in range(1, G):
        d2 = np.min([np.sum((z - c) ** 2, 1) for c in centres], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(R, 1.0 / R)
        centres.append(z[rng.choice(R, p=p)])
    c = np.stack(centres)
    labels = np.zeros(R, dtype=np.int64)
    for _ in range(_KMEANS_ITERS):
        new = _assign(-((z[:, None, :] - c[None]) ** 2).sum(-1), R // G)
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([z[labels == g].mean(0) for g in range(G)])
    return labels


def fit_topology(
    weight: Tensor,
    groups: int,
    *,
    block_size: int = 1,
    restarts: int = 4,
    max_iters: int = 30,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float]:
    """The SAO partition of ``weight`` that keeps the most energy (see the module docstring).

    Args:
        weight: (m, n) or (m, n, kh, kw); G and ``block_size`` must divide the sides:
            ``m % (G * b) == 0`` and ``n % (G * b) == 0``.
        groups: G.  restarts: starts (the spectral one plus ``restarts - 1`` random ones).
        max_iters: alternation steps per start (it usually stops after a few).
        generator: the random starts' and k-means seeding's source (deterministic given it).

    Returns:
        (out_index (m,), in_index (n,), retained): int64 indices in group order (features
        ascending within a group), and the retained energy fraction ||W*M||^2 / ||W||^2
        (1.0 for a zero weight).
    """
    E = energy_matrix(weight)
    m, n = E.shape
    for arg, value, lo in (("groups", groups, 1), ("block_size", block_size, 1), ("restarts", restarts, 1)):
        if not is_int(value) or value < lo:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if not is_int(max_iters) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    check_generator(generator)
    G, b = int(groups), int(block_size)
    if m % (G * b) or n % (G * b):
        raise ValueError(f"groups={G} x block_size={b} must divide both sides of the {m}x{n} weight")
    Et = _tile_energy(E, b).numpy()
    total = float(Et.sum())
    R, C = Et.shape
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    if G == 1 or total == 0.0:
        rows, cols, kept = np.zeros(R, dtype=np.int64), np.zeros(C, dtype=np.int64), total
        if total == 0.0:  # nothing to keep: any balanced partition
            rows, cols = np.arange(R) // (R // G), np.arange(C) // (C // G)
    else:
        starts = [_spectral_rows(Et, G, rng)] + [rng.permutation(R) // (R // G) for _ in range(restarts - 1)]
        kept, rows, cols = max((_alternate(Et, s, G, max_iters) for s in starts), key=lambda t: t[0])
    out_index = _index_from_labels(torch.from_numpy(np.asarray(rows)), b)
    in_index = _index_from_labels(torch.from_numpy(np.asarray(cols)), b)
    return out_index, in_index, (kept / total if total > 0 else 1.0)


def _index_from_labels(tile_labels: Tensor, b: int) -> Tensor:
    """Features in group order (groups by label, features ascending) from tile labels."""
    labels = tile_labels.to(torch.int64).repeat_interleave(b)
    n = labels.numel()
    return torch.argsort(labels * n + torch.arange(n))


# ---------------------------------------------------------------------------- values
def orthogonalize_blocks(values: Tensor, scale: str = "norm") -> Tensor:
    """Each block (a, c[, kh, kw]) replaced by ``alpha * U V^T`` (the polar factor of the
    block flattened to (a, c*kh*kw)); ``scale`` "norm": alpha = ||B||_F / sqrt(min side)
    (the block's Frobenius norm is kept) or "nearest": alpha = mean singular value (the
    Frobenius-nearest scaled semi-orthogonal matrix).  Computed in float64."""
    if not isinstance(scale, str) or scale not in ORTHOGONAL_SCALES:
        allowed = ", ".join(map(repr, ORTHOGONAL_SCALES))
        raise ValueError(f"orthogonal_scale={scale!r} is not supported; allowed: {allowed}")
    G, a = values.shape[:2]
    B = values.detach().to(torch.float64).reshape(G, a, -1)
    U, S, Vh = torch.linalg.svd(B, full_matrices=False)
    k = S.shape[-1]
    alpha = S.square().sum(-1).sqrt() / math.sqrt(k) if scale == "norm" else S.mean(-1)
    Q = alpha[:, None, None] * (U @ Vh)
    return Q.reshape(values.shape).to(values.dtype)


def trained_blocks(
    weight: Tensor,
    groups: int,
    *,
    block_size: int = 1,
    orthogonalize: bool = False,
    orthogonal_scale: str = "norm",
    restarts: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[GroupedBlockFormat, float]:
    """(blocks, retained energy fraction): ``weight``'s values on the topology of
    :func:`fit_topology`, optionally orthogonalised (:func:`orthogonalize_blocks`); on the
    weight's device and dtype."""
    if not isinstance(orthogonalize, bool):
        raise TypeError(f"orthogonalize must be a bool, got {orthogonalize!r}")
    out_index, in_index, retained = fit_topology(
        weight, groups, block_size=block_size, restarts=restarts, generator=generator
    )
    G = int(groups)
    m, n = weight.shape[:2]
    out_index, in_index = out_index.to(weight.device), in_index.to(weight.device)
    values = weight.detach()[out_index.view(G, m // G, 1), in_index.view(G, 1, n // G)].contiguous()
    if orthogonalize:
        values = orthogonalize_blocks(values, orthogonal_scale)
    return GroupedBlockFormat(values, in_index, out_index, int(block_size)), retained


def random_blocks(
    weight: Tensor, groups: int, *, block_size: int = 1, generator: torch.Generator | None = None
) -> tuple[GroupedBlockFormat, float]:
    """The baseline of :func:`trained_blocks`: ``weight``'s values on a uniformly random
    balanced partition of its row and column tiles; (blocks, retained energy fraction)."""
    E = energy_matrix(weight)
    m, n = E.shape
    G, b = int(groups), int(block_size)
    if m % (G * b) or n % (G * b):
        raise ValueError(f"groups={G} x block_size={b} must divide both sides of the {m}x{n} weight")
    rows, cols = random_partition(m // b, G, generator), random_partition(n // b, G, generator)
    total = float(E.sum())
    kept = partition_energy(_tile_energy(E, b), rows, cols, G)
    out_index = _index_from_labels(rows, b).to(weight.device)
    in_index = _index_from_labels(cols, b).to(weight.device)
    values = weight.detach()[out_index.view(G, m // G, 1), in_index.view(G, 1, n // G)].contiguous()
    return GroupedBlockFormat(values, in_index, out_index, b), (kept / total if total > 0 else 1.0)


def retained_energy(module: nn.Module) -> dict[str, float]:
    """{qualified name: retained energy fraction} of the layers that ``convert(...,
    keep_weights=True)`` built from trained weights (a converted layer itself: {"": x})."""
    return {
        name: float(m.retained_energy)
        for name, m in module.named_modules()
        if isinstance(getattr(m, "retained_energy", None), float)
    }


def trained_layer(
    module: nn.Module,
    *,
    weight: Tensor | None = None,
    groups: int,
    block_size: int,
    activation: str,
    init: str,
    gain: float,
    orthogonalize: bool,
    generator: torch.Generator | None,
) -> nn.Module:
    """The SAOLinear / SAOConv2d holding ``module``'s trained weight (``weight``, default
    ``module.weight``: (out, in) for a linear-like module, as an ``nn.Conv2d``'s otherwise) on
    its best topology (no bias: the caller carries the module's own); ``retained_energy`` is
    set on it.  ``activation`` / ``init`` / ``gain`` are what its ``reset_parameters`` would
    draw with."""
    from .layers import SAOConv2d, SAOLinear

    weight = module.weight if weight is None else weight
    blocks, retained = trained_blocks(
        weight.detach(), groups, block_size=block_size, orthogonalize=orthogonalize, generator=generator
    )
    recipe = {"activation": activation, "init": init, "gain": gain, "_blocks": blocks}
    if weight.dim() == 2:
        layer = SAOLinear(weight.shape[1], weight.shape[0], False, **recipe)
    else:
        layer = SAOConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            False,
            module.padding_mode,
            **recipe,
        )
    layer.retained_energy = float(retained)
    return layer
