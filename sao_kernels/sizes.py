"""Which SAO shapes exist: degree, groups and sparsity of one layer.

A layer of shape (out=m, in=n) has L = max(m, n) and S = min(m, n).  SAO splits both
dimensions into G disjoint groups; each group joins d = L/G features of the larger
dimension with a = S/G features of the smaller one, so the sparsity is exactly 1 - 1/G.
The paper's code derives the degree from a sparsity as ``d = int((1 - s) * L)``; a degree
that does not divide L made it loop forever.  Here every request is checked up front and
an impossible one raises ``ValueError`` naming the argument, the shape and the nearest
reachable values.

ReLU ("looks-linear") layers are built from a half-size (m/2, n/2) SAO matrix with degree
d/2, so m, n and d must be even and the half-size problem must be valid too.

A valid G divides both dimensions, hence their gcd: the searches below enumerate the
divisors of the gcd (from its prime factorisation), never a range of sizes, so they take
microseconds to milliseconds for any size (``valid_sparsities(10**9, 10**9)`` included).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ._checks import is_int

ACTIVATIONS = ("linear", "tanh", "relu")

# Smallest degree (non-zeros per row along the larger dimension) the paper allows.
MIN_DEGREE = {"linear": 2, "tanh": 2, "relu": 4}


@dataclass(frozen=True)
class SAOSizes:
    """The resolved sizes of one SAO layer.

    Attributes:
        out_features, in_features: the weight shape (m, n).
        groups: G, the number of disjoint blocks.
        degree: d = max(m, n) / G, non-zeros per row along the larger dimension.
        block_size: b, the tile width the partitions are drawn over.
        activation: "linear", "tanh" or "relu".
    """

    out_features: int
    in_features: int
    groups: int
    degree: int
    block_size: int
    activation: str

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights: exactly 1 - 1/G."""
        return 1.0 - 1.0 / self.groups

    @property
    def larger(self) -> int:
        return max(self.out_features, self.in_features)

    @property
    def smaller(self) -> int:
        return min(self.out_features, self.in_features)


def check_activation(activation: str) -> None:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; allowed: {', '.join(map(repr, ACTIVATIONS))}")


INT64_MAX = 2**63 - 1  # torch sizes are int64


def check_dim(name: str, value: int) -> int:
    """``value`` as a Python int; a positive integer (numpy integers too), never a bool,
    at most 2**63 - 1 (a torch size)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value > INT64_MAX:
        raise ValueError(f"{name} must be a positive int, got {value!r} (at most 2**63 - 1, a torch size)")
    return int(value)


# ------------------------------------------------------------------ divisors
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def _is_prime(n: int) -> bool:
    """Miller-Rabin with the first 13 prime bases: deterministic below 3.3e24."""
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _SMALL_PRIMES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_brent(n: int) -> int:
    """A non-trivial factor of the odd composite ``n`` (Brent's variant of Pollard's rho)."""
    for c in range(1, n):
        y, m, g, r, q = 2, 128, 1, 1, 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            r *= 2
        if g == n:
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g
    raise ArithmeticError(f"no factor found for {n}")  # unreachable for a composite n


def _prime_factors(n: int) -> dict[int, int]:
    """{prime: exponent} of n >= 1: trial division by small primes, then Pollard-Brent."""
    factors: dict[int, int] = {}
    for p in (2, 3, 5, 7, 11, 13):
        while n % p == 0:
            factors[p] = factors.get(p, 0) + 1
            n //= p
    stack = [n] if n > 1 else []
    while stack:
        k = stack.pop()
        root = math.isqrt(k)
        if root * root == k:  # rho is slow on squares of large primes; split them directly
            stack += [root, root]
        elif _is_prime(k):
            factors[k] = factors.get(k, 0) + 1
        else:
            f = _pollard_brent(k)
            stack += [f, k // f]
    return factors


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` (1 <= n < 2**63), ascending, from its factorisation.

    Trial division by the primes up to 13, then Miller-Rabin and Pollard-Brent: a composite
    below 2**63 has a prime factor below 2**31.5, which rho finds in about 2**16 steps, so
    any size takes at most milliseconds."""
    n = check_dim("n", n)
    divs = [1]
    for p, e in _prime_factors(n).items():
        divs = [d * p**k for d in divs for k in range(e + 1)]
    return sorted(divs)


