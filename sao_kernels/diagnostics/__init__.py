"""Measure what the SAO paper claims: isometry, orthogonality, connectivity and expansion.

* :func:`jacobian_singular_values` — the singular values of the input-output Jacobian of a
  model at each sample: the standard measure of dynamical isometry (all equal to 1 means
  the network maps every input direction with the same gain).
* :func:`orthogonality_error` — ``max |W W^T - I|`` of a layer's dense-equivalent weight.
* :func:`connectivity` — for a stack of layers, the fraction of (input, output) pairs
  joined by a path after each depth, and the depth at which every input reaches every
  output.
* :func:`spectral_gap` / :func:`stack_spectral_gap` — the second singular value of a
  layer's bipartite adjacency against the Ramanujan bound, and of the normalised
  path-count matrix of a stack.

What a single SAO layer is, honestly: its bipartite graph is G disjoint complete bipartite
graphs K(a, d).  Its adjacency therefore has G copies of the top singular value
``sqrt(a*d)`` and every other singular value is 0.  Each component is (trivially)
Ramanujan, but the layer as a whole is disconnected: ``sigma_2 == sigma_1``, the
spectral gap is 0 and one layer is no expander at all.  Expansion, and full
connectivity, come only from stacking layers whose random partitions differ; that is what
:func:`connectivity` and :func:`stack_spectral_gap` measure.
"""

from .graphs import Connectivity, connectivity, layer_mask
from .jacobian import jacobian_singular_values
from .orthogonality import orthogonality_error
from .spectral import SpectralGap, StackSpectralGap, spectral_gap, stack_spectral_gap

__all__ = [
    "Connectivity",
    "SpectralGap",
    "StackSpectralGap",
    "connectivity",
    "jacobian_singular_values",
    "layer_mask",
    "orthogonality_error",
    "spectral_gap",
    "stack_spectral_gap",
]
