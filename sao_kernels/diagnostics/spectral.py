"""Spectral gaps: one layer's bipartite adjacency vs the Ramanujan bound, and the mixing of a stack."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .graphs import Topology, layer_topology
from .jacobian import GiB

__all__ = ["SpectralGap", "StackSpectralGap", "spectral_gap", "stack_spectral_gap"]


def _component_labels(mask: Tensor) -> Tensor:
    """(m + n,) component label of every vertex (outputs, then inputs) of the bipartite
    graph of an (m, n) mask; an isolated vertex is its own component.  Min-label
    propagation with pointer jumping, vectorised: O(nnz log diameter)."""
    m, n = mask.shape
    rows, cols = mask.nonzero(as_tuple=True)
    label = torch.arange(m + n)
    src = torch.cat([rows, cols + m])
    dst = torch.cat([cols + m, rows])
    while True:
        new = label.clone().scatter_reduce_(0, dst, label[src], reduce="amin")
        new = new[new]  # pointer jumping: converge in O(log diameter) rounds
        if torch.equal(new, label):
            return label
        label = new


def _components(mask: Tensor) -> int:
    """Connected components of the bipartite graph (outputs + inputs) of an (m, n) mask;
    an isolated vertex counts as a component."""
    return int(torch.unique(_component_labels(mask)).numel())


def _top_singular_values(mask: Tensor, max_exact: int) -> Tensor:
    """The singular values of a 0/1 mask that decide sigma1, sigma2 and the note, descending.

    A permuted block diagonal's spectrum is the union of its connected components'
    spectra, so each component is taken on its own: ``svdvals`` when its smaller side is at
    most 1024 (exact), else ``eigvalsh`` of its Gram matrix (O(s^2 l) flops; the large
    singular values are exact to ~1e-12 relative, values below sqrt(s * eps) * sigma1 of
    the component are below its resolution and returned as 0).  A component whose smaller
    side exceeds ``max_exact`` is refused."""
    m = mask.shape[0]
    label = _component_labels(mask)
    out_label, in_label = label[:m], label[m:]
    edges = mask.nonzero(as_tuple=True)
    edge_label = out_label[edges[0]]
    found = []
    for comp in torch.unique(edge_label).tolist():  # components with at least one edge
        rows = (out_label == comp).nonzero().flatten()
        cols = (in_label == comp).nonzero().flatten()
        small, large = sorted((rows.numel(), cols.numel()))
        if small > max_exact:
            raise ValueError(
                f"spectral_gap: a connected component of {rows.numel()} x {cols.numel()} (out x in) needs an "
                f"exact eigen-decomposition of a {small} x {small} Gram matrix (about {small * small * large:.2g} "
                f"flops and {8 * small * small / GiB:.2g} GiB), above max_exact={max_exact}; pass a larger "
                "max_exact to run it"
            )
        block = mask[rows][:, cols].to(torch.float64)
        if small <= 1024:
            found.append(torch.linalg.svdvals(block))
        else:
            gram = block @ block.T if rows.numel() <= cols.numel() else block.T @ block
            sv = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
            sv[sv < math.sqrt(small * torch.finfo(torch.float64).eps) * sv[0]] = 0.0
            found.append(sv)
    if not found:
        return torch.zeros(1, dtype=torch.float64)
    return torch.sort(torch.cat(found), descending=True).values


def _degrees(mask: Tensor) -> tuple[float, float, bool]:
    """(c, d, biregular): mean inputs per output, mean outputs per input."""
    row = mask.sum(1).to(torch.float64)
    col = mask.sum(0).to(torch.float64)
    biregular = bool((row == row[0]).all()) and bool((col == col[0]).all())
    return float(row.mean()), float(col.mean()), biregular


def _ramanujan_bound(c: float, d: float) -> float:
    return math.sqrt(max(c - 1.0, 0.0)) + math.sqrt(max(d - 1.0, 0.0))


@dataclass
class SpectralGap:
    """Spectrum of one layer's bipartite adjacency A (out x in, 0/1).

    Attributes:
        sigma1, sigma2: the two largest singular values of A (sigma1 = sqrt(c*d) for a
            biregular graph).
        ramanujan_bound: sqrt(c - 1) + sqrt(d - 1).
        left_degree: c, inputs per output (row sums of A; their mean if irregular).
        right_degree: d, outputs per input (column sums of A; their mean if irregular).
        biregular: every output has degree c and every input degree d.
        components: connected components of the bipartite graph.
        ramanujan: the strict definition: connected and sigma2 <= ramanujan_bound.
        note: a plain-words reading of the numbers.
    """

    sigma1: float
    sigma2: float
    ramanujan_bound: float
    left_degree: float
    right_degree: float
    biregular: bool
    components: int
    ramanujan: bool
    note: str


def spectral_gap(layer, *, max_exact: int = 4096) -> SpectralGap:
    """Second singular value of a layer's bipartite adjacency vs the Ramanujan bound.

    Accepts what :func:`connectivity` accepts.  A single SAO layer with G > 1 groups is G
    disjoint complete bipartite graphs K(a, d): sigma2 == sigma1 and the result says so.

    Cost: an SAO layer (``SAOLinear`` / ``SAOConv2d`` / ``GroupedBlockFormat``) is read from
    its groups in closed form (each K(a, c) has one singular value sqrt(a*c), the rest 0):
    O(m + n) at any size, exact.  Any other mask is split into its connected components,
    each solved exactly: ``svdvals`` up to a smaller side of 1024 (about a second at
    1024 x 1024), else the eigenvalues of its Gram matrix (O(s^2 l) flops, s^2 float64;
    about 10-40 s for a connected 4096 x 4096 mask on 2 cores).  A component with a
    smaller side above ``max_exact`` raises a ValueError naming its size and the limit
    (the dense SVD it replaces took 432 s at 4096 x 4096).
    """
    if isinstance(max_exact, bool) or not isinstance(max_exact, int) or max_exact < 1:
        raise ValueError(f"max_exact must be a positive int, got {max_exact!r}")
    topo = layer_topology(layer)
    if topo.mask is None:  # SAO groups: the spectrum in closed form
        G, a = topo.out_groups.shape
        c = topo.in_groups.shape[1]
        top = math.sqrt(a * c)
        s = torch.tensor([top] * G + [0.0], dtype=torch.float64)
        sigma1, sigma2 = top, (top if G > 1 else 0.0)
        c_deg, d_deg, biregular = float(c), float(a), True
        bound = _ramanujan_bound(c_deg, d_deg)
        comps = G
        return _spectral_gap_result(s, sigma1, sigma2, bound, c_deg, d_deg, biregular, comps)
    mask = topo.mask
    s = _top_singular_values(mask, max_exact)
    sigma1 = float(s[0])
    sigma2 = float(s[1]) if s.numel() > 1 else 0.0
    c, d, biregular = _degrees(mask)
    bound = _ramanujan_bound(c, d)
    comps = _components(mask)
    return _spectral_gap_result(s, sigma1, sigma2, bound, c, d, biregular, comps)


def _spectral_gap_result(
    s: Tensor, sigma1: float, sigma2: float, bound: float, c: float, d: float, biregular: bool, comps: int
) -> SpectralGap:
    """The verdict and its note from the (leading, descending) singular values ``s``."""
    ramanujan = comps == 1 and sigma2 <= bound + 1e-9 * max(1.0, bound)
    tol = 1e-9 * max(1.0, sigma1)
    if comps > 1 and biregular and abs(sigma2 - sigma1) <= tol:
        repeat = int((s >= sigma1 - tol).sum())
        rest = float(s[repeat]) if s.numel() > repeat else 0.0
        note = (
            f"disconnected: {comps} components; the top singular value sqrt(c*d) = {sigma1:.4g} appears "
            f"{repeat} times, so sigma2 == sigma1 and the spectral gap is 0.  Every other singular value is "
            f"{rest:.3g} <= the Ramanujan bound {bound:.4g}, so each component (for SAO: a complete bipartite "
            "K(a, d)) is Ramanujan only trivially, and the layer alone is no expander.  Expansion comes from "
            "the depth mixing of the random partitions of successive layers: see stack_spectral_gap and "
            "connectivity."
        )
    elif comps > 1:
        note = f"disconnected: {comps} components (sigma2 = {sigma2:.4g}, sigma1 = {sigma1:.4g}); not an expander"
    elif ramanujan:
        note = f"connected and Ramanujan: sigma2 = {sigma2:.4g} <= sqrt(c-1)+sqrt(d-1) = {bound:.4g}"
    else:
        note = f"connected but not Ramanujan: sigma2 = {sigma2:.4g} > sqrt(c-1)+sqrt(d-1) = {bound:.4g}"
    if not biregular:
        note += "; the graph is irregular, so c and d are mean degrees and the bound is only indicative"
    return SpectralGap(sigma1, sigma2, bound, c, d, biregular, comps, ramanujan, note)


@dataclass
class StackSpectralGap:
    """Spectrum of the normalised path-count matrices of a stack, depth by depth.

    ``N_k = Â_k ... Â_1`` with ``Â = D_out^{-1/2} A D_in^{-1/2}`` (``A / sqrt(c*d)`` for a
    biregular layer), so ``N_k[o, i]`` is the normalised number of paths from input i to
    output o.  For biregular layers sigma1(N_k) = 1, and sigma2(N_k) is how far k layers
    are from mixing every input into every output uniformly (0 = fully mixed).

    Attributes:
        sigma1, sigma2: per depth k (index k-1).
        layer_bounds: each layer's normalised Ramanujan bound
            (sqrt(c-1) + sqrt(d-1)) / sqrt(c*d): sigma2 of a Ramanujan layer of the same
            degrees is at most this.
        ramanujan_reference: per depth, the product of the first k layer bounds: what k
            stacked Ramanujan layers of these degrees guarantee (for biregular layers
            sigma2 of a product is at most the product of the sigma2's).
        exact: whether the singular values came from a full SVD (else svd_lowrank).
        note: a plain-words reading.
    """

    sigma1: list[float]
    sigma2: list[float]
    layer_bounds: list[float]
    ramanujan_reference: list[float]
    exact: bool
    note: str


def _normalised_apply(topo: Topology, x: Tensor) -> Tensor:
    """Â @ x for x (in, r) float64."""
    if topo.mask is None:
        G, c = topo.in_groups.shape
        a = topo.out_groups.shape[1]
        sums = x[topo.in_groups.reshape(-1)].view(G, c, -1).sum(1)  # (G, r)
        out = x.new_empty(topo.out_features, x.shape[1])
        out[topo.out_groups.reshape(-1)] = (sums / math.sqrt(a * c)).repeat_interleave(a, dim=0)
        return out
    a = topo.mask.to(torch.float64)
    row = a.sum(1).clamp_min(1.0)
    col = a.sum(0).clamp_min(1.0)
    return (a / row.sqrt()[:, None] / col.sqrt()[None, :]) @ x


def stack_spectral_gap(layers: Iterable, *, max_exact: int = 1024) -> StackSpectralGap:
    """How fast a stack mixes: sigma2 of the normalised path-count matrix after each depth.

    This is the honest expansion measure of an SAO stack (one SAO layer is disconnected,
    see :func:`spectral_gap`).  Why not the boolean product mask: once every input reaches
    every output it is the all-ones matrix, whose sigma2 is 0 however uneven the paths
    are; path counts keep that information.

    Cost: the product is a dense (out, n) float64 matrix (8*out*n bytes: 128 MiB at 4096);
    each SAO layer applies in O(out * n), any other mask as a dense matmul O(out * in * n);
    each depth then takes a full SVD (O(k^2 l), about a second at 1024) or, above
    ``max_exact``, ``torch.svd_lowrank(q=8, niter=6)`` (randomised subspace iteration:
    sigma1 to ~1e-6, sigma2 to about 5 % relative on SAO stacks; ``exact`` says which).

    Args:
        layers: as for :func:`connectivity`.
        max_exact: full SVD when min(out, in) of the product is at most this; above it the
            two top singular values are estimated with ``torch.svd_lowrank``.
    """
    topos = [layer_topology(layer) for layer in layers]
    if not topos:
        raise ValueError("stack_spectral_gap needs at least one layer")
    n = topos[0].in_features
    prod = torch.eye(n, dtype=torch.float64)
    s1, s2, bounds, ref = [], [], [], []
    exact = True
    for topo in topos:
        prod = _normalised_apply(topo, prod)
        if topo.mask is None:  # SAO groups: every output reads c inputs, every input feeds a outputs
            c, d = float(topo.in_groups.shape[1]), float(topo.out_groups.shape[1])
        else:
            c, d, _ = _degrees(topo.mask)
        bounds.append(_ramanujan_bound(c, d) / math.sqrt(c * d) if c * d > 0 else float("nan"))
        ref.append(math.prod(bounds))
        if min(prod.shape) <= max_exact:
            s = torch.linalg.svdvals(prod)
        else:
            exact = False
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            _, s, _ = torch.svd_lowrank(prod, q=8, niter=6)
            torch.random.set_rng_state(gen_state)
        s1.append(float(s[0]))
        s2.append(float(s[1]) if s.numel() > 1 else 0.0)
    note = (
        "sigma2 of the normalised path-count product after each depth; 1.0 means some inputs still "
        "cannot reach some outputs (disconnected), 0 means perfectly uniform mixing.  Compare with "
        "ramanujan_reference, the product of the per-layer Ramanujan bounds."
    )
    return StackSpectralGap(s1, s2, bounds, ref, exact, note)
