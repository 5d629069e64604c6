"""Parametrizations of SAO layers: ``orthogonal_blocks`` keeps every block orthonormal.

Any ``torch.nn.utils.parametrize`` parametrization can be registered on ``values`` (the
(G, a, c) or (G, a, c, kh, kw) blocks), ``torch.nn.utils.parametrizations.orthogonal``
included: on an SAOLinear it treats ``values`` as a batch of G (a, c) matrices, which is what
``orthogonal_blocks`` does too.  On an SAOConv2d torch's would orthogonalise the (kh, kw)
taps; ``orthogonal_blocks`` orthogonalises each block's (a, c*kh*kw) matrix instead.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _OrthMaps, _Orthogonal

from .layers import SAOConv2d, SAOLinear

__all__ = ["orthogonal_blocks"]


class _OrthogonalBlocks(nn.Module):
    """torch's orthogonal map on the blocks seen as (G, a, c*kh*kw) matrices (a batch)."""

    def __init__(self, values: Tensor, orthogonal_map: _OrthMaps, use_trivialization: bool) -> None:
        super().__init__()
        self.orth = _Orthogonal(values.flatten(2), orthogonal_map, use_trivialization=use_trivialization)

    def forward(self, X: Tensor) -> Tensor:
        return self.orth(X.flatten(2)).reshape(X.shape)

    def right_inverse(self, Q: Tensor) -> Tensor:
        return self.orth.right_inverse(Q.flatten(2)).reshape(Q.shape)


def orthogonal_blocks(
    layer: nn.Module, orthogonal_map: str | None = None, *, use_trivialization: bool = True
) -> nn.Module:
    """Constrain each block of an SAOLinear / SAOConv2d to orthonormal rows (columns when
    the block is taller than wide), as ``torch.nn.utils.parametrizations.orthogonal`` does
    for one matrix, and return the layer.

    A block is the (a, c) matrix of an SAOLinear, the (a, c*kh*kw) matrix of an SAOConv2d.
    The current blocks are the starting point: blocks already orthonormal in that sense (an
    SAOLinear's ``init="sao"`` blocks with ``gain=1``) are kept exactly, others are replaced
    by an orthonormal matrix (torch's ``right_inverse``).  ``orthogonal_map`` and ``use_trivialization`` are
    torch's ("matrix_exp", "cayley", "householder"; None: matrix_exp for square blocks, else
    householder).  The trainable tensor is then ``layer.parametrizations.values.original``;
    ``layer.values`` is computed from it on every access.
    """
    if not isinstance(layer, (SAOLinear, SAOConv2d)):
        raise TypeError(f"orthogonal_blocks: layer must be an SAOLinear or SAOConv2d, got {type(layer).__name__}")
    values = layer.values
    a, k = values.shape[1], values[0, 0].numel()
    if orthogonal_map is None:
        orthogonal_map = "matrix_exp" if a == k else "householder"
    orth_map = getattr(_OrthMaps, orthogonal_map, None) if isinstance(orthogonal_map, str) else None
    if orth_map is None:
        raise ValueError(
            f"orthogonal_blocks: orthogonal_map must be 'matrix_exp', 'cayley' or 'householder', got {orthogonal_map!r}"
        )
    parametrize.register_parametrization(layer, "values", _OrthogonalBlocks(values, orth_map, use_trivialization))
    return layer
