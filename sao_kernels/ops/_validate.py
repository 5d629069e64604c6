"""Argument checks of the three SAO products (the Python implementations' side).

Every public op validates every call: shapes, dtypes, devices, ``block_size``, and each index
map's dtype, range and permutation-ness (O(n) next to an O(T*m*n/G) product).  A CPU index is
checked on every call.  A GPU index would cost a host sync per call, so it is checked once per
*version* of its data: the verdict (identity or not, the verified run length) is cached against
the tensor object (weakly), its ``_version`` counter (bumped by every in-place write, ``copy_``
and ``load_state_dict`` included) and its data pointer, so a rewritten index is re-checked.
(Writes through ``index.data`` bypass the version counter; inference tensors have none and are
checked on every call.)

The C++ CPU kernels (csrc/) run the same checks, with the same messages, in one O(n) pass per
call; ``tests/ops/test_errors.py`` holds both to them.

Glossary (all of ``sao_kernels.ops``): T tokens, m = G*a output features, n = G*c input
features, G groups, a = m/G and c = n/G the block sides, b = ``block_size`` (the aligned run
length of both index maps).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary


@dataclasses.dataclass(frozen=True)
class IndexArg:
    """A checked index map: ``index`` is None for the identity (the gather is skipped), else a
    contiguous int64 permutation; ``run`` is its verified aligned run length: b when the
    index is made of aligned runs of b consecutive features, else 1."""

    index: Optional[Tensor]
    run: int


@dataclasses.dataclass(frozen=True)
class Problem:
    """The checked sizes and index maps of one product (see the glossary)."""

    G: int
    a: int
    c: int
    in_index: IndexArg
    out_index: IndexArg


_NO_INDEX = IndexArg(None, 1)
_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def check_block_size(op: str, block_size: object, a: int, c: int) -> int:
    """``block_size`` must be a positive int.  It is a promise about the index maps, never
    trusted: each index's runs are verified (``_verdict``), and a block side it does not
    divide leaves nothing to promise (run length 1)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{op}: block_size must be a positive int, got {block_size!r}")
    return block_size if a % block_size == 0 and c % block_size == 0 else 1


def _verdict(op: str, name: str, index: Tensor, size: int, block_size: int) -> IndexArg:
    """The O(n) checks: range, permutation, identity, aligned runs of ``block_size``."""
    # (A block_size whose runs do not hold is not an error: it is a promise the kernels
    # would otherwise trust for vectorised loads, so it is verified and dropped if false.)
    if size == 0:
        return _NO_INDEX
    lo, hi = (int(v) for v in torch.aminmax(index))
    if lo < 0 or hi >= size:
        bad = int(((index < 0) | (index >= size)).nonzero()[0])
        raise IndexError(
            f"{op}: {name} has entries outside [0, {size}): {name}[{bad}] = {int(index[bad])} "
            f"(it must be a permutation of range({size}))"
        )
    counts = torch.bincount(index, minlength=size)
    if bool((counts != 1).any()):
        dup = int((counts > 1).nonzero()[0])
        raise ValueError(
            f"{op}: {name} has duplicated entries (feature {dup} appears {int(counts[dup])} times); "
            f"it must be a permutation of range({size}), each feature in exactly one group"
        )
    if bool(torch.equal(index, torch.arange(size, device=index.device))):
        return _NO_INDEX
    if block_size > 1:
        tiles = index.view(-1, block_size)
        start = tiles[:, :1]
        runs = start + torch.arange(block_size, device=index.device)
        if not (bool(torch.equal(tiles, runs)) and bool((start % block_size == 0).all())):
            return IndexArg(index, 1)  # the promised runs do not hold: element-level gathers
    return IndexArg(index, block_size)


