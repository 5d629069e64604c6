"""What the Triton launchers share: the device description, launch steps, dtypes, precision.

Kernels are compiled for CUDA tensors, or run by Triton's interpreter on CPU tensors when
``TRITON_INTERPRET=1`` is set before import.  Two interpreter traps (triton 3.9) are worked
around here rather than by skipping tests: ``tl.dot`` on bfloat16 tiles multiplies raw
bits, so tiles are upcast to float32 when interpreting (``UPCAST``); and a float64 ``tl.dot``
needs a float64 accumulator (``ACC_FP64``).

Every launcher is split in two: a *planner* that turns the (checked) tensors and a
:class:`Device` into a list of :class:`Step` (which kernel, its arguments and constexprs,
``num_warps`` / ``num_stages``, grid), and :func:`run_steps` that launches them.  Planners need
no GPU (meta tensors and a ``Device(arch, sm_count)`` will do), which is how
``sao_kernels.ops.triton.aot`` compiles, for sm_80 and sm_90 on a CPU machine, exactly the
configurations the launchers choose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT32_MAX = 2**31 - 1


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """``SAO_KERNELS_AUTOTUNE=1`` benchmarks every tile config on the first call of each
    shape class and keeps the fastest.  Off by default, so that a first call is not slow:
    the heuristic tile choice (``tiles.py``) is used instead."""
    return os.environ.get("SAO_KERNELS_AUTOTUNE", "0") == "1" and not interpreting()


def check_dtype(op: str, dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: the triton backend supports {', '.join(map(str, SUPPORTED_DTYPES))}; got {dtype}")


# --------------------------------------------------------------------------- the device
@dataclasses.dataclass(frozen=True)
class Device:
    """What the tile and path choices depend on.  ``arch`` is the compute capability as an
    int (80 = sm_80, 90 = sm_90); ``arch == 0`` means Triton's interpreter on CPU tensors."""

    arch: int
    sm_count: int

    @property
    def interpreter(self) -> bool:
        return self.arch == 0


INTERPRETER = Device(arch=0, sm_count=1)


def device_of(t: Tensor) -> Device:
    """The :class:`Device` that runs kernels on ``t`` (the tensor's own GPU, not the current one)."""
    if t.device.type != "cuda":
        return INTERPRETER
    return _cuda_device(t.device.index if t.device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_device(index: int) -> Device:
    props = torch.cuda.get_device_properties(index)
    return Device(arch=10 * props.major + props.minor, sm_count=props.multi_processor_count)


@contextlib.contextmanager
def device_guard(t: Tensor) -> Iterator[None]:
    """Launch on ``t``'s GPU (Triton launches on the current device), whatever is current."""
    if t.device.type == "cuda":
        with torch.cuda.device(t.device):
            yield
    else:
        yield


# --------------------------------------------------------------------------- arithmetic
def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for ``dtype`` inputs: float32 runs tf32 tensor cores only
    when torch allows tf32 matmuls (``torch.backends.cuda.matmul.allow_tf32``, off by default;
    ``torch.set_float32_matmul_precision("high")`` turns it on), else exact IEEE fp32 FMAs."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


def arithmetic_flags(dtype: torch.dtype, device: Device, precision: str) -> dict:
    """Constexpr kwargs of a kernel's ``tl.dot``: accumulator dtype, upcast, input precision."""
    return dict(
        ACC_FP64=dtype == torch.float64,
        UPCAST=device.interpreter and dtype in (torch.bfloat16, torch.float16),
        PRECISION=precision,
    )


def max_offset(t: Tensor) -> int:
    """The largest element offset a kernel computes into ``t`` (sum of (size - 1) * |stride|)."""
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True) if s > 0)


def token_alignment(T: int, *operands: Tensor) -> int:
    """The kernels' T_ALIGN: for token-contiguous operands (strides (1, T), "feature-major"), the
    largest power of two <= 16 dividing T, so masks along T stay constant over vector-wide
    groups of tokens; 1 for row-major operands (nothing to vectorise along T)."""
    if not any(t.dim() == 2 and t.stride(0) == 1 and t.shape[1] > 1 for t in operands):
        return 1
    return next(a for a in (16, 8, 4, 2, 1) if T % a == 0)


def stride_align(stride: int) -> int:
    """The ALIGN constexpr of a runtime stride (or the GRAIN of a size): its largest power-of-two
    factor up to 16 (1 for a unit or odd stride, where no hint applies)."""
    if stride == 1 or stride == 0:
        return 1
    return next(a for a in (16, 8, 4, 2, 1) if stride % a == 0)


def needs_wide_offsets(*tensors: Optional[Tensor]) -> bool:
    """True when some element offset passes int32: then kernels compute offsets in int64."""
    return any(t is not None and max_offset(t) > INT32_MAX for t in tensors)


# --------------------------------------------------------------------------- launch steps
@dataclasses.dataclass
class Step:
    """One kernel launch: ``kernel[grid(tiles)](**args, **tiles, num_warps=..., num_stages=...)``.

    ``args`` holds every kernel parameter but the tile constexprs (pointers, sizes, strides,
    flags); ``tiles`` (a ``tiles.Tiles``) the heuristic BLOCK_* constexprs, warps and stages;
    ``grid`` maps the tile constexprs to the launch grid.  The same object describes the launch
    and the ahead-of-time compile (``aot``).  With ``tuned`` (a ``triton.autotune`` wrapper of
    ``kernel``, ``SAO_KERNELS_AUTOTUNE=1``) the autotuner picks the tiles instead.
    """

    kernel: Any
    args: dict
    tiles: Any
    grid: Callable[[dict], tuple]
    tuned: Any = None

    def run(self) -> None:
        if self.tuned is not None:
            self.tuned[self.grid](**self.args)
        else:
            blocks = self.tiles.constexprs()
            self.kernel[self.grid(blocks)](
                **self.args, **blocks, num_warps=self.tiles.num_warps, num_stages=self.tiles.num_stages
            )


def run_steps(steps: Sequence[Step], on: Tensor) -> None:
    """Launch ``steps`` in order on ``on``'s device."""
    with device_guard(on):
        for step in steps:
            step.run()
