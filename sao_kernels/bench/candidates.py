"""The candidate table of the sweep: what runs an op on a backend, and why one cannot.

Every candidate is a zero-argument callable built from the inputs of one sweep job; a
candidate that cannot run raises :class:`SkipCandidate` with the reason (never a string
return value).  The dense products are here too, so SAO and dense use the same closures
(``steps``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..dispatch import triton_interpreting
from .steps import forward_step, fwd_bwd_step

FORWARD_ONLY = ("bsr", "grouped_mm")
CONV_BACKENDS = ("torch", "masked_dense")


class SkipCandidate(Exception):
    """This candidate cannot run here; ``str(exc)`` says why."""


def static_skip_reason(op: str, backend: str, device: str) -> str | None:
    """Why ``backend`` can never run ``op`` on ``device`` (None if it may: the rest is found
    by running it once)."""
    if op.startswith("conv") and backend not in CONV_BACKENDS:
        return f"{backend} has no convolution (conv ops run on: {', '.join(CONV_BACKENDS)})"
    if backend in FORWARD_ONLY and op != "linear_fwd":
        return f"{backend} is forward-only (no backward products)"
    if backend == "triton" and device != "cuda" and not triton_interpreting():
        return (
            "triton is timed on CUDA only (on CPU it would time Triton's interpreter, not the kernels; "
            "TRITON_INTERPRET=1 set before the start runs it there anyway, for rehearsals)"
        )
    if backend == "native" and device != "cpu":
        return "the native kernels run CPU tensors"
    return None


def on_backend(name: str | None, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run inside ``with sao_kernels.backend(name)`` (None: as configured)."""
    from ..dispatch import backend

    def run():
        with backend(name) if name else contextlib.nullcontext():
            return fn()

    return run


def linear_candidate(op: str, backend: str, x, dy, blocks, bias) -> Callable[[], object]:
    """A zero-argument callable running ``op`` (linear_*) on ``backend``.

    Raises:
        SkipCandidate: with the reason, when this backend cannot run it.
    """
    from .. import ops  # noqa: F401  (registers torch.ops.sao_kernels)

    v, ii, oi, b = blocks.op_args()
    G = blocks.groups
    L = torch.ops.sao_kernels
    if backend in ("torch", "triton", "native", "masked_dense"):
        if op == "linear_fwd":
            fn = lambda: L.linear(x, v, ii, oi, bias, b)  # noqa: E731
        elif op == "linear_grad_input":
            fn = lambda: L.linear_grad_input(dy, v, ii, oi, b)  # noqa: E731
        elif op == "linear_grad_values":
            fn = lambda: L.linear_grad_values(dy, x, ii, oi, G, b)  # noqa: E731
        else:
            vr, br = v.detach().requires_grad_(True), bias.detach().requires_grad_(True)
            fn = fwd_bwd_step(lambda xin: L.linear(xin, vr, ii, oi, br, b), x, dy, (vr, br))
        return on_backend("dense" if backend == "masked_dense" else backend, fn)
    if op != "linear_fwd":
        raise SkipCandidate(f"{backend} is forward-only (no backward products)")
    if backend == "bsr":
        return _bsr_forward(x, blocks, bias)
    if backend == "grouped_mm":
        return _grouped_mm_forward(x, blocks, bias)
    raise SkipCandidate(f"unknown backend {backend!r}")


def _bsr_forward(x, blocks, bias) -> Callable[[], object]:
    _, ii, oi, _ = blocks.op_args()
    G, a, c = blocks.values.shape[:3]
    bs = math.gcd(64, a, c)
    if bs < 16 and x.device.type == "cuda":
        raise SkipCandidate(f"torch BSR on CUDA needs blocks >= 16, group sides are {a}x{c}")
    try:
        w = blocks.to_bsr(bs, permuted=True)
    except (RuntimeError, ValueError) as err:
        raise SkipCandidate(f"to_bsr failed: {err}") from None
    bias_g = bias if oi is None else bias.index_select(0, oi)

    def fn():
        xg = x if ii is None else x.index_select(1, ii)
        yg = (w @ xg.t()).t() + bias_g
        if oi is None:
            return yg
        out = torch.empty_like(yg)
        out[:, oi] = yg
        return out

    return fn


def _grouped_mm_forward(x, blocks, bias) -> Callable[[], object]:
    if not hasattr(torch, "_grouped_mm"):
        raise SkipCandidate("this torch has no torch._grouped_mm")
    if x.dtype != torch.bfloat16:  # its CUDA kernels' dtype; on CPU (torch >= 2.13 runs it) the same rows
        raise SkipCandidate("torch._grouped_mm is timed in bf16 only (its CUDA kernels' dtype)")
    v, ii, oi, _ = blocks.op_args()
    G, a, c = v.shape
    T = x.shape[0]
    vt = v.transpose(1, 2)  # (G, c, a) column-major, as _grouped_mm wants its second operand
    bias_g = (bias if oi is None else bias.index_select(0, oi)).view(G, 1, a)

    def fn():
        xg = (x if ii is None else x.index_select(1, ii)).view(T, G, c).transpose(0, 1).contiguous()
        yg = torch._grouped_mm(xg, vt) + bias_g
        out = torch.empty(T, G * a, device=x.device, dtype=x.dtype)
        if oi is None:
            out.view(T, G, a).copy_(yg.transpose(0, 1))
        else:
            out[:, oi.view(G, a)] = yg.transpose(0, 1)
        return out

    return fn


def dense_linear(op: str, x, dy, w, bias) -> Callable[[], object]:
    """The dense product (F.linear and its gradients) of the same shape and dtype."""
    if op == "linear_fwd":
        return lambda: F.linear(x, w, bias)
    if op == "linear_grad_input":
        return lambda: dy @ w
    if op == "linear_grad_values":
        return lambda: dy.t() @ x
    wr, br = w.detach().requires_grad_(True), bias.detach().requires_grad_(True)
    return fwd_bwd_step(lambda xin: F.linear(xin, wr, br), x, dy, (wr, br))


def module_op(op: str, forward, x, dy, params) -> Callable[[], object]:
    return forward_step(forward, x) if op.endswith("_fwd") else fwd_bwd_step(forward, x, dy, params)


def conv_candidate(op: str, backend: str, x, dy, layer) -> Callable[[], object]:
    """``op`` (conv2d_*) of the SAOConv2d ``layer`` on ``backend``; raises SkipCandidate."""
    if backend == "torch":  # gather + grouped convolution (cuDNN / oneDNN) on every device
        return module_op(op, layer, x, dy, layer.parameters())
    if backend == "masked_dense":

        def masked(inp):
            return F.conv2d(inp, layer.dense_weight(), layer.bias, layer.stride, layer.padding)

        return module_op(op, masked, x, dy, layer.parameters())
    raise SkipCandidate(f"{backend} has no convolution")


def warm_up(fn: Callable[[], object]) -> None:
    """Run ``fn`` once; a backend that refuses these inputs becomes a SkipCandidate."""
    try:
        fn()
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
        raise SkipCandidate(
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None
