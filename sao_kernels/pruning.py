"""The pruning baselines of the SAO paper: layer-wise magnitude pruning (LMP) and random pruning
(LRP) of a dense orthogonal or Kaiming init, as ``torch.nn.init``-style in-place functions
(re-exported by ``sao_kernels.init``)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ._checks import check_gain, check_generator, check_tensor, gen_device

__all__ = ["PRUNE_BASES", "magnitude_prune_", "random_prune_"]

PRUNE_BASES = ("orthogonal", "kaiming")


def _dense_base(tensor: Tensor, base: str, activation: str, gain: float, generator: torch.Generator | None) -> Tensor:
    if not isinstance(base, str) or base not in PRUNE_BASES:
        raise ValueError(f"base={base!r} is not supported; allowed: {', '.join(map(repr, PRUNE_BASES))}")
    if not isinstance(activation, str) or activation not in ("linear", "tanh", "relu"):
        raise ValueError(f"activation={activation!r} is not supported; allowed: 'linear', 'tanh', 'relu'")
    gain = check_gain(gain)
    w = torch.empty(tensor.shape, dtype=torch.float64, device=gen_device(generator))
    if base == "orthogonal":
        torch.nn.init.orthogonal_(w, gain=gain, generator=generator)
    else:
        nonlinearity = {"linear": "linear", "tanh": "tanh", "relu": "relu"}[activation]
        torch.nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=generator)
        w *= gain
    return w


def _kept_count(sparsity: float, total: int) -> int:
    """round((1 - s) * total) entries (Python rounding), but at least one."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
    return max(1, round((1.0 - float(sparsity)) * total))


def _prune_fill_(tensor: Tensor, w: Tensor, keep_pairs: Tensor) -> Tensor:
    """keep_pairs: flat indices of kept entries (linear) or kept (out, in) kernels (conv)."""
    m, n = tensor.shape[:2]
    flat = torch.zeros(m * n if tensor.dim() == 4 else tensor.numel(), dtype=torch.bool, device=w.device)
    flat[keep_pairs] = True
    mask = flat.view(m, n)
    if tensor.dim() == 4:
        mask = mask[:, :, None, None].expand(tensor.shape)
    with torch.no_grad():
        tensor.copy_(w * mask)
    return mask.to(tensor.device).contiguous()


def magnitude_prune_(
    tensor: Tensor,
    sparsity: float,
    *,
    base: str = "orthogonal",
    activation: str = "tanh",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """LMP baseline: a dense ``base`` init ("orthogonal" or "kaiming") pruned layer-wise by
    magnitude to ``sparsity`` (|w| for a linear weight, the kernel L1 norm for a conv).
    Keeps round((1 - s) * count) entries / kernels (at least one); returns the bool mask."""
    check_tensor("magnitude_prune_", tensor, (2, 4))
    check_generator(generator)
    w = _dense_base(tensor, base, activation, gain, generator)
    score = w.abs().flatten(2).sum(-1).flatten() if w.dim() == 4 else w.abs().flatten()
    keep = torch.topk(score, _kept_count(sparsity, score.numel())).indices
    return _prune_fill_(tensor, w, keep)


def random_prune_(
    tensor: Tensor,
    sparsity: float,
    *,
    base: str = "orthogonal",
    activation: str = "tanh",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """LRP baseline: a dense ``base`` init with a uniformly random mask (entries for a
    linear weight, whole kernels for a conv) at ``sparsity``; returns the bool mask."""
    check_tensor("random_prune_", tensor, (2, 4))
    check_generator(generator)
    w = _dense_base(tensor, base, activation, gain, generator)
    total = tensor.shape[0] * tensor.shape[1] if tensor.dim() == 4 else tensor.numel()
    keep = torch.randperm(total, generator=generator, device=w.device)[: _kept_count(sparsity, total)]
    return _prune_fill_(tensor, w, keep)