def _why_invalid(m: int, n: int, groups: int, activation: str, block_size: int) -> str | None:
    """Return why G groups cannot be built for an (m, n) weight, or None if they can."""
    L, S = max(m, n), min(m, n)
    if activation == "relu":
        if m % 2 or n % 2:
            return f"the ReLU (looks-linear) construction needs even sizes, got {m}x{n}"
        L, S = L // 2, S // 2
        where = f" of the half-size {m // 2}x{n // 2} ReLU base matrix"
    else:
        where = ""
    if L % groups:
        return f"{groups} groups do not divide the larger dimension {L}{where}"
    if S % groups:
        return f"{groups} groups do not divide the smaller dimension {S}{where}"
    degree = L // groups
    if degree < MIN_DEGREE["tanh"]:
        full = degree * (2 if activation == "relu" else 1)
        return f"degree {full} is below the minimum {MIN_DEGREE[activation]} for activation={activation!r}"
    if block_size > 1 and (degree % block_size or (S // groups) % block_size):
        return f"block_size={block_size} must divide both block sides, {L // groups} and {S // groups}{where}"
    return None


def valid_groups(out_features: int, in_features: int, activation: str = "tanh", *, block_size: int = 1) -> list[int]:
    """All group counts G that give a valid SAO layer of this shape, ascending.

    G must divide both dimensions (the half-size ones for ReLU), so only the divisors of
    their gcd are tried: O(sqrt-free factorisation + number of divisors), any size.
    """
    m = check_dim("out_features", out_features)
    n = check_dim("in_features", in_features)
    block_size = check_dim("block_size", block_size)
    check_activation(activation)
    if activation == "relu":
        if m % 2 or n % 2:
            return []
        common = math.gcd(m // 2, n // 2)
    else:
        common = math.gcd(m, n)
    return [g for g in divisors(common) if _why_invalid(m, n, g, activation, block_size) is None]


def valid_sparsities(
    out_features: int, in_features: int, activation: str = "tanh", *, block_size: int = 1
) -> list[float]:
    """Every sparsity 1 - 1/G reachable by SAO for an (out, in) weight, ascending.

    >>> valid_sparsities(100, 100)
    [0.0, 0.5, 0.75, 0.8, 0.9, 0.95, 0.96, 0.98]
    """
    return [1.0 - 1.0 / g for g in valid_groups(out_features, in_features, activation, block_size=block_size)]


def degree_from_sparsity(sparsity: float, larger: int) -> int:
    """The paper's ``int((1 - s) * L)``, robust to float error.

    ``(1 - 0.9) * 100`` is 9.999999999999998 in floating point; the user meant degree 10,
    so a product within 1e-6 (relative: enough for a float32 sparsity) of an integer is
    rounded to it before truncation.

    Raises:
        ValueError: ``sparsity`` not a real number in [0, 1], or ``larger`` not a positive int.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not (0.0 <= sparsity <= 1.0):
        raise ValueError(f"sparsity must be a real number in [0, 1], got {sparsity!r}")
    larger = check_dim("larger", larger)
    exact = (1.0 - float(sparsity)) * larger
    nearest = round(exact)
    if abs(exact - nearest) <= 1e-6 * max(1.0, abs(exact)):
        return int(nearest)
    return math.floor(exact)


def _fmt(s: float) -> str:
    return f"{s:.6g}"


def _nearest_message(m: int, n: int, target: float, activation: str, block_size: int) -> str:
    L = max(m, n)
    options = valid_groups(m, n, activation, block_size=block_size)
    if not options:
        return "no sparsity is reachable for this shape"
    sp = [(1.0 - 1.0 / g, g) for g in options]
    above = [x for x in sp if x[0] > target]
    below = [x for x in sp if x[0] < target]
    picks = []
    if above:
        picks.append(min(above, key=lambda x: x[0]))
    if below:
        picks.append(max(below, key=lambda x: x[0]))
    return "nearest valid: " + ", ".join(f"{_fmt(s)} (degree {L // g}, groups {g})" for s, g in picks)


def resolve_sizes(
    out_features: int,
    in_features: int,
    *,
    sparsity: float | None = None,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    block_size: int = 1,
) -> SAOSizes:
    """Resolve exactly one of ``sparsity``, ``degree`` or ``groups`` into SAO sizes.

    Raises:
        ValueError: when none or more than one is given, or the request cannot be built
            for this shape; the message names the argument, the shape and the nearest
            valid values.  It never loops.
    """
    out_features = check_dim("out_features", out_features)
    in_features = check_dim("in_features", in_features)
    block_size = check_dim("block_size", block_size)
    check_activation(activation)
    given = [k for k, v in (("sparsity", sparsity), ("degree", degree), ("groups", groups)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of sparsity, degree or groups"
            + (f"; got {' and '.join(given)}" if given else "; got none")
        )
    m, n = out_features, in_features
    L = max(m, n)
    shape = f"{m}x{n} (out x in)"
    if activation == "relu":
        shape += " with activation='relu'"
    if block_size > 1:
        shape += f" with block_size={block_size}"

    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not (0.0 <= sparsity < 1.0):
            raise ValueError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
        d = degree_from_sparsity(float(sparsity), L)
        arg, target = f"sparsity={sparsity!r}", float(sparsity)
    elif degree is not None:
        if not is_int(degree) or degree < 1:
            raise ValueError(f"degree must be a positive int, got {degree!r}")
        d = int(degree)
        arg, target = f"degree={degree}", 1.0 - degree / L
    else:
        if not is_int(groups) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        G = int(groups)
        why = _why_invalid(m, n, G, activation, block_size)
        if why is not None:
            raise ValueError(
                f"groups={G} is not reachable for {shape}: {why}; "
                f"{_nearest_message(m, n, 1.0 - 1.0 / G, activation, block_size)}"
            )
        return SAOSizes(m, n, G, L // G, block_size, activation)

    # sparsity or degree: the degree must divide the larger dimension.
    if d < MIN_DEGREE[activation]:
        why = f"degree {d} is below the minimum {MIN_DEGREE[activation]} for activation={activation!r}"
    elif d > L:
        why = f"degree {d} exceeds the larger dimension {L}"
    elif L % d:
        why = f"degree {d} does not divide {L}"
    elif activation == "relu" and d % 2:
        why = f"the ReLU construction halves the degree, so it must be even, got {d}"
    else:
        why = _why_invalid(m, n, L // d, activation, block_size)
    if why is not None:
        raise ValueError(
            f"{arg} is not reachable for {shape}: {why}; {_nearest_message(m, n, target, activation, block_size)}"
        )
    return SAOSizes(m, n, L // d, d, block_size, activation)
