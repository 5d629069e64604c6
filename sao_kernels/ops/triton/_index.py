"""Index maps as the kernels read them: int32 copies and inverse permutations, cached.

The ops hand the launchers contiguous int64 permutations (``ops._validate``).  Kernels read
them as int32: a gathered feature number then costs 32-bit address arithmetic per element
instead of 64-bit, and an (n,) index of n < 2**31 features always fits.  The copy (and the
inverse permutation of the permute-then-contiguous path) is made once per *version* of the
index data and kept, weakly, against the index tensor: the cache key is the tensor's
``_version`` counter (bumped by every in-place write, ``copy_`` and ``load_state_dict``
included) and its data pointer, as for the validity checks in ``ops._validate``.
Inference tensors have no version counter and meta tensors no data: those are converted on
every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

_int32: WeakIdKeyDictionary = WeakIdKeyDictionary()
_inverse: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _cached(cache: WeakIdKeyDictionary, index: Tensor, make: Callable[[Tensor], Tensor]) -> Tensor:
    if index.device.type == "meta" or index.is_inference():
        return make(index)
    key = (index._version, index.data_ptr())
    hit = cache.get(index)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = make(index)
    cache[index] = (key, value)
    return value


def _to_int32(index: Tensor) -> Tensor:
    return index.to(torch.int32).contiguous()


def _inverse_int32(index: Tensor) -> Tensor:
    inv = torch.empty(index.numel(), dtype=torch.int32, device=index.device)
    if index.device.type == "meta":
        return inv
    inv[index] = torch.arange(index.numel(), dtype=torch.int32, device=index.device)
    return inv


def as_int32(index: Optional[Tensor]) -> Optional[Tensor]:
    """``index`` (a permutation of range(n), int64) as a contiguous int32 tensor, or None."""
    if index is None:
        return None
    if index.dtype == torch.int32 and index.is_contiguous():
        return index
    return _cached(_int32, index, _to_int32)


def inverse_int32(index: Tensor) -> Tensor:
    """The inverse permutation of ``index`` as int32: ``inv[index[j]] = j``."""
    return _cached(_inverse, index, _inverse_int32)
