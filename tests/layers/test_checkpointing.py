"""Activation checkpointing and saved-tensor hooks around SAO layers.

Non-reentrant checkpointing (and ``save_on_cpu``) install saved-tensor hooks that allow one
unpack per saved tensor and backward; the C++ backward nodes used to unpack the index maps
once per gradient they computed (``CheckpointError: Unpack is being triggered for a tensor
that was already unpacked once``).  Every form of checkpointing must give the gradients of
the un-checkpointed model, with the native extension and without it (a subprocess runs this
module under ``SAO_KERNELS_NO_EXT=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import sao_kernels as sk

F64 = torch.float64


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        sk.SAOLinear(16, 32, sparsity=0.75, generator=g, dtype=F64),
        nn.Tanh(),
        sk.SAOLinear(32, 24, sparsity=0.5, generator=g, dtype=F64),
        nn.Tanh(),
        sk.SAOLinear(24, 8, sparsity=0.5, bias=False, generator=g, dtype=F64),
    )


def _grads(model, x, run):
    """Gradients of every parameter and of the input after backward of run(model, x)."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    run(model, x).square().sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


RUNS = {
    "non-reentrant": lambda m, x: checkpoint(m, x, use_reentrant=False),
    "reentrant": lambda m, x: checkpoint(m, x, use_reentrant=True),
    "per-layer non-reentrant": lambda m, x: _per_layer(m, x),
    "sequential non-reentrant": lambda m, x: checkpoint_sequential(m, 2, x, use_reentrant=False),
    "sequential reentrant": lambda m, x: checkpoint_sequential(m, 3, x, use_reentrant=True),
    "save_on_cpu": lambda m, x: _save_on_cpu(m, x),
}


def _per_layer(model, x):
    for layer in model:
        x = checkpoint(layer, x, use_reentrant=False)
    return x


def _save_on_cpu(model, x):
    with torch.autograd.graph.save_on_cpu():
        return model(x)


@pytest.mark.parametrize("how", list(RUNS))
def test_checkpointed_gradients_equal_plain(how):
    model, x = _model(), torch.randn(5, 16, dtype=F64)
    want = _grads(model, x, lambda m, x: m(x))
    got = _grads(model, x, RUNS[how])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT])
def test_distributed_checkpoint_wrapper(impl):
    model, x = _model(), torch.randn(4, 16, dtype=F64)
    want = _grads(model, x, lambda m, x: m(x))
    wrapped = nn.Sequential(*(checkpoint_wrapper(layer, checkpoint_impl=impl) for layer in model))
    got = _grads(wrapped, x, lambda m, x: m(x))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_each_saved_tensor_is_unpacked_once_per_backward():
    """Count pack / unpack of saved-tensor hooks: every packed tensor is unpacked at most once
    in a backward that needs all gradients (x, values and bias)."""
    layer = sk.SAOLinear(16, 32, sparsity=0.75, dtype=F64)
    layer.in_index.copy_(torch.randperm(16))  # non-identity maps: both are saved
    x = torch.randn(3, 16, dtype=F64, requires_grad=True)
    packed, unpacks = [], {}

    def pack(t):
        packed.append(t)
        return len(packed) - 1

    def unpack(i):
        unpacks[i] = unpacks.get(i, 0) + 1
        return packed[i]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = layer(x)
    y.sum().backward()
    assert len(packed) >= 4  # x, values, in_index, out_index
    assert unpacks and max(unpacks.values()) == 1, unpacks
    assert x.grad is not None and layer.values.grad is not None and layer.bias.grad is not None


def test_double_backward_inside_a_checkpoint():
    """A gradient penalty (create_graph=True) through a non-reentrant checkpoint equals the
    un-checkpointed one, to second order."""
    model, x0 = _model(), torch.randn(4, 16, dtype=F64)

    def penalty(run):
        x = x0.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        (gx,) = torch.autograd.grad(run(model, x).sum(), x, create_graph=True)
        gx.square().sum().backward()
        return [p.grad for p in model.parameters()]

    want = penalty(lambda m, x: m(x))
    got = penalty(RUNS["non-reentrant"])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_conv_under_non_reentrant_checkpoint():
    conv = sk.SAOConv2d(8, 16, 3, sparsity=0.5, padding=1, dtype=F64)
    x = torch.randn(2, 8, 5, 5, dtype=F64)
    want = _grads(conv, x, lambda m, x: m(x))
    got = _grads(conv, x, RUNS["non-reentrant"])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_this_module_passes_without_the_native_extension():
    """The Python autograd path (builds without the extension) under the same checks."""
    env = dict(os.environ, SAO_KERNELS_NO_EXT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "not without_the"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
