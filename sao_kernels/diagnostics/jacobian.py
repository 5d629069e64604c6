"""Jacobian singular values of a model, with the cost estimated (and limited) up front."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_FLOPS", "jacobian_singular_values"]

GiB = 2**30
DEFAULT_MAX_BYTES = 4 * GiB
DEFAULT_MAX_FLOPS = 1e12  # about a minute on a 2-core CPU, seconds on a workstation


def _svdvals_flops(m: int, n: int) -> float:
    """Floating-point operations of the singular values of one (m, n) matrix
    (Householder bidiagonalisation, 4 l k^2 - 4 k^3 / 3 with k = min, l = max; the
    bidiagonal QR iterations are O(k^2))."""
    k, l_ = min(m, n), max(m, n)
    return 4.0 * l_ * k * k - 4.0 * k**3 / 3.0


def _fmt_bytes(b: float) -> str:
    return f"{b / GiB:.3g} GiB"


@dataclass
class _JacobianPlan:
    out_features: int  # m, output entries per sample
    rows_per_pass: int  # r, output rows of every sample in one backward
    bytes: float  # peak estimate: Jacobians + one SVD + one pass's autograd state
    flops: float  # backward passes + SVDs
    pass_flops: float
    svd_flops: float


def _jacobian_plan(
    model, x: Tensor, method: str, max_rows: int, max_bytes: float | None, max_flops: float | None
) -> _JacobianPlan:
    """Measure the model on one and two samples (its output size, its per-sample autograd
    state, its forward flops) and plan the run; refuse one above the limits."""
    from torch.utils.flop_counter import FlopCounterMode

    B, in_shape = x.shape[0], tuple(x.shape[1:])
    n = math.prod(in_shape)
    one = x[:1].detach()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m = model(one).reshape(1, -1).shape[1]
    forward_flops = float(counter.get_total_flops())

    def saved_bytes(batch: int) -> int:
        """Bytes autograd keeps for a backward at this batch size (each storage once)."""
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        xb = one.expand(batch, *in_shape).clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(xb)
        return sum(seen.values())

    s1, s2 = saved_bytes(1), saved_bytes(2)
    per_sample = max(s2 - s1, 0) + (n + m) * x.element_size()  # + the expanded input and output
    fixed = max(s1 - per_sample, 0)
    jac_bytes = 8.0 * B * m * n  # float64, filled chunk by chunk
    svd_bytes = 8.0 * 3 * m * n  # one sample at a time: its copy and the LAPACK work space
    if method == "jacrev":  # vmap(jacrev) runs every sample's m rows at once
        rows = m
    else:
        rows = max(1, min(m, max_rows // max(B, 1)))
        if max_bytes is not None:  # fewer rows per pass rather than more memory
            room = max_bytes - jac_bytes - svd_bytes - fixed
            rows = max(1, min(rows, int(room // max(B * per_sample, 1))))
    total_bytes = jac_bytes + svd_bytes + fixed + B * rows * per_sample
    pass_flops = 3.0 * forward_flops * B * m  # a forward and a backward per (sample, row)
    svd_flops = B * _svdvals_flops(m, n)
    plan = _JacobianPlan(m, rows, total_bytes, pass_flops + svd_flops, pass_flops, svd_flops)
    over = []
    if max_bytes is not None and total_bytes > max_bytes:
        over.append(
            f"about {_fmt_bytes(total_bytes)} of memory, above max_bytes={max_bytes:.4g} ({_fmt_bytes(max_bytes)})"
        )
    if max_flops is not None and plan.flops > max_flops:
        over.append(
            f"about {plan.flops:.2g} flops ({pass_flops:.2g} for {B * m} backward passes of one sample, "
            f"{svd_flops:.2g} for the SVDs), above max_flops={max_flops:.2g}"
        )
    if over:
        raise ValueError(
            f"jacobian_singular_values: {B} Jacobian(s) of {m} x {n} (out x in per sample) would take "
            f"{' and '.join(over)}. Use fewer samples (x[:k]) or a smaller input, or raise the limits "
            "(None: no limit)."
        )
    return plan


def _jacobian_autograd(model: Callable[[Tensor], Tensor], x: Tensor, rows_per_pass: int, m: int) -> Tensor:
    """(B, m, n) float64 per-sample Jacobians by one batched backward per chunk of output rows.

    Each sample is repeated once per output coordinate r; the backward of
    ``sum_{b, r} y[b, r, r]`` then puts row r of sample b's Jacobian into the gradient of
    copy (b, r).  Plain autograd, so it works with any op that has a backward (the
    registered ``torch.ops.sao_kernels.*`` included), as long as the model treats the rows
    of a batch independently.
    """
    B = x.shape[0]
    in_shape = tuple(x.shape[1:])
    n = math.prod(in_shape)
    jac = torch.empty(B, m, n, dtype=torch.float64, device=x.device)
    for start in range(0, m, rows_per_pass):
        rows = torch.arange(start, min(start + rows_per_pass, m), device=x.device)
        r = rows.numel()
        xr = x.detach().unsqueeze(1).expand(B, r, *in_shape).reshape(B * r, *in_shape).clone().requires_grad_(True)
        with torch.enable_grad():
            y = model(xr).reshape(B, r, m)
            picked = y.gather(2, rows.view(1, r, 1).expand(B, r, 1))
            (grad,) = torch.autograd.grad(picked.sum(), xr)
        jac[:, start : start + r] = grad.reshape(B, r, n)
    return jac


def _jacobian_jacrev(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    from torch.func import jacrev, vmap

    in_shape = tuple(x.shape[1:])

    def f(v: Tensor) -> Tensor:
        return model(v.unsqueeze(0)).reshape(-1)

    try:
        jac = vmap(jacrev(f))(x)
    except RuntimeError as err:  # an autograd.Function without functorch support, etc.
        raise RuntimeError(
            "jacobian_singular_values(method='jacrev') failed under torch.func "
            f"({err}); some op of the model has no functorch rule: use method='autograd'"
        ) from err
    return jac.reshape(x.shape[0], -1, math.prod(in_shape))


def jacobian_singular_values(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    method: str = "autograd",
    max_rows: int = 8192,
    max_bytes: float | None = DEFAULT_MAX_BYTES,
    max_flops: float | None = DEFAULT_MAX_FLOPS,
) -> Tensor:
    """Singular values of the input-output Jacobian of ``model`` at each sample of ``x``.

    Cost, for B samples with n inputs and m outputs each: B*m backward passes of one
    sample (batched ``max_rows`` at a time) plus B SVDs of m x n (about
    4 max(m,n) min(m,n)^2 flops each), and 8*B*m*n bytes for the Jacobians.  Both are
    estimated before anything runs (the model is measured on one and two samples: its
    output size, its forward flops with ``FlopCounterMode``, the bytes autograd saves per
    sample) and a run above ``max_bytes`` or ``max_flops`` raises a ValueError naming the
    sizes and the limits.  Rows per pass are reduced to stay within ``max_bytes``.  Example:
    the README's TransformerEncoderLayer(512, 8) at x of shape (16, 10, 512) is 16 Jacobians
    of 5120 x 5120: about 2e13 flops (an hour or more on 2 cores) and 3.8 GiB, refused by
    default; x[:2] with a (2, 4, 512) input is about 7e10 flops.

    Args:
        model: a callable (B, *in) -> (B, *out) that treats the rows of a batch
            independently (put BatchNorm-like layers in eval mode first).  Input and
            output are flattened per sample, so a conv net's Jacobian is
            (C_out*H_out*W_out, C_in*H*W).
        x: (B, *in) the points at which to take the Jacobians.
        method: "autograd" (default: one batched backward per chunk of output rows; works
            with every op that has a backward) or "jacrev"
            (``torch.func.vmap(torch.func.jacrev(...))``: every row of every sample at
            once, so it needs B*m times the per-sample autograd memory; it works for
            models whose ops all have functorch rules, the sao_kernels ops included).
        max_rows: the largest batch (B x output rows) one backward of "autograd" runs.
        max_bytes: memory limit in bytes of the estimate (None: no limit).
        max_flops: compute limit of the estimate (None: no limit).

    Returns:
        (B, min(n_in, n_out)) float64, each row descending.  Take the model to float64
        first to measure deep, ill-conditioned stacks (float32 underflows well before the
        singular values reach 1e-38, and loses relative accuracy long before that).
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batch (B, *in) of at least 2 dims, got {getattr(x, 'shape', x)}")
    if method not in ("autograd", "jacrev"):
        raise ValueError(f"method={method!r} is not supported; allowed: 'autograd', 'jacrev'")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    for name, limit in (("max_bytes", max_bytes), ("max_flops", max_flops)):
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0
        ):
            raise ValueError(f"{name} must be a positive finite number or None, got {limit!r}")
    plan = _jacobian_plan(model, x, method, max_rows, max_bytes, max_flops)
    if method == "autograd":
        jac = _jacobian_autograd(model, x, plan.rows_per_pass, plan.out_features)
    else:
        jac = _jacobian_jacrev(model, x).detach().to(torch.float64)
    # One sample at a time: a batched call would copy all B matrices for LAPACK at once.
    return torch.stack([torch.linalg.svdvals(j) for j in jac.detach()])
