"""torch.compile(fullgraph=True) of a small model built from SAOConv2d and SAOLinear:
one graph (the registered ops are opaque nodes, not graph breaks), same outputs and
gradients as eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn

from sao_kernels import SAOConv2d, SAOLinear

F64 = torch.float64

# emitted by inductor's own imports on torch 2.13
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = SAOConv2d(4, 8, 3, padding=1, groups=2, generator=g, dtype=F64)
        self.conv2 = SAOConv2d(
            8, 8, 3, stride=2, padding=1, padding_mode="circular", groups=4, init="eco", generator=g, dtype=F64
        )
        self.fc1 = SAOLinear(8 * 3 * 3, 24, groups=3, generator=g, dtype=F64)
        self.fc2 = SAOLinear(24, 48, groups=2, bias=False, generator=g, dtype=F64)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    eager = SmallNet()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    for batch in (2,):  # one shape: every compile costs seconds on 2 cores
        x = torch.randn(batch, 4, 6, 6, generator=torch.Generator().manual_seed(batch), dtype=F64)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye, rtol=1e-10, atol=1e-12)
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-10, atol=1e-12)
        for (name, pe), (_, pc) in zip(eager.named_parameters(), compiled_model.named_parameters(), strict=True):
            torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-10, atol=1e-12, msg=name)
        eager.zero_grad()
        compiled_model.zero_grad()
    torch._dynamo.reset()
