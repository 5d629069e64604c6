"""Layer masks and reachability through a stack of layers."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..format import GroupedBlockFormat

__all__ = ["Connectivity", "connectivity", "layer_mask"]


@dataclass
class Topology:
    """One layer's (out, in) connectivity: a dense bool mask, or SAO groups."""

    out_features: int
    in_features: int
    mask: Tensor | None = None  # (out, in) bool
    out_groups: Tensor | None = None  # (G, a) output features of each group
    in_groups: Tensor | None = None  # (G, c) input features of each group
    _kept: int | None = None

    def kept(self) -> int:
        """Number of kept (out, in) pairs."""
        if self._kept is None:
            self._kept = int(self.mask.sum()) if self.mask is not None else self.out_features * self.in_groups.shape[1]
        return self._kept

    def dense(self) -> Tensor:
        if self.mask is not None:
            return self.mask
        G, a = self.out_groups.shape
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool)
        mask[self.out_groups.view(G, a, 1), self.in_groups.view(G, 1, -1)] = True
        return mask


def _pair_mask(m: Tensor) -> Tensor:
    m = m.detach().cpu()
    if m.dim() == 4:
        m = (m != 0).flatten(2).any(-1)
    if m.dim() != 2:
        raise ValueError(f"a mask must be (out, in) or (out, in, kh, kw), got shape {tuple(m.shape)}")
    return m if m.dtype == torch.bool else m != 0


def layer_topology(layer) -> Topology:
    if isinstance(layer, GroupedBlockFormat):
        G = layer.groups
        return Topology(
            layer.out_features,
            layer.in_features,
            None,
            layer.out_index.cpu().view(G, -1),
            layer.in_index.cpu().view(G, -1),
        )
    if hasattr(layer, "values") and hasattr(layer, "in_index") and hasattr(layer, "out_index"):  # SAO layers
        G = layer.values.shape[0]
        return Topology(
            layer.out_index.numel(),
            layer.in_index.numel(),
            None,
            layer.out_index.detach().cpu().view(G, -1),
            layer.in_index.detach().cpu().view(G, -1),
        )
    if isinstance(layer, Tensor):
        mask = _pair_mask(layer)
    elif isinstance(getattr(layer, "weight_mask", None), Tensor):  # torch.nn.utils.prune
        mask = _pair_mask(layer.weight_mask)
    elif isinstance(getattr(layer, "weight", None), Tensor):
        mask = _pair_mask(layer.weight)
    else:
        raise TypeError(
            "expected an SAO layer, a GroupedBlockFormat, an nn.Linear / nn.Conv2d (pruned or not) "
            f"or an (out, in) mask tensor, got {type(layer).__name__}"
        )
    return Topology(mask.shape[0], mask.shape[1], mask)


def layer_mask(layer) -> Tensor:
    """The (out, in) bool mask of kept connections of a layer (see :func:`connectivity`)."""
    return layer_topology(layer).dense().clone()


# -------------------------------------------------------------- connectivity
@dataclass
class Connectivity:
    """Reachability through a stack of layers.

    Attributes:
        fractions: ``fractions[k-1]`` is the fraction of (input, output) pairs of the first
            k layers (inputs of layer 1, outputs of layer k) joined by a path.
        min_fractions: the same for the worst-connected input: the smallest fraction of
            layer k's outputs that one input reaches.
        full_depth: the first depth k at which every input reaches every output, or None.
        in_features: inputs of the first layer.
        out_features: outputs of each layer.
    """

    fractions: list[float]
    min_fractions: list[float]
    full_depth: int | None
    in_features: int
    out_features: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        full = "never" if self.full_depth is None else f"at depth {self.full_depth}"
        fr = ", ".join(f"{f:.3g}" for f in self.fractions)
        return f"Connectivity(full {full}; fraction of pairs by depth: [{fr}])"


_SPARSE_DENSITY = 0.03  # below this fraction of kept pairs, propagate through a CSR product


