"""The native extension (csrc/ -> ``sao_kernels._C``) itself, and the package without it.

Its products are checked in the op test matrix (test_products.py, test_autograd.py,
test_errors.py run on the "native" backend).  Here: that it is built and loaded (this fails,
never skips, when it is missing: build it with ``pip install --no-build-isolation -e .``, or set
SAO_KERNELS_NO_EXT=1 to test the fallback), that without it the package runs the composite with
one log line and refuses an explicit "native"; bitwise-identical results for any thread count;
inference mode mixed with normal calls; per-thread scratch reuse and the large-request path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _reference import assert_close_rel, make_case, reference

import sao_kernels as sk
from sao_kernels import _extension

OPS = torch.ops.sao_kernels
NO_EXT = os.environ.get(_extension.ENV_NO_EXT, "0") == "1"
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

FALLBACK_SCRIPT = textwrap.dedent(
    """
    import io, logging, sys
    import torch
    stream = io.StringIO()
    logger = logging.getLogger("sao_kernels")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    import sao_kernels as sk
    from sao_kernels import _extension
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 24, generator=gen)
    v = torch.randn(3, 4, 8, generator=gen)
    ii = torch.randperm(24, generator=gen)
    b = torch.randn(12, generator=gen)
    y = sk.sao_linear(x, v, ii, None, b)  # "auto": the torch composite
    with sk.backend("torch"):
        want = sk.sao_linear(x, v, ii, None, b)
    assert torch.equal(y, want)
    xr = x.clone().requires_grad_(True)
    sk.sao_linear(xr, v, ii, None, b).sum().backward()
    assert xr.grad is not None
    assert _extension.available() is False
    assert "SAO_KERNELS_NO_EXT=1" in _extension.unavailable_reason(), _extension.unavailable_reason()
    assert "sao_kernels._C" not in sys.modules, "the built library was loaded"
    try:
        with sk.backend("native"):
            sk.sao_linear(x, v, ii, None, b)
    except RuntimeError as err:
        assert "native" in str(err) and "SAO_KERNELS_NO_EXT" in str(err), err
    else:
        raise AssertionError("the native backend ran without the extension")
    lines = [l for l in stream.getvalue().splitlines() if "native CPU kernels unavailable" in l]
    assert len(lines) == 1, stream.getvalue()
    print("FALLBACK-OK")
    """
)


def test_fallback_without_extension_in_a_subprocess():
    """SAO_KERNELS_NO_EXT=1: the built library is not loaded, "auto" runs the composite with one
    INFO line, and an explicit "native" raises (checked in every run, extension or not)."""
    env = dict(os.environ, **{_extension.ENV_NO_EXT: "1"})
    env.pop("SAO_KERNELS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FALLBACK-OK" in proc.stdout, proc.stdout + proc.stderr


def test_inference_mode_mixed_with_training_calls():
    """Train, evaluate under inference_mode, train again (the default path for bf16 used to fail
    with "Inplace update to inference tensor outside InferenceMode"); inference-mode indices in
    a differentiated call are copied for backward, not refused."""
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        layer = sk.SAOLinear(64, 64, groups=4, dtype=dtype)
        x = torch.randn(300, 64, dtype=dtype)
        layer(x).float().sum().backward()
        with torch.inference_mode():
            y_inf = layer(x)
            layer(torch.randn(8, 64, dtype=dtype))
        y = layer(x)
        y.float().sum().backward()
        torch.testing.assert_close(y.detach(), y_inf)
        with torch.inference_mode():
            xi = torch.randn(8, 64, dtype=dtype)
        with torch.no_grad():
            layer(xi)
    with torch.inference_mode():
        ii = torch.randperm(64)
    v = torch.randn(4, 16, 16, requires_grad=True)
    OPS.linear(torch.randn(8, 64), v, ii, None, None, 1).sum().backward()
    assert v.grad is not None


if NO_EXT:

    def test_fallback_in_this_process():
        assert not _extension.available()
        x, v, ii, oi, b, dy = make_case(9, 24, 36, 3, bias=True)
        y = OPS.linear(x, v, ii, oi, b, 1)
        torch.testing.assert_close(y, reference(x, v, ii, oi, b, dy)[0], rtol=1e-12, atol=1e-12)
        with pytest.raises(RuntimeError, match="SAO_KERNELS_NO_EXT"):
            with sk.backend("native"):
                OPS.linear(x, v, ii, oi, b, 1)

else:

    def test_extension_is_built_and_loaded():
        """Fails (never skips) when the extension is missing."""
        assert _extension.available(), (
            f"the native CPU kernels are not available: {_extension.unavailable_reason()}; build them with "
            "pip install --no-build-isolation -e . (or set SAO_KERNELS_NO_EXT=1 to test the fallback)"
        )
        assert "sao_kernels._C" in sys.modules
        info = OPS._native_build_info()
        assert "float32 GEMM" in info and "bfloat16" in info

    def native_products(x, values, ii, oi, b, dy, block_size=1):
        G = values.shape[0]
        with sk.backend("native"):
            return (
                OPS.linear(x, values, ii, oi, b, block_size),
                OPS.linear_grad_input(dy, values, ii, oi, block_size),
                OPS.linear_grad_values(dy, x, ii, oi, G, block_size),
            )

    # Shapes on both sides of the serial threshold (csrc: kParallelMinFlops), the transposed
    # few-token forward, odd K (no AMX packing), token / K / N block tails.
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize(
        "T,m,n,G",
        [
            (20, 200, 200, 2),
            (300, 136, 1040, 4),
            (200, 520, 600, 2),
            (9, 64, 64, 1),
            (129, 128, 128, 4),
            (515, 96, 90, 3),
        ],
        ids=str,
    )
    def test_same_bits_with_one_and_two_threads(T, m, n, G, dtype):
        case = make_case(T, m, n, G, in_perm=True, out_perm=False, bias=True, dtype=dtype, seed=9)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = native_products(*case)
            torch.set_num_threads(2)
            two = native_products(*case)
            again = native_products(*case)
        finally:
            torch.set_num_threads(before)
        for name, a, b, c in zip(("y", "dx", "dv"), one, two, again):
            assert torch.equal(a, b), f"{name}: 1 vs 2 threads differ"
            assert torch.equal(b, c), f"{name}: two runs differ"

    def test_scratch_reuse_across_sizes_and_threads():
        """Per-thread scratch buffers grow and are reused: alternating sizes stay exact."""
        cases = [
            make_case(T, m, n, G, dtype=torch.float32, seed=T)
            for T, m, n, G in [(300, 256, 512, 4), (7, 48, 24, 2), (129, 512, 256, 8), (3, 48, 24, 2)]
        ]
        for _ in range(2):
            for case in cases:
                want = reference(*case)
                for name, got, w in zip(("y", "dx", "dv"), native_products(*case), want):
                    assert_close_rel(got, w, torch.float32, name)

    def test_scratch_above_64_mib_is_allocated_per_call():
        """An activation over the per-thread scratch cap (64 MiB) takes the per-call allocation
        path: the results equal the composite's."""
        T, n, G = 4200, 4096, 16  # X: 4200 x 4096 float32 = 69 MB
        g = torch.Generator().manual_seed(0)
        x = torch.randn(T, n, generator=g)
        dy = torch.randn(T, n, generator=g)
        v = torch.randn(G, n // G, n // G, generator=g) / 16
        ii = torch.randperm(n, generator=g)
        got = native_products(x, v, ii, None, None, dy)
        with sk.backend("torch"):
            want = (
                OPS.linear(x, v, ii, None, None, 1),
                OPS.linear_grad_input(dy, v, ii, None, 1),
                OPS.linear_grad_values(dy, x, ii, None, G, 1),
            )
        for name, a, b in zip(("y", "dx", "dv"), got, want):
            torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-3, msg=name)
