"""Tests for sao_kernels.format: the compact grouped block format and its conversions.

The reference dense weight is written here by explicit loops over the defining formula
    W[out_index[g*a + i], in_index[g*c + k]] = values[g, i, k]
in float64; the code under test is never its own reference.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sao_kernels.format import GroupedBlockFormat, from_dense, from_pruned
from sao_kernels.init import sao_blocks


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_dense(values: torch.Tensor, in_index: torch.Tensor, out_index: torch.Tensor) -> torch.Tensor:
    v = values.detach().to(torch.float64)
    G, a, c = v.shape[:3]
    W = torch.zeros(G * a, G * c, *v.shape[3:], dtype=torch.float64)
    for g in range(G):
        for i in range(a):
            for k in range(c):
                W[int(out_index[g * a + i]), int(in_index[g * c + k])] = v[g, i, k]
    return W


def reference_mask(in_index, out_index, G) -> torch.Tensor:
    m, n = out_index.numel(), in_index.numel()
    a, c = m // G, n // G
    mask = torch.zeros(m, n, dtype=torch.bool)
    for g in range(G):
        for i in range(a):
            for k in range(c):
                mask[int(out_index[g * a + i]), int(in_index[g * c + k])] = True
    return mask


def tiled_perm(n: int, b: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) made of aligned runs of b features."""
    tiles = torch.randperm(n // b, generator=g)
    return (tiles[:, None] * b + torch.arange(b)).flatten()


def random_format(G, a, c, kernel=(), b=1, seed=0, dtype=torch.float64) -> GroupedBlockFormat:
    g = gen(seed)
    values = torch.randn(G, a, c, *kernel, generator=g, dtype=torch.float64).to(dtype)
    return GroupedBlockFormat(values, tiled_perm(G * c, b, g), tiled_perm(G * a, b, g), b)


FORMAT_SHAPES = [
    {"G": 1, "a": 3, "c": 5},
    {"G": 4, "a": 2, "c": 3},
    {"G": 3, "a": 5, "c": 1},
    {"G": 6, "a": 1, "c": 1},
    {"G": 2, "a": 4, "c": 8, "b": 4},
    {"G": 4, "a": 2, "c": 2, "kernel": (3, 3)},
    {"G": 2, "a": 3, "c": 4, "kernel": (3, 5)},
    {"G": 2, "a": 4, "c": 2, "kernel": (1, 1), "b": 2},
]


# ====================================================================== basics
@pytest.mark.parametrize("spec", FORMAT_SHAPES, ids=str)
def test_to_dense_and_mask_match_the_formula(spec):
    fmt = random_format(**spec, seed=1)
    G, a, c = spec["G"], spec["a"], spec["c"]
    kernel = spec.get("kernel", ())
    assert fmt.groups == G
    assert fmt.out_features == G * a and fmt.in_features == G * c
    assert fmt.kernel_size == tuple(kernel)
    assert fmt.shape == (G * a, G * c, *kernel)
    assert fmt.sparsity == 1.0 - 1.0 / G
    ref = reference_dense(fmt.values, fmt.in_index, fmt.out_index)
    dense = fmt.to_dense()
    assert dense.dtype == torch.float64 and dense.shape == fmt.shape
    assert torch.equal(dense, ref)
    assert torch.equal(fmt.mask(), reference_mask(fmt.in_index, fmt.out_index, G))
    assert "GroupedBlockFormat(" in repr(fmt) and f"groups={G}" in repr(fmt)


@pytest.mark.parametrize("spec", FORMAT_SHAPES, ids=str)
def test_to_dense_is_differentiable(spec):
    fmt = random_format(**spec, seed=2)
    values = fmt.values.clone().requires_grad_(True)
    fmt = GroupedBlockFormat(values, fmt.in_index, fmt.out_index, fmt.block_size)
    R = torch.randn(fmt.shape, dtype=torch.float64, generator=gen(3))
    (fmt.to_dense() * R).sum().backward()
    G, a, c = values.shape[:3]
    expected = torch.empty_like(values)
    for g in range(G):
        for i in range(a):
            for k in range(c):
                expected[g, i, k] = R[int(fmt.out_index[g * a + i]), int(fmt.in_index[g * c + k])]
    assert torch.equal(values.grad, expected)


def test_to_dtype():
    fmt = random_format(G=4, a=2, c=3, seed=4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        low = fmt.to(dtype=dtype)
        assert low.values.dtype == dtype
        assert low.in_index.dtype == torch.int64 and low.out_index.dtype == torch.int64
        assert torch.equal(low.in_index, fmt.in_index) and torch.equal(low.out_index, fmt.out_index)
        assert torch.equal(low.to_dense(), reference_dense(fmt.values, fmt.in_index, fmt.out_index).to(dtype))
    same = fmt.to("cpu")
    assert torch.equal(same.values, fmt.values) and same.block_size == fmt.block_size


# ================================================================= validation
def _fmt_args():
    g = gen(5)
    values = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    return values, torch.randperm(8, generator=g), torch.randperm(6, generator=g)


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (
            lambda v, i, o: (v, torch.tensor([0, 0, 2, 3, 4, 5, 6, 7]), o, 1),
            ValueError,
            r"in_index must be a permutation of range\(8\)",
        ),
        (
            lambda v, i, o: (v, i, torch.tensor([0, 1, 2, 3, 4, 6]), 1),
            ValueError,
            r"out_index must be a permutation of range\(6\)",
        ),
        (lambda v, i, o: (v, torch.arange(7), o, 1), ValueError, r"in_index must have shape \(8,\)"),
        (lambda v, i, o: (v, i, torch.arange(12), 1), ValueError, r"out_index must have shape \(6,\)"),
        (lambda v, i, o: (v, i.view(2, 4), o, 1), ValueError, r"in_index must have shape \(8,\)"),
        (lambda v, i, o: (v, i.to(torch.int32), o, 1), TypeError, r"in_index must be an int64 tensor, got torch.int32"),
        (lambda v, i, o: (v, i, o.float(), 1), TypeError, r"out_index must be an int64 tensor"),
        (lambda v, i, o: (v, i.tolist(), o, 1), TypeError, r"in_index must be an int64 tensor"),
        (lambda v, i, o: (v.to(torch.int64), i, o, 1), TypeError, r"values must be a floating-point tensor"),
        (lambda v, i, o: (v[0], i, o, 1), ValueError, r"values must have shape \(G, m/G, n/G\)"),
        (lambda v, i, o: (v[..., None], i, o, 1), ValueError, r"values must have shape"),
        (lambda v, i, o: (v[:, :0], i, torch.arange(0), 1), ValueError, r"non-empty group dimensions"),
        (lambda v, i, o: (v, i, o, 0), ValueError, r"block_size must be a positive int, got 0"),
        (lambda v, i, o: (v, i, o, 2.0), ValueError, r"block_size must be a positive int"),
        (
            lambda v, i, o: (v, torch.arange(8), torch.arange(6), 2),
            ValueError,
            r"block_size=2 must divide both block sides m/G=3 and n/G=4",
        ),
        (lambda v, i, o: (v, torch.arange(8), torch.arange(6), 3), ValueError, r"block_size=3 must divide"),
    ],
)
def test_validation_errors(mutate, exc, pattern):
    with pytest.raises(exc, match=pattern):
        GroupedBlockFormat(*mutate(*_fmt_args()))


