"""The native kernels' engines beyond the brgemm path (csrc/decode.cpp, csrc/lowp_bmm.cpp).

* decode (T <= 16, float32 / bfloat16 / float16): the weight-streaming GEMV against the float64
  reference at every T in 1..16, odd block sides (vector tails), block_size > 1, with and without
  bias and index maps, outputs poisoned (SAO_KERNELS_POISON=1) so an unwritten element shows;
  identical bits for any thread count.
* bfloat16 through the AVX512_BF16 micro-kernel (csrc/bf16_dot.cpp: the automatic choice
  without AMX where the tier has AVX512_BF16), bfloat16 / float16 through oneDNN's at::bmm (the
  automatic choice for float16 where the CPU has AVX512_FP16) and through brgemm, each forced with
  SAO_KERNELS_LOWP_GEMM: reference, poison, odd block sides (the pair tail), partial panels,
  1 vs 2 vs 3 threads; a bad value is refused, and so is dpbf16 below the avx512_bf16 tier.
* No stale weights: outside ``sk.frozen_weights()`` the kernels keep no packed copy of
  ``values`` between calls (see docs/cpu_engines.md; inside it: test_weight_cache.py), so every
  way of changing the weights (optimizer step, ``.data.mul_``,
  ``copy_`` under no_grad, a dtype change, a new tensor at a reused address) shows in the next
  call, on every engine.
"""

from __future__ import annotations

import contextlib
import gc
import os

import pytest
import torch
from _reference import assert_close_rel, make_case, reference

import sao_kernels as sk
from sao_kernels import _extension

OPS = torch.ops.sao_kernels
LOWP = (torch.float32, torch.bfloat16, torch.float16)

# Without the extension (SAO_KERNELS_NO_EXT=1, CI's fallback run) the engine tests are not
# defined, as in test_native.py; the freshness tests at the end run on whatever "auto" picks.
NATIVE = os.environ.get(_extension.ENV_NO_EXT, "0") != "1"