def _step(reach: Tensor, topo: Topology) -> Tensor:
    """(u, n) bool reachability over the layer's inputs -> (u, m) over its outputs."""
    if topo.in_features != reach.shape[1]:
        raise ValueError(f"layer with {topo.in_features} inputs follows a layer with {reach.shape[1]} outputs")
    if topo.mask is None:
        G = topo.in_groups.shape[0]
        # An output of group g is reached iff any input of group g is.
        hit = reach[:, topo.in_groups.reshape(-1)].view(reach.shape[0], G, -1).any(-1)  # (u, G)
        out = torch.empty(reach.shape[0], topo.out_features, dtype=torch.bool)
        out[:, topo.out_groups.reshape(-1)] = hit.repeat_interleave(topo.out_groups.shape[1], dim=1)
        return out
    # Boolean product as a float32 matmul (sums of 0/1 up to 2^24 are exact) and a clamp;
    # a sparse (CSR) product when the mask is very sparse.
    mask = topo.mask
    if reach.shape[0] <= 16:  # few distinct rows (e.g. a saturated stack): plain bool ops
        return torch.stack([(mask & row).any(1) for row in reach])
    if topo.kept() < _SPARSE_DENSITY * mask.numel():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            csr = mask.to(torch.float32).to_sparse_csr()
            return (csr @ reach.t().to(torch.float32)).t() > 0
    return (reach.to(torch.float32) @ mask.t().to(torch.float32)) > 0


def _dedupe(reach: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Merge identical rows (inputs that reach the same set stay together forever)."""
    if reach.shape[0] <= 1:
        return reach, counts
    uniq, inverse = torch.unique(reach, dim=0, return_inverse=True)
    if uniq.shape[0] == reach.shape[0]:
        return reach, counts
    merged = torch.zeros(uniq.shape[0], dtype=counts.dtype).index_add_(0, inverse, counts)
    return uniq, merged


def connectivity(layers: Iterable) -> Connectivity:
    """Which inputs of a stack reach which outputs, depth by depth.

    Args:
        layers: the stack, first layer first: ``SAOLinear`` / ``SAOConv2d`` /
            ``GroupedBlockFormat`` (their groups are used directly), ``nn.Linear`` /
            ``nn.Conv2d`` (``weight_mask`` when pruned with ``torch.nn.utils.prune``, else
            the non-zeros of ``weight``; a conv's mask is on (out, in) channel pairs), or
            (out, in) mask tensors (non-zero = kept).

    Returns:
        :class:`Connectivity`.  The reachability matrix (inputs x width) is propagated
        layer by layer: a group-wise "any" for SAO layers (O(inputs x width)), a float
        matmul plus clamp for other masks; inputs with identical reachable sets are
        merged, so an SAO stack costs O(G x width) per layer and a generic one collapses
        to a single row once it is fully connected.  A 10-layer, 4096-wide stack takes
        well under a second (SAO) to a few seconds (random masks) on 2 CPU cores.
    """
    topos = [layer_topology(layer) for layer in layers]
    if not topos:
        raise ValueError("connectivity needs at least one layer")
    n = topos[0].in_features
    reach = torch.eye(n, dtype=torch.bool)
    counts = torch.ones(n, dtype=torch.float64)
    fractions, mins, full = [], [], None
    for depth, topo in enumerate(topos, start=1):
        if depth == 1:  # from the identity: the first layer's own mask
            if topo.in_features != n:
                raise ValueError("internal: first layer width mismatch")
            reach = _step(reach, topo) if topo.mask is None else topo.mask.t().clone()
        else:
            reach = _step(reach, topo)
        reach, counts = _dedupe(reach, counts)
        per_row = reach.sum(1).to(torch.float64)
        m = topo.out_features
        fractions.append(float((per_row * counts).sum() / (n * m)))
        mins.append(float(per_row.min() / m))
        if full is None and bool(reach.all()):
            full = depth
    return Connectivity(fractions, mins, full, n, [t.out_features for t in topos])
