"""The native kernels' gathers and scatters are exact permutations.

An index map only reorders features, so a product with maps must equal, bit for bit, the same
product without maps on inputs permuted beforehand (torch indexing) with its output permuted
afterwards: the GEMMs see the same operands in the same order.  This pins every gather / scatter
path against torch's own indexing, beyond the float64 tolerance of the reference tests:

* float32 few-token forward (T*G*(a+c) < G*a*c, csrc/native_kernels.cpp): scattered outputs go
  through a group-ordered buffer and one row-wise scatter pass;
* bfloat16 / float16 through oneDNN's bmm (csrc/lowp_bmm.cpp): the gather into group order (four
  16-bit elements per store), the scatter of a result (four rows per index load), and the
  identity maps' strided views; and through brgemm (the gather into its panel).

Shapes have odd widths (vector tails), token counts that are not multiples of the 4- and
16-row blocks, aligned runs (block_size > 1), and problems on both sides of the serial
threshold; outputs are poisoned (SAO_KERNELS_POISON=1) and x is a non-contiguous view.
"""

from __future__ import annotations

import os

import pytest
import torch
from _reference import make_case

import sao_kernels as sk
from sao_kernels import _extension

OPS = torch.ops.sao_kernels
NATIVE = os.environ.get(_extension.ENV_NO_EXT, "0") != "1"

FEW_TOKEN_F32 = [  # (T, m, n, G, block_size): all satisfy T*G*(a+c) < G*a*c and T > 16
    (20, 200, 200, 2, 1),  # serial
    (33, 768, 192, 4, 1),  # an FFN up-projection's shape class (m > n: scattered outputs)
    (40, 1024, 256, 4, 1),  # above the serial threshold
    (24, 512, 256, 2, 8),  # aligned runs of 8
]
LOWP_SHAPES = [
    (17, 96, 90, 3, 1),  # c = 30, a = 32: 16-bit tails; 17 tokens: 4- and 16-row tails
    (131, 256, 264, 4, 1),  # c = 66; serial / parallel split
    (300, 1024, 520, 2, 1),  # parallel
    (64, 256, 128, 2, 8),  # aligned runs
]


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a column-major view (stride (1, T))."""
    return t.t().contiguous().t()


def products(x, v, ii, oi, b, dy, bs):
    with sk.backend("native"):
        G = v.shape[0]
        return (
            OPS.linear(x, v, ii, oi, b, bs),
            OPS.linear_grad_input(dy, v, ii, oi, bs),
            OPS.linear_grad_values(dy, x, ii, oi, G, bs),
        )


def check_permutation_exact(T, m, n, G, bs, dtype, forward_only=False):
    x, v, ii, oi, b, dy = make_case(T, m, n, G, bs, dtype=dtype, seed=T + m)
    y, dx, dv = products(non_contiguous(x), v, ii, oi, b, dy, bs)
    # the same products without maps, on permuted inputs
    y0, dx0, dv0 = products(x[:, ii], v, None, None, b[oi], dy[:, oi], bs)
    assert torch.equal(y[:, oi], y0), "forward"
    if not forward_only:
        assert torch.equal(dx[:, ii], dx0), "grad input"
        assert torch.equal(dv, dv0), "grad values"


if NATIVE:

    @pytest.mark.parametrize("T,m,n,G,block_size", FEW_TOKEN_F32, ids=str)
    def test_few_token_float32_forward_is_an_exact_permutation(T, m, n, G, block_size, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        a, c = m // G, n // G
        assert T > 16 and T * G * (a + c) < G * a * c  # the transposed few-token forward
        check_permutation_exact(T, m, n, G, block_size, torch.float32, forward_only=True)

    @pytest.mark.parametrize(
        "engine", ["bmm", "brgemm"] + (["dpbf16"] if sk.cpu_tier() in ("avx512_bf16", "amx") else [])
    )
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
    @pytest.mark.parametrize("T,m,n,G,block_size", LOWP_SHAPES, ids=str)
    def test_low_precision_maps_are_exact_permutations(T, m, n, G, block_size, dtype, engine, monkeypatch):
        monkeypatch.setenv("SAO_KERNELS_POISON", "1")
        monkeypatch.setenv("SAO_KERNELS_LOWP_GEMM", engine)
        check_permutation_exact(T, m, n, G, block_size, dtype)