def check_index(
    op: str,
    name: str,
    index: Optional[Tensor],
    size: int,
    device: torch.device,
    block_size: int,
    check_data: bool = True,
) -> IndexArg:
    """Check one index map of length ``size`` (None = identity) on ``device``.  Without
    ``check_data`` (fake tensors: no data to read) only its dtype, shape and device."""
    if index is None:
        return _NO_INDEX
    if not isinstance(index, Tensor):
        raise TypeError(f"{op}: {name} must be an int64 tensor or None, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise ValueError(f"{op}: {name} must be an int64 tensor, got dtype {index.dtype}")
    if index.dim() != 1 or index.numel() != size:
        raise ValueError(f"{op}: {name} must have shape ({size},), got {_shape(index)}")
    if index.device != device:
        raise ValueError(f"{op}: {name} is on {index.device} but the inputs are on {device}; all must share a device")
    if not check_data:
        return IndexArg(index, block_size)
    if index.device.type == "cpu" or index.is_inference():
        return _verdict(op, name, index.contiguous(), size, block_size)
    key = (index._version, index.data_ptr(), index.stride(0), block_size)
    hit = _cache.get(index)
    if hit is not None and hit[0] == key:
        return hit[1]
    info = _verdict(op, name, index.contiguous(), size, block_size)
    _cache[index] = (key, info)
    return info


def _check_values(op: str, values: object) -> tuple[int, int, int]:
    if not isinstance(values, Tensor) or values.dim() != 3 or not values.is_floating_point():
        got = f"{values.dtype} {_shape(values)}" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{op}: values must be a floating tensor of shape (G, m/G, n/G), got {got}")
    G, a, c = values.shape
    if min(G, a, c) < 1:
        raise ValueError(f"{op}: values must have G >= 1 groups and non-empty blocks, got shape {_shape(values)}")
    return G, a, c


def check_strided(op: str, name: str, t: Tensor) -> None:
    """The products read strided memory: a sparse or nested tensor is refused by name."""
    if t.layout != torch.strided or t.is_nested:
        layout = "torch.jagged (a nested tensor)" if t.is_nested else str(t.layout)
        raise ValueError(f"{op}: {name} has layout {layout}; the SAO ops take strided (dense) tensors")


def _check_activation(op: str, name: str, t: object, width: int, like: Tensor, like_name: str, features: str) -> None:
    """A (T, width) activation matching ``like`` in dtype and device; ``features`` names the width
    ("in_features" or "out_features")."""
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != width:
        got = _shape(t) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must have shape (T, {features}={width}), got {got}")
    check_strided(op, name, t)
    if t.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but {like_name} have {like.dtype}; they must match")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {like_name} are on {like.device}; all must share a device")


def _indices(op: str, in_index, out_index, G: int, a: int, c: int, device, block_size, check_data: bool) -> Problem:
    b = check_block_size(op, block_size, a, c)
    return Problem(
        G,
        a,
        c,
        check_index(op, "in_index", in_index, G * c, device, b, check_data),
        check_index(op, "out_index", out_index, G * a, device, b, check_data),
    )


def check_linear(x, values, in_index, out_index, bias, block_size, check_data: bool = True) -> Problem:
    """x (T, n), values (G, a, c), bias (m,) or None."""
    op = "linear"
    G, a, c = _check_values(op, values)
    _check_activation(op, "x", x, G * c, values, "values", "in_features")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dim() != 1 or bias.shape[0] != G * a:
            got = _shape(bias) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"{op}: bias must have shape ({G * a},) or be None, got {got}")
        if bias.dtype != values.dtype:
            raise TypeError(f"{op}: bias has dtype {bias.dtype} but values have {values.dtype}; they must match")
        if bias.device != values.device:
            raise ValueError(
                f"{op}: bias is on {bias.device} but values are on {values.device}; all must share a device"
            )
    return _indices(op, in_index, out_index, G, a, c, values.device, block_size, check_data)


def check_linear_grad_input(grad_out, values, in_index, out_index, block_size, check_data: bool = True) -> Problem:
    """grad_out (T, m), values (G, a, c)."""
    op = "linear_grad_input"
    G, a, c = _check_values(op, values)
    _check_activation(op, "grad_out", grad_out, G * a, values, "values", "out_features")
    return _indices(op, in_index, out_index, G, a, c, values.device, block_size, check_data)


def check_linear_grad_values(grad_out, x, in_index, out_index, groups, block_size, check_data: bool = True) -> Problem:
    """grad_out (T, m), x (T, n), ``groups`` = G dividing m and n."""
    op = "linear_grad_values"
    for name, t in (("grad_out", grad_out), ("x", x)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            got = _shape(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must be a 2-D (T, features) tensor, got {got}")
    check_strided(op, "grad_out", grad_out)
    check_strided(op, "x", x)
    if grad_out.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: grad_out (T, m) and x (T, n) must share T, got {_shape(grad_out)} and {_shape(x)}")
    if not x.is_floating_point() or grad_out.dtype != x.dtype:
        raise TypeError(f"{op}: grad_out ({grad_out.dtype}) and x ({x.dtype}) must share a floating dtype")
    if grad_out.device != x.device:
        raise ValueError(f"{op}: grad_out is on {grad_out.device} but x is on {x.device}; all must share a device")
    m, n = grad_out.shape[1], x.shape[1]
    if (
        isinstance(groups, bool)
        or not isinstance(groups, int)
        or groups < 1
        or m % groups
        or n % groups
        or m == 0
        or n == 0
    ):
        raise ValueError(f"{op}: groups={groups!r} must be a positive int dividing m={m} and n={n}")
    return _indices(op, in_index, out_index, groups, m // groups, n // groups, x.device, block_size, check_data)
