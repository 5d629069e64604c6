"""``sk.frozen_weights()``: the native forward's re-laid weights kept between calls
(csrc/weight_cache.cpp, sao_kernels/weight_cache.py).

* Same bits with and without the cache, on every forward engine and shape class (decode,
  panel items, row items, the brgemm V^T), with index maps, bias, activations, fused chains.
* Every change the module docstring promises to see shows in the next call inside the block:
  optimizer step, in-place ops and ``copy_`` under no_grad, a write through a view or through
  ``detach()``, ``load_state_dict``, a dtype change (a new tensor at a reused address:
  test_native_engines.py, with and without the block).  The one
  it does not see (a write through ``.data``) is pinned down too, so the documented limit stays
  true.
* The cache's life: empty outside the block and after an exception, kept by nested blocks, no
  entries for inference tensors, safe from several threads.
Without the native extension the block changes nothing (and holds nothing).
"""

from __future__ import annotations

import threading

import pytest
import torch
from _reference import assert_close_rel
from test_native_engines import LOWP, NATIVE, assert_fresh

import sao_kernels as sk


def cached() -> int:
    return sk.weight_cache_stats()["entries"]


def forwards(layer, xs):
    with torch.inference_mode():
        return [layer(x) for x in xs]


TOKENS = (1, 17, 64, 300)  # decode, panel items / brgemm, row items (T >= 256) / brgemm


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape", [(256, 128, 4), (96, 200, 2), (512, 512, 8)], ids=str)
def test_same_bits_with_and_without_the_cache(dtype, shape):
    n, m, G = shape
    gen = torch.Generator().manual_seed(0)
    layer = sk.SAOLinear(n, m, groups=G, generator=gen).to(dtype)
    xs = [torch.randn(T, n, generator=gen).to(dtype) for T in TOKENS]
    plain = forwards(layer, xs)
    with sk.frozen_weights():
        first, again = forwards(layer, xs), forwards(layer, xs)
        assert cached() <= (1 if NATIVE else 0)  # 0 where every T runs an engine that reads V in place
    for T, want, got1, got2 in zip(TOKENS, plain, first, again):
        assert torch.equal(got1, want), f"T={T}: the call that builds the entry"
        assert torch.equal(got2, want), f"T={T}: the calls that read it"
    assert cached() == 0


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_fused_chains_with_the_cache(dtype):
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(
        sk.SAOLinear(128, 256, groups=4, generator=gen),
        torch.nn.Tanh(),
        sk.SAOLinear(256, 128, groups=4, generator=gen, bias=False),
        torch.nn.ReLU(),
    ).to(dtype)
    fused = sk.fuse_chains(model, fold="always")
    x = torch.randn(300, 128, generator=gen).to(dtype)
    with torch.inference_mode():
        want = fused(x)
        with sk.frozen_weights():
            got = [fused(x) for _ in range(2)]
            assert cached() == (2 if NATIVE else 0)
    assert all(torch.equal(g, want) for g in got)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_every_tracked_change_shows_inside_the_block(dtype):
    gen = torch.Generator().manual_seed(0)
    layer = sk.SAOLinear(256, 128, groups=4, generator=gen).to(dtype)
    xs = [torch.randn(T, 256, generator=gen).to(dtype) for T in TOKENS]
    with sk.frozen_weights():
        assert_fresh(layer, xs, dtype)
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer(xs[3]).float().square().mean().backward()
        opt.step()  # in place, version counter bumped
        assert_fresh(layer, xs, dtype)
        with torch.no_grad():
            layer.values.mul_(-2)
        assert_fresh(layer, xs, dtype)
        with torch.no_grad():
            layer.values.copy_(torch.randn(layer.values.shape, generator=gen).to(dtype))
        assert_fresh(layer, xs, dtype)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        state["values"].neg_()
        layer.load_state_dict(state)  # copy_ into the parameter
        assert_fresh(layer, xs, dtype)
        with torch.no_grad():
            layer.values[1].zero_()  # through a view of the parameter: same counter
        assert_fresh(layer, xs, dtype)
        layer.values.detach().mul_(3)  # detach() shares the counter (unlike .data)
        assert_fresh(layer, xs, dtype)
        other = torch.float32 if dtype != torch.float32 else torch.bfloat16
        layer.to(other)  # a new values tensor of another dtype
        assert_fresh(layer, [x.to(other) for x in xs], other)


def test_a_write_through_data_is_not_seen_until_the_block_ends():
    """The documented limit (sao_kernels/weight_cache.py): ``.data`` has a version counter of
    its own.  Leaving the block drops the entries, so the next call is right again.  (Without
    the extension nothing is kept, so the write shows at once.)"""
    gen = torch.Generator().manual_seed(3)
    layer = sk.SAOLinear(256, 256, groups=4, generator=gen)
    x = torch.randn(300, 256, generator=gen)
    with sk.frozen_weights():
        before = forwards(layer, [x])[0]
        layer.values.data.mul_(2)
        after = forwards(layer, [x])[0]
        if NATIVE:
            assert torch.equal(after, before)  # stale, as documented
        else:
            assert_fresh(layer, [x], torch.float32)
    assert_fresh(layer, [x], torch.float32)


def test_the_cache_lives_as_long_as_the_outermost_block():
    gen = torch.Generator().manual_seed(4)
    layer = sk.SAOLinear(256, 256, groups=4, generator=gen)
    x = torch.randn(300, 256, generator=gen)
    assert cached() == 0
    forwards(layer, [x])
    assert cached() == 0  # off outside the block
    with sk.frozen_weights():
        with sk.frozen_weights():
            forwards(layer, [x])
        assert cached() == (1 if NATIVE else 0)  # the inner block's end keeps it
        assert sk.weight_cache_stats()["bytes"] >= (layer.values.numel() * 4 if NATIVE else 0)
    assert sk.weight_cache_stats() == {"bytes": 0, "entries": 0}
    with pytest.raises(RuntimeError, match="boom"):
        with sk.frozen_weights():
            forwards(layer, [x])
            raise RuntimeError("boom")
    assert cached() == 0


def test_inference_tensors_are_not_cached():
    """An inference tensor has no version counter: its layout is built per call, as outside."""
    gen = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        layer = sk.SAOLinear(256, 256, groups=4, generator=gen)
        x = torch.randn(300, 256, generator=gen)
        with sk.frozen_weights():
            y = layer(x)
            assert cached() == 0
            layer.values.mul_(-1)
            assert_close_rel(layer(x), -(y - layer.bias) + layer.bias, torch.float32)


def test_threads_share_the_cache():
    gen = torch.Generator().manual_seed(6)
    layers = [sk.SAOLinear(256, 256, groups=4, generator=gen) for _ in range(3)]
    x = torch.randn(300, 256, generator=gen)
    want = [forwards(layer, [x])[0] for layer in layers]
    errors = []

    def worker(k):
        try:
            for i in range(20):
                j = (i + k) % len(layers)
                if not torch.equal(forwards(layers[j], [x])[0], want[j]):
                    errors.append(f"thread {k} call {i} layer {j}")
        except Exception as e:  # reported below, not lost in the thread
            errors.append(repr(e))

    with sk.frozen_weights():
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cached() == (len(layers) if NATIVE else 0)
    assert not errors, errors
