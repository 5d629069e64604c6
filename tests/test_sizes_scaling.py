"""The nearest-valid search of sao_kernels.sizes enumerates divisors of the gcd of the
dimensions, not a range of sizes: huge layers are answered at once.

Bounded by operation counts (how often a group count is examined) and, for the whole calls
that used to run for minutes, by a subprocess timeout that only a linear walk can hit.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from sao_kernels import sizes
from sao_kernels.sizes import resolve_sizes, valid_groups, valid_sparsities


def brute_divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def test_divisors_match_brute_force_and_factor_big_numbers():
    for n in range(1, 2000):
        assert sizes.divisors(n) == brute_divisors(n), n
    for p, q in [(2**31 - 1, 2**31 - 1), (1000003, 999999000001), (2**31 - 1, 4294967291), (3, 2**61 - 1)]:
        assert p * q < 2**63
        assert sizes.divisors(p * q) == sorted({1, p, q, p * q}), (p, q)
    assert sizes.divisors(2**61 - 1) == [1, 2**61 - 1]
    assert len(sizes.divisors(10**18)) == 19 * 19
    assert sizes.divisors(2**62) == [2**k for k in range(63)]
    with pytest.raises(ValueError, match="n must be a positive int"):
        sizes.divisors(0)
    too_big = r"out_features must be a positive int, got 9223372036854775808 \(at most 2\*\*63 - 1"
    with pytest.raises(ValueError, match=too_big):
        valid_groups(2**63, 2)


@pytest.fixture
def counted(monkeypatch):
    """Count the group counts examined by _why_invalid."""
    calls = []
    inner = sizes._why_invalid

    def counting(m, n, groups, activation, block_size):
        calls.append(groups)
        if len(calls) > 10_000:  # a linear walk: fail at once instead of running for minutes
            raise AssertionError(f"more than 10000 group counts examined for {m}x{n}")
        return inner(m, n, groups, activation, block_size)

    monkeypatch.setattr(sizes, "_why_invalid", counting)
    return calls


@pytest.mark.parametrize(
    "m,n,activation",
    [(10**9, 10**9, "tanh"), (10**8, 10**8 - 1, "tanh"), (2 * 3**15, 4 * 3**12, "relu"), (4096, 1024, "linear")],
)
def test_valid_groups_examines_only_divisors_of_the_gcd(counted, m, n, activation):
    groups = valid_groups(m, n, activation)
    common = math.gcd(m // 2, n // 2) if activation == "relu" else math.gcd(m, n)
    assert len(counted) == len(sizes.divisors(common))  # not min(m, n)
    assert groups == [g for g in sizes.divisors(common) if sizes._why_invalid(m, n, g, activation, 1) is None]


def test_valid_sparsities_of_a_billion(counted):
    # 10**9 = 2**9 5**9: 100 divisors; every G but 10**9 itself (degree 1) is valid
    sp = valid_sparsities(10**9, 10**9)
    assert len(sp) == 99 and sp[0] == 0.0 and sp[-1] == 1 - 1 / (10**9 // 2)


def test_unreachable_request_on_a_huge_shape_names_the_nearest(counted):
    with pytest.raises(
        ValueError,
        match=r"groups=3 is not reachable for 100000000x99999999 .*"
        r"nearest valid: 0 \(degree 100000000, groups 1\)",
    ):
        resolve_sizes(10**8, 10**8 - 1, groups=3)
    assert len(counted) <= 2  # the request, then the one divisor of gcd = 1


def test_huge_requests_answer_in_a_subprocess_without_hanging():
    """These ran for minutes when the search walked range(min(m, n)); 60 s covers the
    interpreter and torch import many times over."""
    code = (
        "import sao_kernels as sk\n"
        "print(len(sk.valid_sparsities(10**9, 10**9)))\n"
        "try:\n"
        "    sk.SAOLinear(10**8, 10**8 - 1, groups=3)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
        "try:\n"
        "    sk.resolve_sizes(2**40, 3**25, sparsity=0.5)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "99"
    assert lines[1].startswith("ValueError groups=3 is not reachable for 99999999x100000000")  # out x in
    assert lines[2].startswith("ValueError sparsity=0.5 is not reachable")


def test_numpy_integer_dimensions_are_accepted():
    np = pytest.importorskip("numpy")
    r = resolve_sizes(np.int64(128), np.int32(64), groups=np.int64(4), block_size=np.int64(2))
    assert (r.out_features, r.in_features, r.groups, r.block_size) == (128, 64, 4, 2)
    assert all(type(v) is int for v in (r.out_features, r.in_features, r.block_size))
    assert valid_groups(np.int64(8), np.int64(8)) == [1, 2, 4]