def test_validation_not_tiled():
    v = torch.randn(2, 2, 4, dtype=torch.float64)
    good_out = torch.tensor([2, 3, 0, 1])
    GroupedBlockFormat(v, torch.tensor([4, 5, 0, 1, 6, 7, 2, 3]), good_out, 2)  # fine
    with pytest.raises(ValueError, match=r"in_index is not made of aligned runs of block_size=2"):
        GroupedBlockFormat(v, torch.tensor([5, 4, 0, 1, 6, 7, 2, 3]), good_out, 2)
    with pytest.raises(ValueError, match=r"in_index is not made of aligned runs"):
        GroupedBlockFormat(v, torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), good_out, 2)
    with pytest.raises(ValueError, match=r"out_index is not made of aligned runs of block_size=2"):
        GroupedBlockFormat(v, torch.arange(8), torch.tensor([1, 2, 3, 0]), 2)


# ============================================================== from_dense
SAO_LAYERS = [
    {"out_features": 64, "in_features": 128, "groups": 4},
    {"out_features": 128, "in_features": 64, "sparsity": 0.5},
    {"out_features": 48, "in_features": 48, "groups": 6},
    {"out_features": 32, "in_features": 32, "groups": 1},
    {"out_features": 32, "in_features": 128, "groups": 32},
    {"out_features": 128, "in_features": 32, "groups": 32, "smaller_groups": "contiguous"},
    {"out_features": 64, "in_features": 128, "groups": 4, "activation": "relu"},
    {"out_features": 64, "in_features": 128, "groups": 4, "block_size": 4},
    {"out_features": 96, "in_features": 48, "groups": 3, "block_size": 16},
    {"out_features": 256, "in_features": 64, "groups": 8, "activation": "relu", "block_size": 4},
    {"out_features": 16, "in_features": 32, "groups": 4, "kernel_size": 3},
    {"out_features": 32, "in_features": 16, "groups": 2, "kernel_size": (3, 5), "init": "eco"},
    {"out_features": 32, "in_features": 32, "groups": 4, "kernel_size": 3, "init": "rg-n", "block_size": 2},
    {"out_features": 16, "in_features": 32, "groups": 2, "kernel_size": 5, "init": "rg-u", "activation": "relu"},
    {"out_features": 64, "in_features": 64, "groups": 8, "init": "rg-n"},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", SAO_LAYERS, ids=str)
def test_from_dense_round_trip_is_exact(spec, dtype):
    src = sao_blocks(**spec, generator=gen(6), dtype=dtype)
    W = reference_dense(src.values, src.in_index, src.out_index).to(dtype)
    assert torch.equal(W, src.to_dense())
    fmt = from_dense(W)
    assert fmt.groups == src.groups
    assert fmt.values.dtype == dtype
    assert torch.equal(fmt.to_dense(), W)  # bitwise
    assert torch.equal(reference_dense(fmt.values, fmt.in_index, fmt.out_index).to(dtype), W)
    assert torch.equal(fmt.mask(), src.mask())
    # the declared block size holds, and at least the one it was built with is found
    b = spec.get("block_size", 1)
    assert fmt.block_size >= b and fmt.block_size % b == 0
    for idx in (fmt.in_index, fmt.out_index):
        runs = idx.view(-1, fmt.block_size)
        assert torch.equal(runs, runs[:, :1] + torch.arange(fmt.block_size))
        assert (runs[:, 0] % fmt.block_size == 0).all()


def test_from_dense_block_size_detection():
    src = sao_blocks(64, 128, groups=4, block_size=4, generator=gen(7))
    assert from_dense(src.to_dense()).block_size >= 4
    assert from_dense(src.to_dense(), block_size=2).block_size == 2
    assert from_dense(src.to_dense(), block_size=1).block_size == 1
    # element-level partitions almost never have aligned pairs in every group
    src1 = sao_blocks(64, 128, groups=4, generator=gen(7))
    assert from_dense(src1.to_dense()).block_size == 1
    with pytest.raises(ValueError, match="aligned runs"):
        from_dense(src1.to_dense(), block_size=2)
    # a dense matrix is one group, and any block size dividing it holds
    assert from_dense(torch.randn(8, 12, generator=gen(0))).block_size == 4


def _block_diag_weight(sizes, seed=0):
    """Dense weight with the given (rows, cols) blocks on the diagonal, non-zero inside."""
    blocks = [torch.rand(r, c, generator=gen(seed + i), dtype=torch.float64) + 0.5 for i, (r, c) in enumerate(sizes)]
    return torch.block_diag(*blocks)


def test_from_dense_refuses_non_sao():
    g = gen(8)
    W = torch.randn(16, 16, generator=g, dtype=torch.float64)
    # random sparse mask
    with pytest.raises(ValueError, match="not a permuted block diagonal|not SAO-structured"):
        from_dense(W * (torch.rand(16, 16, generator=g) < 0.3))
    # a permuted block diagonal but with unequal blocks
    with pytest.raises(ValueError, match=r"unequal sizes"):
        from_dense(_block_diag_weight([(2, 2), (4, 4)]))
    with pytest.raises(ValueError, match=r"unequal sizes"):
        from_dense(_block_diag_weight([(2, 3), (2, 5)]))
    # an empty row / column
    sao = sao_blocks(16, 16, groups=4, generator=g, dtype=torch.float64).to_dense()
    bad = sao.clone()
    bad[5] = 0
    with pytest.raises(ValueError, match=r"output row 5 has no kept weight"):
        from_dense(bad)
    bad = sao.clone()
    bad[:, 7] = 0
    with pytest.raises(ValueError, match=r"input column 7 has no kept weight"):
        from_dense(bad)
    with pytest.raises(ValueError, match=r"no kept weight"):
        from_dense(torch.zeros(4, 4))
    # one extra non-zero joins two groups
    bad = sao.clone()
    outside = int((sao[0] == 0).nonzero()[0])  # an input of another group
    bad[0, outside] = 1.0
    with pytest.raises(ValueError, match=r"not a permuted block diagonal"):
        from_dense(bad)
    # wrong dims
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape"):
        from_dense(torch.randn(2, 3, 4))


def test_from_pruned_refuses_a_dropped_tap():
    src = sao_blocks(16, 32, groups=4, kernel_size=3, init="rg-n", generator=gen(9), dtype=torch.float64)
    W = src.to_dense()
    mask = src.mask()[:, :, None, None].expand(W.shape).clone()
    from_pruned(W, mask)  # whole kernels: fine
    i, j = [int(x) for x in src.mask().nonzero()[3]]
    mask[i, j, 0, 2] = False
    with pytest.raises(ValueError, match=r"keeps some taps of a kernel and drops others"):
        from_pruned(W, mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(16, 32\)"):
        from_pruned(W, torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a tensor"):
        from_pruned(W, src.mask().tolist())
    with pytest.raises(ValueError, match=r"weight must be a floating tensor"):
        from_pruned(W.long(), src.mask())


# =============================================== interop with torch.nn.utils.prune
@pytest.mark.parametrize(
    "spec",
    [
        {"out_features": 32, "in_features": 64, "groups": 4},
        {"out_features": 64, "in_features": 32, "groups": 8, "activation": "relu"},
        {"out_features": 48, "in_features": 48, "groups": 3, "block_size": 4},
    ],
    ids=str,
)
def test_from_pruned_interop_linear(spec):
    m, n = spec["out_features"], spec["in_features"]
    torch.manual_seed(0)
    linear = nn.Linear(n, m)
    sao_mask = sao_blocks(**spec, generator=gen(10)).mask()
    prune.custom_from_mask(linear, "weight", sao_mask)
    orig, pmask = linear.weight_orig.detach(), linear.weight_mask
    fmt = from_pruned(linear.weight_orig, linear.weight_mask)
    G = m * n // int(sao_mask.sum())
    assert fmt.groups == G
    a, c = m // G, n // G
    # values are weight_orig restricted to the mask, group by group
    for g in range(G):
        for i in range(a):
            for k in range(c):
                r, col = int(fmt.out_index[g * a + i]), int(fmt.in_index[g * c + k])
                assert bool(pmask[r, col])
                assert fmt.values[g, i, k] == orig[r, col]
    assert torch.equal(fmt.mask(), sao_mask)
    assert torch.equal(fmt.to_dense().detach(), linear.weight.detach())
    assert fmt.block_size >= spec.get("block_size", 1)


def test_from_pruned_interop_conv():
    conv = nn.Conv2d(16, 32, 3, bias=False)
    src = sao_blocks(32, 16, groups=4, kernel_size=3, generator=gen(11))
    mask4 = src.mask()[:, :, None, None].expand(conv.weight.shape).float()
    prune.custom_from_mask(conv, "weight", mask4)
    fmt = from_pruned(conv.weight_orig, conv.weight_mask)
    assert fmt.groups == 4 and fmt.kernel_size == (3, 3)
    assert torch.equal(fmt.to_dense().detach(), conv.weight.detach())
    assert torch.equal(reference_dense(fmt.values, fmt.in_index, fmt.out_index).float(), conv.weight.detach().float())
    # the (out, in) pair mask is accepted too, and gives the same layer
    fmt2 = from_pruned(conv.weight_orig, src.mask())
    assert torch.equal(fmt2.to_dense(), fmt.to_dense())


def test_from_pruned_keeps_exact_zeros_inside_blocks():
    """from_dense cannot tell an exact zero from a pruned weight; from_pruned can."""
    src = sao_blocks(16, 32, groups=4, generator=gen(12), dtype=torch.float64)
    W = src.to_dense()
    r, c = [int(x) for x in src.mask().nonzero()[0]]
    W[r, c] = 0.0
    with pytest.raises(ValueError):
        from_dense(W)
    fmt = from_pruned(W, src.mask())
    assert torch.equal(fmt.to_dense(), W)
    assert torch.equal(fmt.mask(), src.mask())


# ======================================================================= BSR
@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")
@pytest.mark.parametrize(
    "spec, blocksizes",
    [
        ({"G": 4, "a": 4, "c": 8}, [1, 2, 4, (4, 8), (2, 4)]),
        ({"G": 2, "a": 8, "c": 4, "b": 4}, [4, (8, 4), (2, 2)]),
        ({"G": 8, "a": 2, "c": 2}, [2, (16, 2)]),
        ({"G": 1, "a": 6, "c": 3}, [3, (6, 1)]),
    ],
    ids=str,
)
def test_to_bsr(spec, blocksizes):
    fmt = random_format(**spec, seed=13)
    W = reference_dense(fmt.values, fmt.in_index, fmt.out_index)
    G, a, c = spec["G"], spec["a"], spec["c"]
    # group-ordered block diagonal, by loops
    D = torch.zeros(G * a, G * c, dtype=torch.float64)
    for g in range(G):
        D[g * a : (g + 1) * a, g * c : (g + 1) * c] = fmt.values[g]
    x = torch.randn(5, G * c, dtype=torch.float64, generator=gen(14))
    y = x @ W.T
    for bs in blocksizes:
        bsr = fmt.to_bsr(bs)
        assert bsr.layout == torch.sparse_bsr
        assert tuple(bsr.values().shape[1:]) == ((bs, bs) if isinstance(bs, int) else bs)
        assert torch.equal(bsr.to_dense(), W)
        perm = fmt.to_bsr(bs, permuted=True)
        assert perm.layout == torch.sparse_bsr
        assert torch.equal(perm.to_dense(), D)
        yp = torch.empty_like(y)
        yp[:, fmt.out_index] = x[:, fmt.in_index] @ perm.to_dense().T
        torch.testing.assert_close(yp, y, atol=1e-12, rtol=0)
    # blocksize a x c skips every zero block of the permuted form
    if a > 0 and c > 0:
        assert fmt.to_bsr((a, c), permuted=True).values().shape[0] == G


def test_to_bsr_errors():
    fmt = random_format(G=2, a=4, c=6, seed=15)
    with pytest.raises(ValueError, match=r"blocksize=5 must be positive and divide the weight shape 8x12"):
        fmt.to_bsr(5)
    with pytest.raises(ValueError, match=r"blocksize=0"):
        fmt.to_bsr(0)
    with pytest.raises(ValueError, match=r"blocksize=\(3, 4\)"):
        fmt.to_bsr((3, 4))
    conv = random_format(G=2, a=2, c=2, kernel=(3, 3), seed=16)
    with pytest.raises(ValueError, match=r"to_bsr needs a linear \(2-D\) weight"):
        conv.to_bsr(2)


def test_from_dense_of_random_formats_all_shapes():
    """Round trip for hand-made formats (not from sao_blocks), every small (G, a, c)."""
    seed = 100
    for G, a, c in itertools.product([1, 2, 3, 5], [1, 2, 3], [1, 2, 4]):
        if G * c == 1 and G * a == 1:
            continue
        fmt = random_format(G=G, a=a, c=c, seed=seed)
        seed += 1
        W = reference_dense(fmt.values, fmt.in_index, fmt.out_index)
        back = from_dense(W)
        assert back.groups == G
        assert torch.equal(back.to_dense(), W)


# ======================================================================= meta
def test_meta_format_checks_shapes_not_data():
    meta = {"device": "meta"}
    fmt = GroupedBlockFormat(
        torch.empty(2, 3, 4, **meta),
        torch.empty(8, dtype=torch.int64, **meta),
        torch.empty(6, dtype=torch.int64, **meta),
        1,
    )
    assert fmt.shape == (6, 8) and fmt.groups == 2
    _values, in_index, out_index, b = fmt.op_args()  # no data to detect an identity: passed as they are
    assert in_index is fmt.in_index and out_index is fmt.out_index and b == 1
    with pytest.raises(ValueError, match=r"in_index must have shape \(8,\)"):
        GroupedBlockFormat(
            torch.empty(2, 3, 4, **meta),
            torch.empty(7, dtype=torch.int64, **meta),
            torch.empty(6, dtype=torch.int64, **meta),
        )
    with pytest.raises(TypeError, match=r"out_index must be an int64 tensor"):
        GroupedBlockFormat(
            torch.empty(2, 3, 4, **meta),
            torch.empty(8, dtype=torch.int64, **meta),
            torch.empty(6, dtype=torch.int32, **meta),
        )
    with pytest.raises(ValueError, match=r"block_size=2 must divide"):
        GroupedBlockFormat(
            torch.empty(2, 3, 4, **meta),
            torch.empty(8, dtype=torch.int64, **meta),
            torch.empty(6, dtype=torch.int64, **meta),
            2,
        )


def test_block_size_detection_on_wide_blocks():
    """The largest declared block size is searched over the divisors of gcd(m/G, n/G)."""
    src = sao_blocks(2 * 384, 2 * 256, groups=2, block_size=128, generator=gen(17))
    assert from_dense(src.to_dense()).block_size == 128
