"""Which implementation runs the SAO ops: the one place that decides.

Backends:

* ``native``: the C++ CPU kernels of csrc/ (``sao_kernels._C``), CPU tensors.
* ``triton``: the Triton kernels, CUDA tensors (CPU tensors too under ``TRITON_INTERPRET=1``,
  which runs the very same kernels in Triton's interpreter: that is how CI tests them).
* ``torch``: the structured torch composite (gather + batched GEMM), any device.
* ``dense``: the masked-dense reference (the (m, n) weight, a dense matmul).  It saves
  nothing; tests and benchmarks use it as the reference.
* ``auto`` (default): the first usable row of :data:`AUTO` for the tensors' device type.

``SAO_KERNELS_BACKEND`` sets the requested backend for the process; the context manager
:func:`backend` overrides it for a block of code, per thread.

Who applies the policy: :func:`select`, called by the Python implementations of the ops
(CUDA tensors, and CPU tensors without the native extension or under a forced non-native
backend).  For CPU tensors the C++ CPU kernel of each op applies the ``cpu`` row of
:data:`AUTO` itself, so the default CPU path never enters Python: it runs ``native`` when
:func:`select` would, and hands every other case to the Python implementation
(``tests/test_backend.py`` checks that the two agree for every dtype).  The thread's
requested backend reaches C++ through ``torch.ops.sao_kernels._set_thread_backend``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Iterator

import torch

from . import _extension

BACKENDS = ("auto", "torch", "triton", "dense", "native")
ENV_VAR = "SAO_KERNELS_BACKEND"

# dtypes each backend computes in (accumulation is float32 or wider everywhere).
NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# The policy of "auto": per device type, the first (backend, dtypes) row whose dtypes hold
# the tensors' dtype and whose backend is usable here.  CPU: the native kernels won at every
# shape and dtype measured (benchmarks/results/, issue 13).  CUDA: Triton for the tensor-core
# dtypes; float64 has no tensor-core path, so it runs the composite (cuBLAS dgemm).
AUTO: dict[str, tuple[tuple[str, tuple[torch.dtype, ...] | None], ...]] = {
    "cpu": (("native", NATIVE_DTYPES), ("torch", None)),
    "cuda": (("triton", (torch.float32, torch.bfloat16, torch.float16)), ("torch", None)),
}
AUTO_OTHER_DEVICES = "torch"

_state = threading.local()


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}={name!r} is not a backend; allowed: {', '.join(map(repr, BACKENDS))}")
    return name


def requested_backend() -> str:
    """The backend asked for: the innermost :func:`backend` block of this thread, else the
    environment variable, else ``"auto"``."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _check(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


def _tell_native(stack: list[str]) -> None:
    # The C++ CPU kernels read the thread's request from their own thread-local ("" means
    # "read the environment variable").
    if _extension.available():
        torch.ops.sao_kernels._set_thread_backend(stack[-1] if stack else "")


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force a backend ("auto", "torch", "triton", "dense" or "native") inside a ``with``
    block, for this thread."""
    _check(name, "backend")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    _tell_native(stack)
    try:
        yield
    finally:
        stack.pop()
        _tell_native(stack)


@functools.cache
def triton_available() -> bool:
    """True when Triton is installed (imported lazily: CPU users never need it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors, interpreted."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton reads TRITON_INTERPRET when it and the kernels are imported (sao_kernels imports
# triton alongside): a value changed afterwards cannot take effect and fails inside Triton
# ("Cannot call @triton.jit'd outside of the scope of a kernel").
_INTERPRET_AT_IMPORT = triton_interpreting()


def _check_interpret_unchanged() -> None:
    if triton_interpreting() != _INTERPRET_AT_IMPORT:
        now = os.environ.get("TRITON_INTERPRET")
        raise RuntimeError(
            f"TRITON_INTERPRET changed after sao_kernels was imported (it was "
            f"{'1' if _INTERPRET_AT_IMPORT else 'unset or not 1'}, it is now {now!r}); Triton reads it at import, "
            "so set it before importing sao_kernels (and triton), e.g. TRITON_INTERPRET=1 python script.py"
        )


def _usable(name: str, device: torch.device) -> bool:
    if name == "native":
        return device.type == "cpu" and _extension.available()
    if name == "triton":
        return triton_available() and (device.type == "cuda" or triton_interpreting() and device.type == "cpu")
    return True


def _dtype_list(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def select(device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend ("native", "triton", "torch" or "dense") for tensors of
    ``dtype`` on ``device`` under the thread's request.

    Raises:
        ValueError: the environment variable names no backend.
        RuntimeError / TypeError: a forced backend cannot run these tensors (why, and what
            it needs).
    """
    name = requested_backend()
    if name == "auto":
        for candidate, dtypes in AUTO.get(device.type, ()):
            if (dtypes is None or dtype in dtypes) and _usable(candidate, device):
                if candidate == "triton":
                    _check_interpret_unchanged()
                return candidate
        return AUTO_OTHER_DEVICES
    if name == "native":
        _extension.require()
        if device.type != "cpu":
            raise RuntimeError(f"the native backend runs CPU tensors, got {device.type} tensors")
        if dtype not in NATIVE_DTYPES:
            raise TypeError(f"the native backend supports {_dtype_list(NATIVE_DTYPES)}; got {dtype}")
    elif name == "triton":
        if not triton_available():
            raise RuntimeError("the triton backend was requested but triton is not installed (pip install triton)")
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
            raise RuntimeError(
                f"the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 to run on CPU tensors; "
                f"got {device.type} tensors"
            )
        if dtype not in TRITON_DTYPES:
            raise TypeError(f"the triton backend supports {_dtype_list(TRITON_DTYPES)}; got {dtype}")
        _check_interpret_unchanged()
    return name


def resolve_backend(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Alias of :func:`select` (float32 unless ``dtype`` is given)."""
    return select(device, dtype)


def select_conv2d() -> str:
    """SAOConv2d's path: ``"dense"`` (the masked-dense reference) when that backend is
    requested, else ``"torch"``: a channel gather plus a grouped convolution (cuDNN /
    oneDNN), which every other backend shares (there is no native or Triton convolution)."""
    return "dense" if requested_backend() == "dense" else "torch"
