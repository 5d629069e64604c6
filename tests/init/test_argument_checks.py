"""Every public entry point of format / sizes / init / layers rejects bad arguments with a
ValueError or TypeError that names the argument and what is allowed: non-finite and
out-of-range numbers (gain=nan used to build an all-NaN layer), bools and strings where
numbers are expected, tuples of the wrong length, zero and negative sizes, and a sparsity
passed positionally into ``bias``; sao_kernels.init's own choices (init, kernel_size,
smaller_groups) likewise, and the paper code's hanging cases raise."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sao_kernels import SAOConv2d, SAOLinear, init, sizes
from sao_kernels.format import GroupedBlockFormat, from_dense, from_pruned
from sao_kernels.init import (
    rg_normal_,
    rg_uniform_,
    sao_,
    sao_blocks,
    sao_delta_,
    sao_eco_,
)

NAN, INF = float("nan"), float("inf")


def blocks():
    return init.sao_blocks(8, 8, groups=2, generator=torch.Generator().manual_seed(0))


CASES = [
    # gain: finite and > 0, a number
    (lambda: SAOLinear(8, 8, groups=2, gain=NAN), ValueError, r"gain must be a finite float > 0, got nan"),
    (lambda: SAOLinear(8, 8, groups=2, gain=INF), ValueError, r"gain must be a finite float > 0, got inf"),
    (lambda: SAOLinear(8, 8, groups=2, gain=-1.0), ValueError, r"gain must be a finite float > 0, got -1.0"),
    (lambda: SAOLinear(8, 8, groups=2, gain=0), ValueError, r"gain must be a finite float > 0, got 0"),
    (lambda: SAOLinear(8, 8, groups=2, gain=True), TypeError, r"gain must be a number"),
    (lambda: SAOConv2d(8, 8, 3, groups=2, gain=NAN), ValueError, r"gain must be a finite float > 0, got nan"),
    (lambda: init.sao_blocks(8, 8, groups=2, gain=-INF), ValueError, r"gain must be a finite float > 0"),
    (lambda: init.sao_(torch.empty(8, 8), groups=2, gain=NAN), ValueError, r"gain must be a finite"),
    (lambda: init.sao_delta_(torch.empty(8, 8, 3, 3), groups=2, gain=INF), ValueError, r"gain must be a finite"),
    (lambda: init.rg_uniform_(torch.empty(8, 8), groups=2, gain=NAN), ValueError, r"gain must be a finite"),
    (lambda: init.magnitude_prune_(torch.empty(8, 8), 0.5, gain=NAN), ValueError, r"gain must be a finite"),
    (lambda: init.random_prune_(torch.empty(8, 8), 0.5, gain="2"), TypeError, r"gain must be a number"),
    # sparsity / degree / groups
    (lambda: SAOLinear(8, 8, sparsity=NAN), ValueError, r"sparsity must be a float in \[0, 1\), got nan"),
    (lambda: SAOLinear(8, 8, sparsity=INF), ValueError, r"sparsity must be a float in \[0, 1\), got inf"),
    (lambda: SAOLinear(8, 8, degree=NAN), ValueError, r"degree must be a positive int, got nan"),
    (lambda: SAOLinear(8, 8, groups=True), ValueError, r"groups must be a positive int, got True"),
    (lambda: init.magnitude_prune_(torch.empty(8, 8), NAN), ValueError, r"sparsity must be a float in \[0, 1\)"),
    (lambda: sizes.degree_from_sparsity(NAN, 100), ValueError, r"sparsity must be a real number in \[0, 1\], got nan"),
    (lambda: sizes.degree_from_sparsity(0.5, 0), ValueError, r"larger must be a positive int, got 0"),
    # sizes
    (lambda: SAOLinear(0, 8, groups=1), ValueError, r"in_features must be a positive int, got 0"),
    (lambda: SAOLinear(8, "8", groups=1), ValueError, r"out_features must be a positive int, got '8'"),
    (lambda: SAOLinear(8.0, 8, groups=1), ValueError, r"in_features must be a positive int, got 8.0"),
    (lambda: SAOConv2d(0, 8, 3, groups=1), ValueError, r"in_channels must be a positive int, got 0"),
    (lambda: SAOConv2d(8, -8, 3, groups=1), ValueError, r"out_channels must be a positive int, got -8"),
    (lambda: SAOLinear(8, 8, groups=2, block_size=0), ValueError, r"block_size must be a positive int, got 0"),
    (lambda: SAOLinear(8, 8, groups=2, block_size=2.0), ValueError, r"block_size must be a positive int, got 2.0"),
    (lambda: sizes.valid_sparsities(8, 8, None), ValueError, r"activation=None is not supported; allowed"),
    (lambda: SAOLinear(8, 8, groups=2, activation=3), ValueError, r"activation=3 is not supported"),
    # a sparsity in the bias position
    (
        lambda: SAOLinear(1024, 1024, 0.875),
        TypeError,
        r"SAOLinear: bias must be a bool, got 0.875.*sparsity.*keyword-only.*SAOLinear\(\.\.\., sparsity=0.875\)",
    ),
    (lambda: SAOLinear(8, 8, "yes", groups=2), TypeError, r"SAOLinear: bias must be a bool, got str 'yes'"),
    (lambda: SAOConv2d(8, 8, 3, 1, 1, 1, 0.5), TypeError, r"SAOConv2d: bias must be a bool, got 0.5.*sparsity"),
    (lambda: SAOConv2d(8, 8, 3, 0.5), ValueError, r"stride must be an int >= 1 or a pair of them, got 0.5; sparsity"),
    # convolution geometry
    (
        lambda: SAOConv2d(8, 8, (3,), groups=2),
        ValueError,
        r"kernel_size must be an int >= 1 or a pair of them, got \(3,\)",
    ),
    (lambda: SAOConv2d(8, 8, (3, 3, 3), groups=2), ValueError, r"kernel_size must be .*got \(3, 3, 3\)"),
    (lambda: SAOConv2d(8, 8, 0, groups=2), ValueError, r"kernel_size must be .*got 0"),
    (lambda: SAOConv2d(8, 8, "3", groups=2), ValueError, r"kernel_size must be .*got '3'"),
    (lambda: SAOConv2d(8, 8, 3.0, groups=2), ValueError, r"kernel_size must be .*got 3.0"),
    (lambda: SAOConv2d(8, 8, 3, stride=0, groups=2), ValueError, r"stride must be an int >= 1 .*got 0"),
    (lambda: SAOConv2d(8, 8, 3, stride=(1, 2, 3), groups=2), ValueError, r"stride must be .*got \(1, 2, 3\)"),
    (lambda: SAOConv2d(8, 8, 3, padding=-1, groups=2), ValueError, r"padding must be an int >= 0 .*got -1"),
    (lambda: SAOConv2d(8, 8, 3, padding=(1,), groups=2), ValueError, r"padding must be .*got \(1,\)"),
    (lambda: SAOConv2d(8, 8, 3, padding="full", groups=2), ValueError, r"padding='full' is not supported"),
    (lambda: SAOConv2d(8, 8, 3, dilation=0, groups=2), ValueError, r"dilation must be an int >= 1 .*got 0"),
    (lambda: SAOConv2d(8, 8, 3, dilation=True, groups=2), ValueError, r"dilation must be .*got True"),
    (lambda: SAOConv2d(8, 8, 3, padding_mode=3, groups=2), ValueError, r"padding_mode=3 is not supported"),
    # dtype / device / generator
    (lambda: SAOLinear(8, 8, groups=2, dtype=torch.int64), TypeError, r"dtype must be a floating-point torch.dtype"),
    (lambda: SAOLinear(8, 8, groups=2, dtype="float32"), TypeError, r"dtype must be a floating-point torch.dtype"),
    (lambda: SAOLinear(8, 8, groups=2, device="nonsense"), ValueError, r"device must be a torch.device"),
    (lambda: SAOLinear(8, 8, groups=2, generator=3), TypeError, r"generator must be a torch.Generator"),
    (lambda: SAOLinear(8, 8, groups=2).reset_parameters(generator=3), TypeError, r"generator must be"),
    # init helpers
    (lambda: init.eco_frequency_pairs(0, 3), ValueError, r"kh and kw must be positive ints, got kh=0, kw=3"),
    (lambda: init.eco_frequency_pairs("3", 3), ValueError, r"kh and kw must be positive ints"),
    (lambda: init.sao_topology("sizes"), TypeError, r"sizes must be an SAOSizes"),
    (lambda: init.sao_blocks(8, 8, groups=2, smaller_groups=None), ValueError, r"smaller_groups=None is not supported"),
    (
        lambda: init.random_prune_(torch.empty(8, 8), 0.5, base="kaiming", activation="gelu"),
        ValueError,
        r"activation='gelu' is not supported",
    ),
    # format
    (
        lambda: blocks().to_bsr((2, 2, 2)),
        ValueError,
        r"blocksize must be an int or a pair \(r, c\) of ints dividing the weight shape 8x8, got \(2, 2, 2\)",
    ),
    (lambda: blocks().to_bsr((2,)), ValueError, r"blocksize must be an int or a pair .*got \(2,\)"),
    (lambda: blocks().to_bsr("2"), ValueError, r"blocksize must be .*got '2'"),
    (lambda: blocks().to_bsr(2.0), ValueError, r"blocksize must be .*got 2.0"),
    (lambda: blocks().to_bsr(None), ValueError, r"blocksize must be .*got None"),
    (lambda: blocks().to_bsr(True), ValueError, r"blocksize must be .*got True"),
    (lambda: blocks().to_bsr(-2), ValueError, r"blocksize=-2 must be positive and divide the weight shape 8x8"),
    (lambda: blocks().to_bsr(2, permuted="yes"), TypeError, r"permuted must be a bool, got 'yes'"),
    (lambda: blocks().to(dtype=torch.int64), TypeError, r"dtype must be a floating-point torch.dtype"),
    (
        lambda: GroupedBlockFormat(torch.zeros(2, 2, 2, 0, 3), torch.arange(4), torch.arange(4)),
        ValueError,
        r"values must have a non-empty kernel \(kh, kw >= 1\), got \(2, 2, 2, 0, 3\)",
    ),
    (
        lambda: GroupedBlockFormat(torch.zeros(2, 2, 2), torch.arange(4), torch.arange(4), True),
        ValueError,
        r"block_size must be a positive int, got True",
    ),
    (
        lambda: from_pruned(torch.eye(4), torch.eye(4).bool(), block_size=0),
        ValueError,
        r"block_size must be a positive int, got 0",
    ),
    (lambda: from_dense(torch.empty(4, 4, device="meta")), ValueError, r"needs weight and mask with data"),
]


@pytest.mark.parametrize("call,exc,pattern", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_argument_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    layer = SAOLinear(np.int64(16), np.int32(8), groups=np.int64(2), gain=np.float32(2.0), block_size=np.int64(2))
    assert (layer.in_features, layer.out_features, layer.groups, layer.block_size) == (16, 8, 2, 2)
    assert layer.gain == 2.0 and type(layer.block_size) is int
    conv = SAOConv2d(8, 8, np.int64(3), stride=(np.int64(2), 1), groups=2)
    assert conv.kernel_size == (3, 3) and conv.stride == (2, 1) and type(conv.stride[0]) is int
    fmt = GroupedBlockFormat(torch.zeros(2, 2, 2), torch.arange(4), torch.arange(4), np.int64(2))
    assert fmt.block_size == 2 and type(fmt.block_size) is int
    assert init.eco_frequency_pairs(np.int64(3), 3)[0] == ((0, 0), (0, 0))


def test_bool_bias_values_and_zero_one_are_accepted():
    assert SAOLinear(8, 8, False, groups=2).bias is None
    assert SAOLinear(8, 8, 1, groups=2).bias is not None
    assert SAOConv2d(8, 8, 3, 1, 0, 1, False, groups=2).bias is None


# ------------------------------------------------------------------ sao_kernels.init
@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: sao_blocks(8, 8, groups=2, init="foo"), ValueError, r"init='foo' is not supported for a linear layer"),
        (lambda: sao_blocks(8, 8, groups=2, init="delta"), ValueError, r"init='delta' is not supported for a linear"),
        (
            lambda: sao_blocks(8, 8, groups=2, init="sao", kernel_size=3),
            ValueError,
            r"init='sao' is not supported for a convolution",
        ),
        (lambda: sao_blocks(8, 8, groups=2, kernel_size=(3,)), ValueError, r"kernel_size must be"),
        (lambda: sao_blocks(8, 8, groups=2, kernel_size=0), ValueError, r"kernel_size must be"),
        (
            lambda: sao_blocks(8, 8, groups=2, kernel_size=4),
            ValueError,
            r"init='delta' needs odd kernel sizes.*\(4, 4\)",
        ),
        (lambda: sao_blocks(8, 8, groups=2, smaller_groups="random"), ValueError, r"smaller_groups='random'"),
        (lambda: sao_blocks(8, 8, groups=2, generator=1), TypeError, r"generator must be a torch.Generator"),
        (lambda: sao_blocks(8, 8, groups=2, gain="1"), TypeError, r"gain must be a number"),
        (lambda: sao_delta_(torch.empty(8, 8, 2, 2), groups=2), ValueError, r"init='delta' needs odd kernel sizes"),
        (
            lambda: sao_delta_(torch.empty(8, 8, 3, 4), groups=2),
            ValueError,
            r"init='delta' needs odd kernel sizes.*\(3, 4\)",
        ),
        (
            lambda: sao_(torch.empty(8, 8, 3, 3), groups=2),
            ValueError,
            r"sao_: tensor must have shape \(out, in\), got \(8, 8, 3, 3\)",
        ),
        (
            lambda: sao_delta_(torch.empty(8, 8), groups=2),
            ValueError,
            r"sao_delta_: tensor must have shape \(out, in, kh, kw\), got \(8, 8\)",
        ),
        (
            lambda: sao_eco_(torch.empty(8, 8), groups=2),
            ValueError,
            r"sao_eco_: tensor must have shape \(out, in, kh, kw\)",
        ),
        (
            lambda: rg_normal_(torch.empty(8), groups=2),
            ValueError,
            r"rg_normal_: tensor must have shape \(out, in\) or \(out, in, kh, kw\)",
        ),
        (lambda: rg_uniform_(torch.empty(2, 8, 8), groups=2), ValueError, r"rg_uniform_: tensor must have shape"),
        (
            lambda: sao_(torch.empty(8, 8, dtype=torch.int64), groups=2),
            TypeError,
            r"sao_: tensor must be a floating-point",
        ),
        (lambda: sao_(torch.empty(100, 100), sparsity=0.7), ValueError, r"sparsity=0.7 is not reachable for 100x100"),
        (
            lambda: sao_(torch.empty(100, 100), degree=3),
            ValueError,
            r"degree=3 is not reachable for 100x100.*does not divide 100",
        ),
        (lambda: sao_(torch.empty(100, 100), 0.5, degree=50), ValueError, r"exactly one.*sparsity and degree"),
        (lambda: sao_(torch.empty(100, 100)), ValueError, r"exactly one.*got none"),
        (lambda: sao_(torch.empty(100, 100), 1.0), ValueError, r"sparsity must be a float in \[0, 1\)"),
        (
            lambda: sao_(torch.empty(10, 8), groups=2, activation="relu"),
            ValueError,
            r"groups=2 .*10x8.*2 groups do not divide",
        ),
        (lambda: sao_(torch.empty(10, 9), groups=1, activation="relu"), ValueError, r"even sizes"),
        (
            lambda: sao_(torch.empty(100, 100), degree=2, activation="relu"),
            ValueError,
            r"degree 2 is below the minimum 4",
        ),
        (
            lambda: sao_(torch.empty(100, 100), degree=10, activation="relu", block_size=2),
            ValueError,
            r"degree=10 .*block_size=2 must divide",
        ),
        (
            lambda: sao_(torch.empty(100, 100), degree=1),
            ValueError,
            r"degree 1 is below the minimum 2 for activation='tanh'",
        ),
        (lambda: sao_(torch.empty(64, 64), groups=4, block_size=32), ValueError, r"block_size=32 must divide"),
        (lambda: sao_eco_(torch.empty(64, 64, 3, 3), groups=4, block_size=3), ValueError, r"block_size=3 must divide"),
        (
            lambda: rg_normal_(torch.empty(64, 60), groups=8),
            ValueError,
            r"groups=8 .*do not divide the smaller dimension 60",
        ),
    ],
)
def test_init_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_no_hang_on_reference_code_hanging_cases():
    """The paper's code loops forever when the degree does not divide L; ours raises."""
    code = (
        "import torch\n"
        "from sao_kernels.init import sao_\n"
        "from sao_kernels.sizes import resolve_sizes\n"
        "for call in (lambda: sao_(torch.empty(100, 100), sparsity=0.7),\n"
        "             lambda: sao_(torch.empty(100, 100), degree=3),\n"
        "             lambda: resolve_sizes(100, 100, sparsity=0.7),\n"
        "             lambda: resolve_sizes(100, 100, degree=3)):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ValueError:")]
    assert len(lines) == 4
    assert "sparsity=0.7" in lines[0] and "degree 30 does not divide 100" in lines[0]
    assert "degree=3" in lines[1] and "degree 3 does not divide 100" in lines[1]
