"""What a checkpoint holds for an SAO layer, and reading it without loading the weights.

A model with SAO layers saves, for the layer at prefix ``p``, the tensors

    p.values     (G, m/G, n/G) or (G, m/G, n/G, kh, kw)   floating
    p.in_index   (n,) int64
    p.out_index  (m,) int64
    p.bias       (m,)                                     optional

Everything needed to build the layer again is there (G and the block sides from ``values``'
shape, the kernel size, the block size from the runs of the indices, the bias from its key):
:func:`read_spec` reads it from a :class:`Source`, the names, shapes and dtypes of a state
dict's tensors or of checkpoint files (safetensors through their headers, ``.bin``
memory-mapped), which loads a tensor only when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..format import largest_block_size

__all__ = ["SAO_KEYS", "LayerSpec", "Source", "path_name", "read_spec", "sao_groups"]

SAO_KEYS = ("values", "in_index", "out_index")
_FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}


@dataclass(frozen=True)
class LayerSpec:
    """One SAO layer as a checkpoint stores it."""

    groups: int
    out_features: int
    in_features: int
    kernel_size: tuple[int, ...]  # () for a linear layer
    bias: bool
    block_size: int

    def describe(self) -> str:
        kind = f"{'x'.join(map(str, self.kernel_size))} convolution" if self.kernel_size else "linear layer"
        return f"an SAO {kind} {self.out_features}x{self.in_features} (out x in, G={self.groups})"


@dataclass(frozen=True)
class Source:
    """Names, shapes and dtypes of a checkpoint's tensors; ``read`` loads one on demand."""

    where: str
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    read: Callable[[str], Tensor]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], where: str) -> Source:
        tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
        return cls(
            where,
            {k: tuple(v.shape) for k, v in tensors.items()},
            {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
            tensors.__getitem__,
        )

    @classmethod
    def from_files(cls, files: Iterable[str]) -> Source:
        """Safetensors files are read through their headers (only the index tensors are
        loaded); a ``.bin`` is memory-mapped."""
        shapes, dtypes, readers = {}, {}, {}
        files = [str(f) for f in files]
        for file in files:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                handle = safe_open(file, framework="pt")
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    sl = handle.get_slice(key)
                    shapes[key], readers[key] = tuple(sl.get_shape()), handle.get_tensor
                    dtypes[key] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
            else:
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for key, value in loaded.items():
                    shapes[key], readers[key] = tuple(value.shape), loaded.__getitem__
                    dtypes[key] = str(value.dtype).removeprefix("torch.")
        return cls("from_pretrained: " + ", ".join(files), shapes, dtypes, lambda key: readers[key](key))


def path_name(path: str) -> str:
    """A module path for messages."""
    return repr(path) if path else "the root module"


def sao_groups(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """{module prefix: {leaf: key}} for every key whose last part is values / in_index / out_index."""
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        if leaf in SAO_KEYS:
            groups.setdefault(prefix, {})[leaf] = key
    return groups


def read_spec(source: Source, prefix: str, leaves: Mapping[str, str]) -> LayerSpec:
    """The layer stored at ``prefix``; ValueError naming the key when the stored set is not one."""
    dot = f"{prefix}." if prefix else ""
    vkey, ikey, okey, bkey = (f"{dot}{leaf}" for leaf in (*SAO_KEYS, "bias"))
    missing = [key for key in (vkey, ikey, okey) if key not in source.shapes]
    if missing:
        raise ValueError(
            f"{source.where}: {path_name(prefix)} holds {', '.join(sorted(leaves.values()))} but not "
            f"{', '.join(missing)}; an SAO layer is stored as {vkey}, {ikey}, {okey} (and optionally {bkey})"
        )
    vshape = source.shapes[vkey]
    if len(vshape) not in (3, 5) or min(vshape[:3]) < 1:
        raise ValueError(
            f"{source.where}: {vkey} has shape {vshape}; expected (G, m/G, n/G) for a linear layer or "
            "(G, m/G, n/G, kh, kw) for a convolution, with non-empty groups"
        )
    if source.dtypes[vkey] not in _FLOAT_DTYPES:
        raise ValueError(f"{source.where}: {vkey} has dtype {source.dtypes[vkey]}; expected a floating dtype")
    G, a, c = vshape[:3]
    for key, size in ((ikey, G * c), (okey, G * a)):
        if source.dtypes[key] != "int64" or source.shapes[key] != (size,):
            raise ValueError(
                f"{source.where}: {key} is {source.dtypes[key]} of shape {source.shapes[key]}; expected "
                f"int64 of shape ({size},) to match {vkey} of shape {vshape} (G={G})"
            )
    if bkey in source.shapes and source.shapes[bkey] != (G * a,):
        raise ValueError(
            f"{source.where}: {bkey} has shape {source.shapes[bkey]}; expected ({G * a},) to match "
            f"{vkey} of shape {vshape}"
        )
    # block_size is not stored, so the largest run width of the indices is taken: the layer
    # was built with a divisor of it, and every valid block_size gives the same products.
    block_size = largest_block_size(source.read(ikey).cpu(), source.read(okey).cpu(), a, c)
    return LayerSpec(G, G * a, G * c, tuple(vshape[3:]), bkey in source.shapes, block_size)
