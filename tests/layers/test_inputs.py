"""Inputs nn.Linear accepts that are not plain strided tensors, and non-finite inputs.

* A jagged nested tensor: the product runs on its packed values and the output is a jagged
  nested tensor of the same structure (it used to fail with ``view(): cannot view shape
  (2, j1, 16)``).  A sparse input is densified (nn.Linear's output is dense too; it used to
  fail with "the native kernels were selected but the C++ CPU kernel did not run them").
  The ops themselves refuse non-strided layouts by name.
* NaN / inf: the SAO kernels never form 0 * x for an absent connection, so a non-finite input
  feature reaches only the outputs of its own group (the sparse semantics); the masked-dense
  reference (backend "dense") and a dense nn.Linear with the masked weight spread NaN to
  every output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import _extension

F64 = torch.float64
OPS = torch.ops.sao_kernels
SPARSE_BACKENDS = ["torch"] + (["native"] if _extension.available() else [])


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = sk.SAOLinear(16, 32, sparsity=0.75, generator=g, dtype=F64)
    layer.in_index.copy_(torch.randperm(16, generator=g))
    layer.out_index.copy_(torch.randperm(32, generator=g))
    dense = nn.Linear(16, 32, dtype=F64)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    return layer, dense


def test_jagged_nested_input_matches_nn_linear_with_gradients():
    layer, dense = _pair()
    parts = [torch.randn(3, 16, dtype=F64), torch.randn(5, 16, dtype=F64), torch.randn(1, 16, dtype=F64)]
    xs = [torch.nested.nested_tensor(parts, layout=torch.jagged, requires_grad=True) for _ in range(2)]
    y, want = layer(xs[0]), dense(xs[1])
    assert y.is_nested and y.layout == torch.jagged and y.shape[0] == 3 and y.shape[-1] == 32
    for got_part, want_part in zip(y.unbind(), want.unbind(), strict=True):
        torch.testing.assert_close(got_part, want_part, rtol=1e-12, atol=1e-12)
    y.values().square().sum().backward()
    want.values().square().sum().backward()
    torch.testing.assert_close(xs[0].grad.values(), xs[1].grad.values(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_strided_nested_input_is_refused_by_layout():
    layer, _ = _pair()
    x = torch.nested.nested_tensor([torch.randn(3, 16, dtype=F64), torch.randn(2, 16, dtype=F64)])
    with pytest.raises(ValueError, match="nested tensor of layout torch.strided.*torch.jagged"):
        layer(x)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_input_matches_nn_linear(layout):
    layer, dense = _pair()
    x = torch.randn(6, 16, dtype=F64) * (torch.rand(6, 16) < 0.3)
    xs = x.to_sparse() if layout == "coo" else x.to_sparse_csr()
    got = layer(xs)
    assert got.layout == torch.strided
    torch.testing.assert_close(got, dense(x), rtol=1e-12, atol=1e-12)


def test_ops_refuse_non_strided_activations_by_layout():
    layer, _ = _pair()
    v, ii, oi = layer.values.detach(), layer.in_index, layer.out_index
    xs = torch.randn(4, 16, dtype=F64).to_sparse()
    dys = torch.randn(4, 32, dtype=F64).to_sparse()
    with pytest.raises(ValueError, match="linear: x has layout torch.sparse_coo"):
        OPS.linear(xs, v, ii, oi, None, 1)
    with pytest.raises(ValueError, match="linear_grad_input: grad_out has layout torch.sparse_coo"):
        OPS.linear_grad_input(dys, v, ii, oi, 1)
    with pytest.raises(ValueError, match="linear_grad_values: grad_out has layout torch.sparse_coo"):
        OPS.linear_grad_values(dys, torch.randn(4, 16, dtype=F64), ii, oi, 4, 1)


def _group_outputs(layer, feature):
    """The output features connected to input ``feature`` (its group's rows)."""
    G, a, c = layer.values.shape
    g = int((layer.in_index == feature).nonzero()) // c
    return set(layer.out_index[g * a : (g + 1) * a].tolist())


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
def test_non_finite_inputs_reach_only_their_group(backend, dtype):
    layer, dense = _pair()
    layer, dense = layer.to(dtype), dense.to(dtype)
    x = torch.randn(3, 16, dtype=dtype)
    x[0, 5] = float("nan")
    x[1, 9] = float("inf")
    with sk.backend(backend), torch.no_grad():
        y = layer(x)
    for row, feature in ((0, 5), (1, 9)):
        bad = set((~torch.isfinite(y[row])).nonzero().flatten().tolist())
        assert bad == _group_outputs(layer, feature), (row, bad)
    assert torch.isfinite(y[2]).all()
    assert torch.isnan(y[0]).sum() == 8  # 32 outputs / G=4 groups
    # the masked-dense weight (nn.Linear, or the "dense" reference backend) forms 0 * NaN
    with torch.no_grad():
        assert torch.isnan(dense(x)[0]).all()
        with sk.backend("dense"):
            assert torch.isnan(layer(x)[0]).all()


def test_non_finite_values_stay_in_their_block():
    """The same for a NaN weight: only its block's outputs (for every token) are NaN."""
    layer, _ = _pair()
    with torch.no_grad():
        layer.values[2, 0, 0] = float("nan")
        y = layer(torch.randn(4, 16, dtype=F64))
    a = layer.values.shape[1]
    row = int(layer.out_index[2 * a])
    bad = (~torch.isfinite(y)).nonzero()
    assert set(bad[:, 1].tolist()) == {row} and bad.shape[0] == 4
