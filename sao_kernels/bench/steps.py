"""The closures every benchmark times: forward, forward + backward, training step.

Written once here and used by the sweep, the per-layer report, the small-width suite and
the scripts in benchmarks/.  Each returns a zero-argument callable; the tensors it works on
are made once, outside the timed call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def forward_step(forward: Callable[[Tensor], object], x: Tensor) -> Callable[[], object]:
    """``forward(x)`` under ``torch.no_grad()`` (inference)."""

    def fwd() -> object:
        with torch.no_grad():
            return forward(x)

    return fwd


def fwd_bwd_step(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    grad_out: Tensor,
    params: Iterable[Tensor] = (),
    *,
    input_grad: bool = True,
) -> Callable[[], None]:
    """``forward(x).backward(grad_out)`` computing the grads of ``x`` and of ``params``.

    ``x`` is a detached copy that requires grad when ``input_grad`` (the input gradient is
    computed, as for a layer inside a network; False: as for a first layer); every call
    resets the grads to None first, so no call pays for accumulating into the previous
    call's gradient.

    Args:
        forward: (T, n) -> (T, m) (any shapes; ``grad_out`` matches the output).
        x: the input.  grad_out: the output's gradient.
        params: leaf tensors whose grads ``forward`` produces (weights, bias).
    """
    xr = x.detach().requires_grad_(input_grad)
    params = [p for p in params if p.requires_grad]
    if not input_grad and not params:
        raise ValueError("fwd_bwd_step: nothing to differentiate (input_grad=False and no params require grad)")

    def step() -> None:
        xr.grad = None
        for p in params:
            p.grad = None
        forward(xr).backward(grad_out)

    return step


def module_steps(
    module: nn.Module, x: Tensor, *, generator: torch.Generator | None = None, input_grad: bool = True
) -> tuple[Callable[[], object], Callable[[], None]]:
    """(forward, forward + backward) of ``module`` on ``x``; the output gradient is a fixed
    random tensor drawn once (from ``generator`` when given); see :func:`fwd_bwd_step`."""
    with torch.no_grad():
        out = module(x)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.device, out.dtype)
    return forward_step(module, x), fwd_bwd_step(module, x, grad_out, module.parameters(), input_grad=input_grad)


def train_step(model: nn.Module, x: Tensor, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """One training step: zero grads, forward, loss = mean(out^2) in float32, backward, step."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        optimizer.step()

    return step
