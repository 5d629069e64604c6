"""Property-based probes (hypothesis) of the layer-level classes of issue 21, so CI keeps them:

* autocast: for random input / layer / autocast dtypes and leading dims, SAOLinear and
  SAOConv2d raise exactly when nn.Linear / nn.Conv2d with the same weight raise, and
  otherwise return the same dtype;
* activation checkpointing: a random stack of SAO layers, checkpointed per layer with a
  random mix of reentrant / non-reentrant / save_on_cpu, gives the plain gradients;
* inputs: strided, sparse or jagged-nested inputs of random shapes agree with nn.Linear.

The budget is fixed and the search derandomized (SAO_KERNELS_FUZZ_EXAMPLES raises it).
"""

from __future__ import annotations

import contextlib
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

import sao_kernels as sk

F64 = torch.float64
EXAMPLES = int(os.environ.get("SAO_KERNELS_FUZZ_EXAMPLES", "0"))
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def budget(default: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        derandomize=not EXAMPLES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _twins(conv: bool, G: int, a: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if conv:
        ours = sk.SAOConv2d(G * c, G * a, 3, padding=1, groups=G, activation="linear", generator=g, dtype=F64)
        dense = nn.Conv2d(G * c, G * a, 3, padding=1, dtype=F64)
    else:
        ours = sk.SAOLinear(G * c, G * a, groups=G, activation="linear", generator=g, dtype=F64)
        dense = nn.Linear(G * c, G * a, dtype=F64)
    ours.in_index.copy_(torch.randperm(G * c, generator=g))
    with torch.no_grad():
        dense.weight.copy_(ours.dense_weight())
        dense.bias.copy_(ours.bias)
    return ours, dense


def _dtype_or_raise(module, x, cast):
    ctx = contextlib.nullcontext() if cast is None else torch.autocast("cpu", dtype=cast)
    with ctx:
        try:
            return module(x).dtype
        except (RuntimeError, TypeError, ValueError):
            return "raises"


@budget(40)
@given(
    conv=st.booleans(),
    G=st.integers(1, 3),
    a=st.integers(2, 4),
    c=st.integers(2, 4),
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    x_dtype=st.sampled_from(FLOATS + [torch.int64, torch.int32]),
    layer_dtype=st.sampled_from(FLOATS),
    cast=st.sampled_from([None, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_autocast_raises_and_dtypes_as_the_dense_module(conv, G, a, c, lead, x_dtype, layer_dtype, cast, seed):
    ours, dense = _twins(conv, G, a, c, seed)
    ours, dense = ours.to(layer_dtype), dense.to(layer_dtype)
    shape = (lead[0], G * c, 4, 4) if conv else (*lead, G * c)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x = x.to(x_dtype) if x_dtype.is_floating_point else x.round().to(x_dtype)
    assert _dtype_or_raise(ours, x, cast) == _dtype_or_raise(dense, x, cast)


def _ckpt(layer, x, how):
    if how == "plain":
        return layer(x)
    if how == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu():
            return layer(x)
    return checkpoint(layer, x, use_reentrant=how == "reentrant")


@budget(15)
@given(
    widths=st.lists(st.sampled_from([4, 8, 12]), min_size=2, max_size=4),
    modes=st.lists(st.sampled_from(["plain", "reentrant", "non-reentrant", "save_on_cpu"]), min_size=3, max_size=3),
    T=st.integers(1, 6),
    double=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_checkpointing_mixes_give_plain_gradients(widths, modes, T, double, seed):
    g = torch.Generator().manual_seed(seed)
    layers = [
        sk.SAOLinear(i, o, groups=2, activation="linear", generator=g, dtype=F64) for i, o in zip(widths, widths[1:])
    ]
    for layer in layers:
        layer.out_index.copy_(torch.randperm(layer.out_features, generator=g))
    params = [p for layer in layers for p in layer.parameters()]
    x0 = torch.randn(T, widths[0], generator=g, dtype=F64)

    double = double and "reentrant" not in modes  # (reentrant checkpointing refuses autograd.grad)

    def grads(how):
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_()
        h = x
        for k, layer in enumerate(layers):
            h = torch.tanh(_ckpt(layer, h, how[k % len(how)]))
        if double:
            (gx,) = torch.autograd.grad(h.sum(), x, create_graph=True)
            gx.square().sum().backward()
            return [p.grad for p in params]
        h.square().sum().backward()
        return [x.grad] + [p.grad for p in params]

    for got, want in zip(grads(modes), grads(["plain"]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@budget(20)
@given(
    kind=st.sampled_from(["strided", "sparse", "jagged"]),
    G=st.integers(1, 3),
    a=st.integers(2, 4),
    c=st.integers(2, 4),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_input_layouts_agree_with_nn_linear(kind, G, a, c, lengths, seed):
    ours, dense = _twins(False, G, a, c, seed)
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, G * c, generator=g, dtype=F64) for n in lengths]
    if kind == "jagged":
        x = torch.nested.nested_tensor(parts, layout=torch.jagged)
        for got, want in zip(ours(x).unbind(), dense(x).unbind(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        return
    x = torch.cat(parts) * (torch.rand(sum(lengths), G * c, generator=g) < 0.5)
    x_in = x.to_sparse() if kind == "sparse" else x
    torch.testing.assert_close(ours(x_in), dense(x), rtol=1e-12, atol=1e-12)
