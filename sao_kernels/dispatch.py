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
(``tests/test_dispatch.py`` checks that the two agree for every dtype).  The thread's
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
# the tensors' dtype and whose backend is usable here.  CPU: the rows of CPU_POLICY for this
# CPU's tier (below), then the composite.  CUDA: Triton for the tensor-core dtypes; float64 has
# no tensor-core path, so it runs the composite (cuBLAS dgemm).
AUTO: dict[str, tuple[tuple[str, tuple[torch.dtype, ...] | None], ...]] = {
    "cpu": (("native", NATIVE_DTYPES), ("torch", None)),
    "cuda": (("triton", (torch.float32, torch.bfloat16, torch.float16)), ("torch", None)),
}
AUTO_OTHER_DEVICES = "torch"

# Shape classes of a CPU problem (T tokens, flops = 2 T m n / G of one product): "decode" when
# T <= DECODE_TOKENS (bound by reading the weights), "small" under SMALL_FLOPS (no parallel
# region in the native kernels: csrc/native_kernels.cpp kParallelMinFlops), "large" from
# LARGE_FLOPS (4096^2 at T=512 and G <= 8: 2.1-8.6 GFLOP; 1024^2, T=512, G=2 is 0.27 GFLOP),
# else "train".
SHAPE_CLASSES = ("decode", "small", "train", "large")
DECODE_TOKENS = 16
SMALL_FLOPS = 4e6
LARGE_FLOPS = 1e9

# The CPU policy: (tiers, dtypes, shape classes, backend) rows, None = any; for CPU tensors
# under "auto" the first row matching the tier the native kernels use (sao_kernels.cpu_tier()),
# the dtype and the problem's shape class picks the backend, if usable (else the "cpu" row of
# AUTO decides).  Only measured cases have rows (benchmarks/bench_cpu_policy.py, results in
# benchmarks/results/cpu_policy_*.md); everything else keeps the native kernels, which won at
# every shape and dtype measured before tiers were a dimension (issue 13).
# Measured 2026-12-06, AMD EPYC Zen 4 (2 cores), each tier emulated with cpu.tier_env, native vs
# composite interleaved:
# * avx512_bf16, after the native bf16 engine moved to oneDNN bmm on packed group blocks and the
#   weight-streaming decode GEMV (quiet machine, load 1.6;
#   cpu_policy_amd-epyc-2c_2026-12-06_bmm-engine.md): native wins every cell: bf16 4096^2 T=512
#   G=4 fwd+bwd 1.52x [1.45-1.63] of the composite, 1024^2 G=8 3.45x, decode 4096^2 G=8 T=1
#   4.18x [4.05-4.30], T=16 2.25x; float32 1.11-2.82x; float16 3.0-4.1x at decode.  (Before that
#   engine, the composite won bf16 large and decode: cpu_policy_amd-epyc-2c_2026-12-06.md.)
# * avx2 and avx512 (loaded machine, load 11-14; cpu_policy_amd-epyc-2c_2026-12-06.md): native
#   wins every bfloat16 / float16 training shape (1.8-37x: the composite's bmm falls to slow
#   paths) and is at least even at decode; float32 is a tie or native on every tier.
# So no row departs from the native default today; the table stays the place for one.
CPU_POLICY: tuple[tuple[tuple[str, ...] | None, tuple[torch.dtype, ...] | None, tuple[str, ...] | None, str], ...] = (
    (None, NATIVE_DTYPES, None, "native"),
)


def shape_class(tokens: int | None, flops: float | None = None) -> str:
    """The CPU shape class of a problem (see SHAPE_CLASSES); unknown tokens: "train"."""
    if tokens is None or tokens < 0:
        return "train"
    if tokens <= DECODE_TOKENS:
        return "decode"
    if flops is None or flops < 0:
        return "train"
    return "small" if flops < SMALL_FLOPS else "large" if flops >= LARGE_FLOPS else "train"


@functools.cache
def _cpu_tier() -> str:
    # fixed for the process: the native kernels read SAO_KERNELS_CPU_ISA once
    from .cpu import cpu_tier

    return cpu_tier()


def cpu_policy(dtype: torch.dtype, cls: str, tier: str | None = None) -> str | None:
    """The backend CPU_POLICY picks for ``dtype`` and shape class ``cls`` on ``tier`` (default:
    this CPU's), or None when no row matches."""
    tier = tier or _cpu_tier()
    for tiers, dtypes, classes, name in CPU_POLICY:
        if (
            (tiers is None or tier in tiers)
            and (dtypes is None or dtype in dtypes)
            and (classes is None or cls in classes)
        ):
            return name
    return None


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


_CPP_DTYPES = {torch.float32: "Float", torch.bfloat16: "BFloat16", torch.float16: "Half", torch.float64: "Double"}


def sync_native_policy() -> None:
    """Hand the C++ CPU kernels the cells of CPU_POLICY (for this CPU's tier) where "auto"
    runs native, with the shape-class thresholds, so that they apply this very table (called
    at import; again after changing CPU_POLICY)."""
    if not _extension.available():
        return
    cells = [
        f"{_CPP_DTYPES[d]}:{c}"
        for d in NATIVE_DTYPES
        for c in SHAPE_CLASSES
        if cpu_policy(d, c) in (None, "native")  # None: the "cpu" row of AUTO, native first
    ]
    torch.ops.sao_kernels._set_cpu_policy(cells, DECODE_TOKENS, SMALL_FLOPS, LARGE_FLOPS)


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


def select(device: torch.device, dtype: torch.dtype, *, tokens: int | None = None, flops: float | None = None) -> str:
    """The concrete backend ("native", "triton", "torch" or "dense") for tensors of
    ``dtype`` on ``device`` under the thread's request; ``tokens`` and ``flops`` (of the
    product) give the CPU shape class (:func:`shape_class`).

    Raises:
        ValueError: the environment variable names no backend.
        RuntimeError / TypeError: a forced backend cannot run these tensors (why, and what
            it needs).
    """
    name = requested_backend()
    if name == "auto":
        if device.type == "cpu":
            chosen = cpu_policy(dtype, shape_class(tokens, flops))
            if chosen is not None and _usable(chosen, device):
                return chosen
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


sync_native_policy()
