"""SAOLinear: a drop-in nn.Linear whose weight is an SAO permuted block diagonal."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..format import GroupedBlockFormat
from ..functional import sao_linear
from ..sizes import check_dim
from ._base import SAOLayerBase, check_bias_flag, pack_structured


class SAOLinear(SAOLayerBase):
    """``y = x W^T + b`` with W an SAO matrix stored as G blocks.

    Args:
        in_features, out_features: as nn.Linear.
        bias: learn an additive bias (initialised as nn.Linear does).  Positional as in
            nn.Linear; a number there (``SAOLinear(1024, 1024, 0.875)``) raises a TypeError
            that points to ``sparsity=`` (sparsity / degree / groups are keyword-only).
        sparsity / degree / groups: exactly one (see ``sao_kernels.valid_sparsities``).
        activation: "linear", "tanh" or "relu" (looks-linear doubling).
        init: "sao" (orthogonal blocks), "rg-n" or "rg-u" (random values on the SAO mask).
        block_size: tile width of the partitions (1 = the paper's construction).
        gain: scale of the values, a finite float > 0.
        generator, device, dtype: as torch (device None: the default device, which a
            ``with torch.device(...)`` block sets).

    Shapes: input (*, in_features) -> output (*, out_features); a jagged nested input gives a
    jagged output, a sparse one is densified (as nn.Linear).  Non-finite inputs follow the
    sparse semantics: no ``0 * x`` is formed for an absent connection, so a NaN / inf input
    feature reaches only the out_features/G outputs of its group (a dense weight with zeros
    would spread NaN to all).  The only trainable tensors
    are ``values`` (G, out/G, in/G) and ``bias``; ``in_index`` / ``out_index`` are buffers.
    The smaller dimension uses contiguous groups, so one of the two gathers is skipped.

    On the meta device (``device="meta"`` or ``with torch.device("meta")``) nothing is drawn:
    construction takes microseconds at any size.  Deferred initialisation is
    ``layer.to_empty(device=...)`` then ``layer.reset_parameters(generator)``; with the
    same generator seed it gives exactly the layer the constructor would have built.
    """

    DEFAULT_INIT = "sao"
    VALUE_DIMS = 3

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        sparsity: float | None = None,
        degree: int | None = None,
        groups: int | None = None,
        activation: str = "tanh",
        init: str = "sao",
        block_size: int = 1,
        gain: float = 1.0,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
        _blocks: GroupedBlockFormat | None = None,
        _bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_dim("in_features", in_features)
        self.out_features = check_dim("out_features", out_features)
        bias = check_bias_flag("SAOLinear", bias)
        self._build(
            bias,
            sparsity=sparsity,
            degree=degree,
            groups=groups,
            block_size=block_size,
            activation=activation,
            init=init,
            gain=gain,
            generator=generator,
            device=device,
            dtype=dtype,
            blocks=_blocks,
            bias_tensor=_bias,
        )

    def _shape(self) -> tuple[int, int, None]:
        return self.out_features, self.in_features, None

    def forward(self, x: Tensor) -> Tensor:
        return sao_linear(x, self.values, self.in_index, self.out_index, self.bias, self.block_size)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"sparsity={self.sparsity:.4g}, groups={self.groups}, block_size={self.block_size}"
        )

    @classmethod
    def from_blocks(
        cls,
        blocks: GroupedBlockFormat,
        bias: Tensor | None = None,
        *,
        activation: str = "tanh",
        init: str | None = None,
        gain: float = 1.0,
    ) -> SAOLinear:
        """A layer holding ``blocks`` (values (G, m/G, n/G) and both indices, used as they
        are: no copy) and ``bias`` ((m,) or None, same dtype and device).

        ``activation`` / ``init`` / ``gain`` are what :meth:`reset_parameters` will draw
        with (``init`` None: "sao").
        """
        cls._check_blocks(blocks, bias)
        return cls(
            blocks.in_features,
            blocks.out_features,
            bias is not None,
            activation=activation,
            init=init,
            gain=gain,
            _blocks=blocks,
            _bias=bias,
        )

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Tensor | None = None) -> SAOLinear:
        """Pack an nn.Linear whose weight is SAO-structured (``mask=None``: detected from its
        non-zeros), or one pruned to an SAO pattern (``mask``: the kept entries, e.g.
        ``weight_mask``).  A linear pruned with torch.nn.utils.prune is read through its
        ``weight_orig`` and ``weight_mask``.  The values and bias are copies;
        ``requires_grad`` is kept.  Raises ValueError when the pattern is not a permuted
        block diagonal of G equal blocks (an unstructured prune is not: for a trained
        layer, ``sk.convert(..., keep_weights=True)`` chooses the SAO topology)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        if mask is None and hasattr(linear, "weight_mask") and hasattr(linear, "weight_orig"):
            weight, mask = linear.weight_orig, linear.weight_mask
        blocks = pack_structured("SAOLinear", weight.detach(), mask)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        layer = cls.from_blocks(blocks, bias, activation="linear")
        layer.values.requires_grad_(weight.requires_grad)
        if bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer
