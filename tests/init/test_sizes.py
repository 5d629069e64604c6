"""Tests for sao_kernels.sizes: which SAO shapes exist, and how fast the answer comes.

Every expected value here is re-derived independently in the test (brute force over group
counts / degrees), never taken from the code under test.  The nearest-valid search enumerates
divisors of the gcd of the dimensions, not a range of sizes, so huge layers are answered at
once: bounded by operation counts (how often a group count is examined) and, for the whole
calls that used to run for minutes, by a subprocess timeout that only a linear walk can hit.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys

import pytest

from sao_kernels import sizes
from sao_kernels.sizes import (
    SAOSizes,
    degree_from_sparsity,
    resolve_sizes,
    valid_groups,
    valid_sparsities,
)


# --------------------------------------------------------------- brute force
def brute_groups(m: int, n: int, activation: str = "tanh", block_size: int = 1) -> list[int]:
    """Group counts G that give a valid SAO layer, straight from the definition.

    Plain: G divides L and S, and the degree L/G is at least 2.
    ReLU: m and n even, G divides L/2 and S/2, and the half-size degree L/(2G) >= 2
    (so the full degree L/G >= 4).  With block_size b, b divides both block sides of the
    (half-size for ReLU) matrix.
    """
    L, S = max(m, n), min(m, n)
    if activation == "relu":
        if m % 2 or n % 2:
            return []
        L, S = L // 2, S // 2
    out = []
    for G in range(1, S + 1):
        if L % G or S % G or L // G < 2:
            continue
        if (L // G) % block_size or (S // G) % block_size:
            continue
        out.append(G)
    return out


def brute_degrees(m: int, n: int, activation: str = "tanh", block_size: int = 1) -> list[int]:
    """Valid degrees d (non-zeros per row along the larger dim), by brute force over d."""
    L, S = max(m, n), min(m, n)
    out = []
    for d in range(1, L + 1):
        if L % d:
            continue
        G = L // d
        if S % G:
            continue
        a = S // G
        if activation == "relu":
            if m % 2 or n % 2 or d % 2 or d < 4 or a % 2:
                continue
            if (d // 2) % block_size or (a // 2) % block_size:
                continue
        else:
            if d < 2 or d % block_size or a % block_size:
                continue
        out.append(d)
    return out


def nearest_brute(m, n, target, activation="tanh", block_size=1):
    """(sparsity, degree) just above and just below ``target`` among the valid ones."""
    L = max(m, n)
    opts = [(1.0 - d / L, d) for d in brute_degrees(m, n, activation, block_size)]
    above = [o for o in opts if o[0] > target]
    below = [o for o in opts if o[0] < target]
    return (min(above) if above else None), (max(below) if below else None)


def _shapes(seed: int, count: int, even: bool = False) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    nice = [2, 4, 6, 8, 12, 16, 24, 30, 32, 36, 48, 60, 64, 72, 96, 100, 120, 128, 144, 192, 240, 256]
    shapes = []
    for _ in range(count):
        if rng.random() < 0.6:
            m, n = rng.choice(nice), rng.choice(nice)
        else:
            m, n = rng.randint(1, 256), rng.randint(1, 256)
        if even:
            m, n = m + m % 2, n + n % 2
        shapes.append((m, n))
    # both orders, and the square case
    return shapes + [(n, m) for m, n in shapes[:5]] + [(m, m) for m, _ in shapes[:5]]


RANDOM_SHAPES = _shapes(0, 30) + [(100, 100), (64, 128), (128, 64), (3, 5), (1, 7), (2, 2), (7, 7)]


# ------------------------------------------------------------ valid_sparsities
def test_valid_sparsities_docstring_example():
    assert valid_sparsities(100, 100) == [0.0, 0.5, 0.75, 0.8, 0.9, 0.95, 0.96, 0.98]


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_valid_groups_and_sparsities_match_brute_force(activation, block_size):
    for m, n in RANDOM_SHAPES + _shapes(1, 15, even=True):
        expected = brute_groups(m, n, activation, block_size)
        assert valid_groups(m, n, activation, block_size=block_size) == expected, (m, n)
        assert valid_sparsities(m, n, activation, block_size=block_size) == [1.0 - 1.0 / g for g in expected]
        # the same set via the degree view
        L = max(m, n)
        assert sorted(L // g for g in expected) == brute_degrees(m, n, activation, block_size), (m, n)


# --------------------------------------------------------------- resolve_sizes
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_resolve_every_request_exhaustively(activation):
    """Every G in 1..S and every d in 1..L either resolves to the right sizes or raises."""
    for m, n in RANDOM_SHAPES[:20] + [(100, 100), (64, 128), (128, 64), (96, 40)]:
        L, S = max(m, n), min(m, n)
        good = set(brute_groups(m, n, activation))
        for G in range(1, S + 1):
            if G in good:
                r = resolve_sizes(m, n, groups=G, activation=activation)
                assert (r.groups, r.degree, r.out_features, r.in_features) == (G, L // G, m, n)
                assert r.sparsity == 1.0 - 1.0 / G
                assert (r.larger, r.smaller) == (L, S)
                # the same layer requested by sparsity and by degree
                assert resolve_sizes(m, n, sparsity=1.0 - 1.0 / G, activation=activation).groups == G
                assert resolve_sizes(m, n, degree=L // G, activation=activation).groups == G
            else:
                with pytest.raises(ValueError, match=f"groups={G}"):
                    resolve_sizes(m, n, groups=G, activation=activation)
        good_d = set(brute_degrees(m, n, activation))
        for d in range(1, L + 1):
            if d in good_d:
                assert resolve_sizes(m, n, degree=d, activation=activation).degree == d
            else:
                with pytest.raises(ValueError, match=f"degree={d}"):
                    resolve_sizes(m, n, degree=d, activation=activation)


def test_resolve_returns_frozen_dataclass():
    r = resolve_sizes(64, 128, sparsity=0.75, block_size=4)
    assert r == SAOSizes(64, 128, 4, 32, 4, "tanh")
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        r.groups = 2  # type: ignore[misc]


# --------------------------------------------------------------- robust degree
def test_sparsity_0p9_gives_degree_10():
    assert (1 - 0.9) * 100 < 10  # the float trap the paper's int() falls into
    assert int((1 - 0.9) * 100) == 9
    assert degree_from_sparsity(0.9, 100) == 10
    r = resolve_sizes(100, 100, sparsity=0.9)
    assert (r.degree, r.groups) == (10, 10)


@pytest.mark.parametrize("L", [100, 96, 120, 210, 256, 250, 49, 60, 72, 180])
def test_degree_from_sparsity_sweep(L):
    """s = 1 - d/L must map back to exactly d for every d (not only divisors)."""
    for d in range(1, L + 1):
        assert degree_from_sparsity(1.0 - d / L, L) == d, d
        # and something clearly between two degrees truncates, as int() in the paper
        if d < L:
            assert degree_from_sparsity(1.0 - (d + 0.5) / L, L) == d


@pytest.mark.parametrize("L", [100, 96, 120, 210, 256, 250, 60, 72, 180])
def test_resolve_sparsity_sweep_over_divisors(L):
    for d in [d for d in range(2, L + 1) if L % d == 0]:
        s = 1.0 - d / L
        r = resolve_sizes(L, L, sparsity=s)
        assert r.degree == d and r.groups == L // d
        # rectangular, in both orientations, whenever S = L/2 is divisible by G
        if L % 2 == 0 and (L // 2) % (L // d) == 0:
            assert resolve_sizes(L, L // 2, sparsity=s).degree == d
            assert resolve_sizes(L // 2, L, sparsity=s).degree == d
        if d % 2 == 0 and d >= 4 and L % 2 == 0:
            assert resolve_sizes(L, L, sparsity=s, activation="relu").degree == d


# ------------------------------------------------------------------- messages
def test_reachability_message_exact_example():
    with pytest.raises(ValueError) as e:
        resolve_sizes(100, 100, sparsity=0.7)
    msg = str(e.value)
    for part in ["sparsity=0.7", "100x100", "degree 30 does not divide 100", "0.75 (degree 25", "0.5 (degree 50"]:
        assert part in msg, (part, msg)


def _check_nearest(msg, m, n, target, activation, block_size):
    above, below = nearest_brute(m, n, target, activation, block_size)
    if above is None and below is None:
        assert "no sparsity is reachable" in msg
        return
    for pick in (above, below):
        if pick is not None:
            s, d = pick
            assert f"{s:.6g} (degree {d}," in msg, (pick, msg)


def test_nearest_valid_values_rederived_for_random_shapes():
    rng = random.Random(7)
    checked = 0
    for m, n in RANDOM_SHAPES + _shapes(3, 20, even=True):
        L = max(m, n)
        for activation in ("tanh", "relu"):
            for block_size in (1, 2):
                valid = set(brute_degrees(m, n, activation, block_size))
                bad = [d for d in range(1, L + 1) if d not in valid]
                for d in rng.sample(bad, min(3, len(bad))):
                    # by degree
                    with pytest.raises(ValueError) as e:
                        resolve_sizes(m, n, degree=d, activation=activation, block_size=block_size)
                    msg = str(e.value)
                    assert f"degree={d}" in msg and f"{m}x{n}" in msg
                    _check_nearest(msg, m, n, 1.0 - d / L, activation, block_size)
                    # by a sparsity that truncates to that degree
                    s = 1.0 - (d + 0.5) / L if d < L else 0.0
                    if s <= 0.0:
                        continue
                    with pytest.raises(ValueError) as e:
                        resolve_sizes(m, n, sparsity=s, activation=activation, block_size=block_size)
                    msg = str(e.value)
                    assert f"sparsity={s!r}" in msg and f"{m}x{n}" in msg
                    _check_nearest(msg, m, n, s, activation, block_size)
                    checked += 1
    assert checked > 50


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"sparsity": 0.5, "degree": 50}, r"exactly one of sparsity, degree or groups.*sparsity and degree"),
        ({"sparsity": 0.5, "groups": 2}, r"exactly one.*sparsity and groups"),
        ({"degree": 50, "groups": 2}, r"exactly one.*degree and groups"),
        ({"sparsity": 0.5, "degree": 50, "groups": 2}, r"exactly one.*sparsity and degree and groups"),
        ({}, r"exactly one.*got none"),
        ({"sparsity": -0.1}, r"sparsity must be a float in \[0, 1\), got -0.1"),
        ({"sparsity": 1.0}, r"sparsity must be a float in \[0, 1\), got 1.0"),
        ({"sparsity": 1.5}, r"sparsity must be a float in \[0, 1\)"),
        ({"sparsity": True}, r"sparsity must be"),
        ({"sparsity": "0.5"}, r"sparsity must be"),
        ({"degree": 30}, r"degree=30 is not reachable for 100x100.*degree 30 does not divide 100"),
        ({"degree": 3}, r"degree=3 .*degree 3 does not divide 100"),
        ({"degree": 200}, r"degree=200 .*exceeds the larger dimension 100"),
        ({"degree": 0}, r"degree must be a positive int"),
        ({"degree": 2.5}, r"degree must be a positive int"),
        ({"degree": 1}, r"degree=1 .*below the minimum 2 for activation='tanh'"),
        ({"sparsity": 0.99}, r"sparsity=0.99 .*degree 1 is below the minimum 2"),
        ({"groups": 3}, r"groups=3 is not reachable for 100x100.*3 groups do not divide the larger dimension 100"),
        ({"groups": 100}, r"groups=100 .*degree 1 is below the minimum 2"),
        ({"groups": 0}, r"groups must be a positive int"),
        ({"groups": 2.0}, r"groups must be a positive int"),
        ({"groups": 2, "activation": "gelu"}, r"activation='gelu' is not supported"),
        ({"groups": 2, "block_size": 0}, r"block_size must be a positive int"),
        ({"degree": 2, "activation": "relu"}, r"degree=2 .*degree 2 is below the minimum 4 for activation='relu'"),
        ({"degree": 5, "activation": "relu"}, r"degree=5 .*halves the degree, so it must be even, got 5"),
        (
            {"sparsity": 0.95, "activation": "relu"},
            r"sparsity=0.95 .*with activation='relu'.*must be even, got 5; "
            r"nearest valid: 0.96 \(degree 4, groups 25\), 0.9 \(degree 10",
        ),
        (
            {"groups": 20, "activation": "relu"},
            r"groups=20 .*20 groups do not divide the larger dimension 50 of the half-size 50x50",
        ),
        ({"groups": 50, "activation": "relu"}, r"groups=50 .*degree 2 is below the minimum 4"),
        (
            {"groups": 4, "block_size": 8},
            r"groups=4 .*with block_size=8: block_size=8 must divide both block sides, 25 and 25; "
            r"no sparsity is reachable",
        ),
    ],
)
def test_error_messages_100x100(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_sizes(100, 100, **kwargs)


def test_degree_4_relu_100x100_is_fine():
    # degree 4 divides 100, is even and >= 4: valid (half-size 50x50 with degree 2, G=25)
    r = resolve_sizes(100, 100, degree=4, activation="relu")
    assert (r.groups, r.degree) == (25, 4)


@pytest.mark.parametrize(
    "m, n, kwargs, pattern",
    [
        (10, 9, {"groups": 1, "activation": "relu"}, r"groups=1 .*10x9.*even sizes, got 10x9"),
        (9, 10, {"sparsity": 0.0, "activation": "relu"}, r"sparsity=0.0 .*even sizes"),
        (100, 30, {"groups": 4}, r"groups=4 .*4 groups do not divide the smaller dimension 30"),
        (30, 100, {"degree": 25}, r"degree=25 .*30x100.*4 groups do not divide the smaller dimension 30"),
        (64, 64, {"groups": 4, "block_size": 32}, r"block_size=32 must divide both block sides, 16 and 16"),
        (64, 128, {"sparsity": 0.5, "block_size": 3}, r"sparsity=0.5 .*with block_size=3.*block_size=3 must divide"),
        (0, 10, {"groups": 1}, r"out_features must be a positive int, got 0"),
        (10, -1, {"groups": 1}, r"in_features must be a positive int, got -1"),
        (10, 10.0, {"groups": 1}, r"in_features must be a positive int"),
        (
            1,
            1,
            {"groups": 1},
            r"groups=1 .*degree 1 is below the minimum 2 for activation='tanh'; no sparsity is reachable",
        ),
    ],
)
def test_error_messages_other_shapes(m, n, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_sizes(m, n, **kwargs)


def test_valid_sparsities_argument_errors():
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        valid_sparsities(8, 8, "sigmoid")
    with pytest.raises(ValueError, match="out_features"):
        valid_sparsities(0, 8)
    with pytest.raises(ValueError, match="block_size"):
        valid_groups(8, 8, block_size=0)


def test_messages_do_not_overmatch():
    # the shape string is "m x n (out x in)" so both orders are told apart
    with pytest.raises(ValueError) as e:
        resolve_sizes(30, 100, degree=30)
    assert "30x100 (out x in)" in str(e.value)
    assert re.search(r"nearest valid: ", str(e.value))


def test_numpy_and_float32_sparsities_are_accepted():
    import numpy as np

    from sao_kernels.sizes import resolve_sizes

    for s, degree in ((np.float32(0.9), 10), (np.float64(0.75), 25), (np.float32(0.5), 50)):
        assert resolve_sizes(100, 100, sparsity=s).degree == degree
    assert resolve_sizes(100, 100, groups=np.int64(4)).degree == 25
    assert resolve_sizes(100, 100, degree=np.int32(20)).groups == 5


# ------------------------------------------------- scaling: divisors of the gcd
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