if NATIVE:

    def native_products(case, block_size=1):
        x, values, ii, oi, b, dy = case
        with sk.backend("native"):
            return (
                OPS.linear(x, values, ii, oi, b, block_size),
                OPS.linear_grad_input(dy, values, ii, oi, block_size),
                OPS.linear_grad_values(dy, x, ii, oi, values.shape[0], block_size),
            )

    def check_against_reference(case, dtype, block_size=1, forward_only=False):
        got = native_products(case, block_size)
        want = reference(*case)
        for name, g, w in list(zip(("y", "dx", "dv"), got, want))[: 1 if forward_only else 3]:
            assert_close_rel(g, w, dtype, name)

    # ------------------------------------------------------------------------------ decode
    @pytest.mark.parametrize("dtype", LOWP, ids=str)
    @pytest.mark.parametrize("T", range(1, 17))
    def test_decode_every_token_count(T, dtype, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        # c = 37: a 32-wide step and a tail; a = 11: two-row blocks and a single last row
        case = make_case(T, 3 * 11, 3 * 37, 3, dtype=dtype, seed=T)
        check_against_reference(case, dtype, forward_only=True)

    @pytest.mark.parametrize("dtype", LOWP, ids=str)
    @pytest.mark.parametrize(
        "T,m,n,G,block_size,in_perm,out_perm,bias",
        [
            (1, 64, 48, 2, 1, False, False, False),
            (16, 4 * 40, 4 * 16, 4, 4, True, True, True),  # runs of 4, c = 16 (no tail)
            (5, 2 * 8, 2 * 65, 2, 1, True, False, True),  # c = 65: two full AVX-512 steps and a tail
            (9, 200, 200, 1, 1, True, True, True),  # G = 1
            (16, 1024, 1024, 2, 8, True, False, True),  # parallel (above the serial threshold)
        ],
        ids=str,
    )
    def test_decode_shapes(T, m, n, G, block_size, in_perm, out_perm, bias, dtype, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        case = make_case(T, m, n, G, block_size, in_perm=in_perm, out_perm=out_perm, bias=bias, dtype=dtype, seed=3)
        check_against_reference(case, dtype, block_size)

    def products_with_threads(case, threads):
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            return native_products(case)
        finally:
            torch.set_num_threads(before)

    @pytest.mark.parametrize("dtype", LOWP, ids=str)
    @pytest.mark.parametrize("T", [1, 7, 16])
    def test_decode_same_bits_for_any_thread_count(T, dtype):
        case = make_case(T, 1024, 1024, 4, dtype=dtype, seed=5)
        one, two, three = (products_with_threads(case, k)[0] for k in (1, 2, 3))
        assert torch.equal(one, two) and torch.equal(one, three)

    # ------------------------------------------------------------------- low-precision engines
    # the engines this machine (under its tier cap) can force
    DOT = sk.cpu_tier() in ("avx512_bf16", "amx")
    LOWP_ENGINES = ["bmm", "brgemm"] + (["dpbf16"] if DOT else [])

    @pytest.mark.parametrize("engine", LOWP_ENGINES)
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
    @pytest.mark.parametrize(
        "T,m,n,G,block_size,in_perm,out_perm",
        [
            (17, 96, 90, 3, 1, True, True),
            (300, 136, 1040, 4, 1, True, False),
            (64, 256, 128, 2, 8, True, True),
            (33, 80, 80, 1, 1, False, False),
            (129, 128, 128, 4, 1, False, True),
            (41, 3 * 50, 3 * 37, 3, 1, False, False),  # odd c (pair tail) in place, panel of 50
            (23, 2 * 97, 2 * 33, 2, 1, True, True),  # odd c gathered; 97 = 48 + 48 + 1 columns
            (259, 2 * 97, 2 * 33, 2, 1, True, True),  # the same in row items (T >= 256), 3 rows left over
            (21, 2 * 40, 2 * 1100, 2, 1, True, True),  # groups over 4 KiB of pairs wide: grad-values' panels copied
            (260, 1024, 1024, 1, 1, True, True),  # row items with 2 MiB of V's panels: written non-temporally
        ],
        ids=str,
    )
    def test_lowp_engines(engine, dtype, T, m, n, G, block_size, in_perm, out_perm, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", engine)
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        case = make_case(T, m, n, G, block_size, in_perm=in_perm, out_perm=out_perm, dtype=dtype, seed=T)
        check_against_reference(case, dtype, block_size)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
    @pytest.mark.parametrize("T,m,n,G", [(512, 1024, 1024, 4), (4000, 64, 64, 1), (40, 512, 768, 2)], ids=str)
    def test_bmm_engine_same_bits_for_any_thread_count(T, m, n, G, dtype, monkeypatch):
        """oneDNN's matmul does not split K across threads for these shapes (grad-values: K = T):
        what csrc/lowp_bmm.cpp promises, checked."""
        monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", "bmm")
        case = make_case(T, m, n, G, in_perm=True, out_perm=False, dtype=dtype, seed=1)
        one, two, three = (products_with_threads(case, k) for k in (1, 2, 3))
        for name, a, b, c in zip(("y", "dx", "dv"), one, two, three):
            assert torch.equal(a, b) and torch.equal(a, c), name

    @pytest.mark.parametrize("T,m,n,G,bias", [(512, 1024, 1024, 4, True), (100, 96, 2 * 513, 2, False)], ids=str)
    def test_dot_forward_same_bits_for_any_thread_count(T, m, n, G, bias, monkeypatch):
        """The bfloat16 forward as this machine runs it (the micro-kernel where the tier has
        AVX512_BF16): each output element is one item's, in a fixed order."""
        case = make_case(T, m, n, G, in_perm=True, out_perm=True, bias=bias, dtype=torch.bfloat16, seed=2)
        one, two, three = (products_with_threads(case, k)[0] for k in (1, 2, 3))
        assert torch.equal(one, two) and torch.equal(one, three)

    def leaves(case):
        """The case with its floating tensors as fresh leaves that require grad."""
        return tuple(t.clone().requires_grad_() if t is not None and t.is_floating_point() else t for t in case)

    def backward_grads(case, block_size=1, act=None):
        """(dx, dv, db) of one backward through the op's autograd node (linear, or linear_act)."""
        x, values, ii, oi, b, dy = leaves(case)
        with sk.backend("native"):
            y = (
                OPS.linear(x, values, ii, oi, b, block_size)
                if act is None
                else OPS.linear_act(x, values, ii, oi, b, block_size, act)
            )
            y.backward(dy)
        return x.grad, values.grad, b.grad

    @pytest.mark.parametrize("engine", LOWP_ENGINES)
    @pytest.mark.parametrize(
        "T,m,n,G,out_perm", [(300, 2 * 97, 2 * 33, 2, True), (7, 96, 90, 3, False), (512, 1024, 512, 4, True)], ids=str
    )
    def test_bias_grad_of_the_backward(engine, T, m, n, G, out_perm, monkeypatch):
        """The node's bias gradient: from grad-values' own pass over dY on the micro-kernel
        (csrc/bf16_dot.cpp), dy.sum(0) elsewhere; both against float64 and (dv) the op."""
        monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", engine)
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        case = make_case(T, m, n, G, out_perm=out_perm, dtype=torch.bfloat16, seed=T)
        dx, dv, db = backward_grads(case)
        _, want_dx, want_dv, want_db = reference(*case)
        assert_close_rel(dx, want_dx, torch.bfloat16, "dx")
        assert_close_rel(dv, want_dv, torch.bfloat16, "dv")
        assert_close_rel(db, want_db, torch.bfloat16, "db")
        with sk.backend("native"):
            assert torch.equal(dv, OPS.linear_grad_values(case[5], case[0], case[2], case[3], G, 1))

    @pytest.mark.parametrize("act", [None, "tanh"])
    def test_bias_grad_same_bits_for_any_thread_count(act):
        case = make_case(300, 512, 512, 4, dtype=torch.bfloat16, seed=4)
        before = torch.get_num_threads()
        try:
            runs = []
            for k in (1, 2, 3):
                torch.set_num_threads(k)
                runs.append(backward_grads(case, act=act))
        finally:
            torch.set_num_threads(before)
        for name, one, two, three in zip(("dx", "dv", "db"), *runs):
            assert torch.equal(one, two) and torch.equal(one, three), name

    def test_backward_ops_stay_visible_to_dispatch_modes():
        """Under a Python dispatch mode (a FLOP counter, a logger) the node calls the ops, so
        that the mode sees grad-values and the bias sum; without one it may fuse them."""
        from torch.utils._python_dispatch import TorchDispatchMode

        class Seen(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.add(str(func.overloadpacket))
                return func(*args, **(kwargs or {}))

        case = make_case(64, 128, 128, 2, dtype=torch.bfloat16, seed=1)
        x, values, ii, oi, b, dy = leaves(case)
        with sk.backend("native"):
            y = OPS.linear(x, values, ii, oi, b, 1)
            with Seen() as seen:
                y.backward(dy)
        assert {"sao_kernels.linear_grad_values", "sao_kernels.linear_grad_input", "aten.sum"} <= seen.ops, seen.ops
        assert_close_rel(b.grad, reference(*case)[3], torch.bfloat16, "db")

    def test_dot_forward_flushes_what_vdpbf16ps_flushes(monkeypatch):
        """Inf and NaN propagate; an odd c never reads the element past a row (the pair tail)."""
        for engine in LOWP_ENGINES:
            monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", engine)
            x, v, ii, oi, b, _ = make_case(40, 2 * 48, 2 * 33, 2, in_perm=False, out_perm=False, dtype=torch.bfloat16)
            x = x.clone()
            x[:, 33] = float("inf")  # group 1's first column: must not leak into group 0 (c = 33)
            with sk.backend("native"):
                y = OPS.linear(x, v, ii, oi, b, 1)
            assert torch.isfinite(y[:, :48]).all(), engine
            assert not torch.isfinite(y[:, 48:]).all(), engine

    # a name that is no engine; dpbf16 below the tier that has its instruction
    REFUSED = [("fast", "SAO_KERNELS_LOWP_GEMM=fast.*'bmm', 'brgemm'")] + (
        [] if DOT else [("dpbf16", "SAO_KERNELS_LOWP_GEMM=dpbf16 needs AVX512_BF16")]
    )

    @pytest.mark.parametrize(("engine", "message"), REFUSED, ids=[e for e, _ in REFUSED])
    def test_bad_engine_is_refused(engine, message, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", engine)
        x, v, ii, oi, b, _ = make_case(32, 16, 16, 2, dtype=torch.bfloat16)
        with pytest.raises(ValueError, match=message):
            with sk.backend("native"):
                OPS.linear(x, v, ii, oi, b, 1)

    def test_build_info_names_the_engines():
        info = OPS._native_build_info()
        assert "decode (T <= 16)" in info and "bfloat16: " in info and "float16: " in info


# --------------------------------------------------------------------- never stale
def layer_reference(layer: sk.SAOLinear, x: torch.Tensor) -> torch.Tensor:
    b = layer.bias.detach().double() if layer.bias is not None else None
    W = layer.dense_weight().detach().double()
    y = x.double() @ W.T
    return y if b is None else y + b


def assert_fresh(layer, xs, dtype):
    with torch.inference_mode():
        for x in xs:
            assert_close_rel(layer(x), layer_reference(layer, x), dtype, f"T={x.shape[0]}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_results_follow_every_change_of_the_weights(dtype):
    gen = torch.Generator().manual_seed(0)
    layer = sk.SAOLinear(256, 128, groups=4, generator=gen).to(dtype)
    xs = [torch.randn(T, 256, generator=gen).to(dtype) for T in (1, 16, 300)]  # decode, decode, GEMM
    assert_fresh(layer, xs, dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(xs[2]).float().square().mean().backward()
    opt.step()  # in place, version counter bumped
    assert_fresh(layer, xs, dtype)
    layer.values.data.mul_(-2)  # in place through .data: no version bump
    assert_fresh(layer, xs, dtype)
    with torch.no_grad():
        layer.values.copy_(torch.randn(layer.values.shape, generator=gen).to(dtype))
    assert_fresh(layer, xs, dtype)
    other = torch.float32 if dtype != torch.float32 else torch.bfloat16
    layer.to(other)  # a new values tensor of another dtype
    assert_fresh(layer, [x.to(other) for x in xs], other)


@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen_weights"])
def test_a_new_values_tensor_at_a_reused_address(frozen):
    """Free the weights, allocate new ones of the same shape (the allocator tends to hand back the
    same address), assign them: the next call uses the new ones, also inside sk.frozen_weights()
    (whose entries hold a weak reference to the storage they were built from)."""
    gen = torch.Generator().manual_seed(1)
    layer = sk.SAOLinear(512, 512, groups=8, generator=gen)
    xs = [torch.randn(T, 512, generator=gen) for T in (1, 16, 64, 300)]
    with sk.frozen_weights() if frozen else contextlib.nullcontext():
        for _ in range(3):
            assert_fresh(layer, xs, torch.float32)
            shape = layer.values.shape
            del layer.values
            gc.collect()
            layer.values = torch.nn.Parameter(torch.randn(shape, generator=gen) / 8)
        assert_fresh(layer, xs, torch.float32)
