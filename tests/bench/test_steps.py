"""sao_kernels.bench.steps: the closures every benchmark times."""

import pytest
import torch
from torch import nn

from sao_kernels.bench.steps import forward_step, fwd_bwd_step, module_steps, train_step


def test_fwd_bwd_step_resets_grads_each_call():
    lin = nn.Linear(4, 3)
    x, dy = torch.randn(5, 4), torch.randn(5, 3)
    step = fwd_bwd_step(lin, x, dy, lin.parameters())
    step()
    first = lin.weight.grad.clone()
    step()
    torch.testing.assert_close(lin.weight.grad, first)  # not accumulated into 2 x first
    torch.testing.assert_close(first, dy.t() @ x)


def test_input_grad_is_optional():
    lin = nn.Linear(4, 3)
    fwd, fwd_bwd = module_steps(lin, torch.randn(5, 4), input_grad=False)
    fwd_bwd()
    assert lin.weight.grad is not None
    assert not fwd().requires_grad
    frozen = nn.Linear(4, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to differentiate"):
        fwd_bwd_step(frozen, torch.randn(2, 4), torch.randn(2, 3), frozen.parameters(), input_grad=False)


def test_forward_step_builds_no_graph_and_train_step_updates():
    lin = nn.Linear(4, 3)
    assert not forward_step(lin, torch.randn(2, 4))().requires_grad
    before = lin.weight.detach().clone()
    train_step(lin, torch.randn(8, 4), torch.optim.SGD(lin.parameters(), lr=0.1))()
    assert not torch.equal(before, lin.weight)
