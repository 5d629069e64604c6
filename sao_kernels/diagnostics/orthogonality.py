"""``max |W W^T - I|`` of a layer's dense-equivalent weight (linear or convolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..format import GroupedBlockFormat

__all__ = ["orthogonality_error"]


def _dense_of(layer) -> Tensor:
    """The dense-equivalent (effective) weight of a layer or a tensor."""
    if isinstance(layer, Tensor):
        return layer.detach()
    if isinstance(layer, GroupedBlockFormat):
        return layer.to_dense().detach()
    if hasattr(layer, "dense_weight") and callable(layer.dense_weight):
        return layer.dense_weight().detach()
    weight = getattr(layer, "weight", None)
    if isinstance(weight, Tensor):  # nn.Linear / nn.Conv2d; a pruned one's .weight is already masked
        return weight.detach()
    raise TypeError(f"expected a tensor, a GroupedBlockFormat or a layer with a weight, got {type(layer).__name__}")


def _gram_error(w: Tensor) -> float:
    """max |W W^H - I| (rows orthonormal) when out <= in, else max |W^H W - I|."""
    if w.shape[-2] > w.shape[-1]:
        w = w.transpose(-2, -1)
    gram = w @ w.transpose(-2, -1).conj()
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return float((gram - eye).abs().max())


def orthogonality_error(
    layer,
    *,
    conv: str = "flatten",
    input_size: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
) -> float:
    """``max |W W^T - I|`` of a layer's dense-equivalent weight (``W^T W`` when out > in).

    Accepts a tensor ((out, in) or (out, in, kh, kw)), a ``GroupedBlockFormat``, an
    ``SAOLinear`` / ``SAOConv2d`` (through ``dense_weight()``) or an ``nn.Linear`` /
    ``nn.Conv2d`` (its ``weight``, which ``torch.nn.utils.prune`` keeps masked).  The
    ``gain`` is part of the weight, so a layer built with gain g has error |g^2 - 1|.

    A convolution weight (out, in, kh, kw) is measured by ``conv``:

    * "flatten" (default): the (out, in*kh*kw) matrix.  By Parseval this is
      ``sum_taps K_t K_t^T``, which is I for both SAO-Delta (centre tap orthogonal, the
      rest 0) and SAO-ECO (one orthogonal matrix per frequency).  It is a necessary
      condition for an orthogonal convolution, not a sufficient one.
    * "centre": the centre tap matrix (out, in) only: SAO-Delta's orthogonal matrix.
    * "operator": the convolution itself as an operator on ``input_size`` x
      ``input_size`` circularly padded inputs, stride 1, with ``dilation`` (default: the
      layer's own ``dilation``, else 1): ``max_f |A(f) A(f)^H - I|`` over the 2-D DFT
      frequencies f, A(f) = sum_t K_t exp(-2 pi i f.(dilation*t) / input_size).  0 means
      the convolution is exactly orthogonal on such inputs.  SAO-ECO kernels are
      orthogonal operators on kh x kw-periodic inputs, i.e. on n x n inputs when run with
      dilation n / k (ECO's dilated convolution); with dilation 1 on larger inputs they
      are not.
    """
    w = _dense_of(layer)
    if not w.is_floating_point() and not w.is_complex():
        raise TypeError(f"the weight must be a floating tensor, got {w.dtype}")
    w = w.to(torch.float64) if not w.is_complex() else w.to(torch.complex128)
    if w.dim() == 2:
        return _gram_error(w)
    if w.dim() != 4:
        raise ValueError(f"expected an (out, in) or (out, in, kh, kw) weight, got shape {tuple(w.shape)}")
    out, inp, kh, kw = w.shape
    if conv == "flatten":
        return _gram_error(w.reshape(out, inp * kh * kw))
    if conv == "centre":
        return _gram_error(w[:, :, kh // 2, kw // 2])
    if conv == "operator":
        if input_size is None:
            raise ValueError("conv='operator' needs input_size (the side of the circularly padded input)")
        sh, sw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if dilation is None:
            dilation = getattr(layer, "dilation", 1) if not isinstance(layer, Tensor) else 1
        dh, dw = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        if (kh - 1) * dh + 1 > sh or (kw - 1) * dw + 1 > sw:
            raise ValueError(
                f"input_size {(sh, sw)} must be at least the dilated kernel size "
                f"{((kh - 1) * dh + 1, (kw - 1) * dw + 1)}"
            )
        spread = w.new_zeros(out, inp, (kh - 1) * dh + 1, (kw - 1) * dw + 1)
        spread[:, :, ::dh, ::dw] = w
        spectrum = torch.fft.fft2(spread, s=(sh, sw))  # (out, in, sh, sw)
        return _gram_error(spectrum.permute(2, 3, 0, 1))
    raise ValueError(f"conv={conv!r} is not supported; allowed: 'flatten', 'centre', 'operator'")
