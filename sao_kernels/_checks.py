"""Argument checks shared across the package: the SAO construction (``init``), the layers,
the format, sizes, conversion and the pruning baselines."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def is_int(x: object) -> bool:
    """An integer (Python or numpy), never a bool: the one integer check of every argument."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_gain(gain: float) -> float:
    """``gain`` as a float: a finite, positive real number (numpy scalars too)."""
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise TypeError(f"gain must be a number (a finite float > 0), got {type(gain).__name__} {gain!r}")
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a finite float > 0, got {gain!r}")
    return float(gain)


def check_float_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")


def target_device(device: torch.device | str | int | None) -> torch.device:
    """Where a new layer lives: ``device``, else torch's default device (which a
    ``with torch.device(...)`` block sets), as torch's own factories do."""
    if device is None:
        return torch.get_default_device()
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"device must be a torch.device, a device string or None, got {device!r}: {err}") from None


def check_tensor(name: str, tensor: Tensor, dims: tuple[int, ...]) -> None:
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        got = getattr(tensor, "dtype", type(tensor).__name__)
        raise TypeError(f"{name}: tensor must be a floating-point tensor, got {got}")
    if tensor.dim() not in dims:
        want = " or ".join({2: "(out, in)", 4: "(out, in, kh, kw)"}[d] for d in dims)
        raise ValueError(f"{name}: tensor must have shape {want}, got {tuple(tensor.shape)}")
