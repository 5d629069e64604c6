"""sao_kernels.diagnostics.orthogonality: the orthogonality error of layers, tensors, pruned
linears and convolutions.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sao_kernels as sk
from sao_kernels import diagnostics as dg


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ orthogonality
def test_orthogonality_error_of_layers_and_tensors():
    g = gen(6)
    assert dg.orthogonality_error(sk.SAOLinear(64, 128, sparsity=0.75, generator=g)) < 1e-5
    assert dg.orthogonality_error(sk.SAOLinear(128, 64, sparsity=0.75, generator=g)) < 1e-5  # out > in: W^T W
    lin = nn.Linear(32, 16)
    nn.init.orthogonal_(lin.weight, generator=g)
    assert dg.orthogonality_error(lin) < 1e-5
    assert dg.orthogonality_error(torch.eye(5)) == 0.0
    assert abs(dg.orthogonality_error(2.0 * torch.eye(5)) - 3.0) < 1e-12  # gain g: |g^2 - 1|
    blocks = sk.sao_blocks(32, 32, sparsity=0.5, generator=g, dtype=torch.float64)
    assert dg.orthogonality_error(blocks) < 1e-12
    # a random matrix is far from orthogonal
    assert dg.orthogonality_error(torch.randn(16, 16, generator=g)) > 0.5


def test_orthogonality_error_of_pruned_linear_sees_the_masked_weight():
    g = gen(7)
    lin = nn.Linear(32, 32)
    nn.init.orthogonal_(lin.weight, generator=g)
    prune.random_unstructured(lin, "weight", amount=0.75)
    assert dg.orthogonality_error(lin) > 0.3  # pruning an orthogonal matrix breaks orthogonality


def test_orthogonality_error_of_convolutions():
    g = gen(8)
    delta = sk.SAOConv2d(16, 16, 3, sparsity=0.75, init="delta", generator=g, dtype=torch.float64)
    eco = sk.SAOConv2d(16, 16, 3, sparsity=0.75, init="eco", generator=g, dtype=torch.float64)
    for layer in (delta, eco):
        assert dg.orthogonality_error(layer) < 1e-10  # (out, in*k*k) flattening, Parseval
    assert dg.orthogonality_error(delta, conv="centre") < 1e-10
    # SAO-Delta is an orthogonal operator on circular inputs of any size; SAO-ECO on the
    # kernel-size-periodic ones it is built for.
    assert dg.orthogonality_error(delta, conv="operator", input_size=8) < 1e-10
    assert dg.orthogonality_error(eco, conv="operator", input_size=3) < 1e-10
    # the operator check agrees with a brute-force circular convolution matrix
    w = eco.dense_weight().detach()
    n = 8
    basis = torch.eye(16 * n * n, dtype=torch.float64).view(-1, 16, n, n)
    with torch.no_grad():
        op = torch.nn.functional.conv2d(torch.nn.functional.pad(basis, (1, 1, 1, 1), mode="circular"), w)
    op = op.reshape(16 * n * n, -1)
    brute = float((op.T @ op - torch.eye(op.shape[1], dtype=torch.float64)).abs().max())
    spectral = dg.orthogonality_error(eco, conv="operator", input_size=n)
    # max-entry errors of the two bases differ, but both say "orthogonal" or both "not"
    assert (brute < 1e-8) == (spectral < 1e-8)
    # ECO's own setting: dilation n / k makes the kernel an orthogonal operator on n x n inputs
    assert dg.orthogonality_error(eco, conv="operator", input_size=9, dilation=3) < 1e-10
    assert dg.orthogonality_error(eco, conv="operator", input_size=9) > 1e-3  # the layer's dilation 1
    dil = sk.SAOConv2d(
        16,
        16,
        3,
        padding=3,
        dilation=3,
        padding_mode="circular",
        sparsity=0.75,
        init="eco",
        generator=g,
        dtype=torch.float64,
    )
    assert dg.orthogonality_error(dil, conv="operator", input_size=9) < 1e-10  # reads layer.dilation
    basis = torch.eye(16 * 81, dtype=torch.float64).view(-1, 16, 9, 9)
    with torch.no_grad():  # brute force: the circular dilated convolution as a matrix
        op = torch.nn.functional.conv2d(
            torch.nn.functional.pad(basis, (3, 3, 3, 3), mode="circular"), dil.dense_weight(), dilation=3
        ).reshape(16 * 81, -1)
    torch.testing.assert_close(op.T @ op, torch.eye(16 * 81, dtype=torch.float64))
    with pytest.raises(ValueError, match="input_size"):
        dg.orthogonality_error(eco, conv="operator")
    with pytest.raises(ValueError, match="dilated kernel"):
        dg.orthogonality_error(eco, conv="operator", input_size=4, dilation=2)
    with pytest.raises(ValueError, match="conv="):
        dg.orthogonality_error(eco, conv="nope")
