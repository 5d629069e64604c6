"""Statistics of the paper's comparisons: paired and Welch t intervals, TOST equivalence, and
the confirm / contradict / cannot-tell rule every claim is read with.

Differences are taken per seed where both arms ran the same seeds: a seed fixes the data
order and the input / head layers of every init (training.EpochSampler, models.build_mlp), so
the paired difference removes that shared noise.  Arms with different seed sets fall back to
Welch's unequal-variance t.  With n = 3 the t quantile is 4.30 (df 2), not the normal 1.96:
"|diff| > 2 SE" is not a 95 % rule at these sample sizes.

Equivalence ("ties", "free", "comparable") is a claim of its own with a declared margin
(``MARGIN``, +-1 accuracy point): two one-sided t tests (TOST) at alpha 0.05, i.e. the 90 %
interval inside (-margin, +margin).  A wide interval is "cannot tell", never a tie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _st  # scipy comes with scikit-learn (the [paper] extra)

#: The equivalence margin of every "ties" / "free" / "comparable" claim: +-1 accuracy point.
MARGIN = 0.01
#: Confidence level of the reported intervals; TOST runs at alpha = 1 - LEVEL.
LEVEL = 0.95


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(_st.t.ppf(q, df))


def _t_cdf(x: float, df: float) -> float:
    return float(_st.t.cdf(x, df))


@dataclass(frozen=True)
class Comparison:
    """The difference a - b of two arms (accuracy as a fraction, or any other measure).

    ``low``, ``high``: the two-sided ``LEVEL`` t interval; ``p``: two-sided p of "no
    difference"; ``p_equiv``: TOST p of "|a - b| < margin".  All None when n is too small
    for a spread (a paired n < 2 or a Welch arm with n < 2).
    """

    diff: float
    low: float | None
    high: float | None
    se: float | None
    df: float | None
    p: float | None
    p_equiv: float | None
    n: tuple[int, int]  # (n_a, n_b); paired: both equal the number of pairs
    paired: bool
    margin: float = MARGIN

    @property
    def defined(self) -> bool:
        return self.se is not None


def _finish(diff: float, se: float | None, df: float | None, n, paired: bool, margin: float, level: float):
    if se is None or df is None:
        return Comparison(diff, None, None, None, None, None, None, n, paired, margin)
    if se == 0.0:  # identical differences on every seed (e.g. both arms at chance on every seed)
        p = 1.0 if diff == 0 else 0.0
        return Comparison(diff, diff, diff, 0.0, df, p, 0.0 if abs(diff) < margin else 1.0, n, paired, margin)
    half = t_quantile(0.5 + level / 2, df) * se
    t = diff / se
    p = 2 * (1 - _t_cdf(abs(t), df))
    # TOST: H0 diff <= -margin (reject when t_lo is large) and H0 diff >= +margin
    p_lo = 1 - _t_cdf((diff + margin) / se, df)
    p_hi = _t_cdf((diff - margin) / se, df)
    return Comparison(diff, diff - half, diff + half, se, df, p, max(p_lo, p_hi), n, paired, margin)


def paired(a: Mapping[int, float], b: Mapping[int, float], margin: float = MARGIN, level: float = LEVEL) -> Comparison:
    """Paired t over the seeds both arms ran (``a``, ``b``: {seed: value})."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired comparison needs at least one common seed")
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    mean = math.fsum(d) / n
    if n < 2:
        return _finish(mean, None, None, (n, n), True, margin, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    return _finish(mean, sd / math.sqrt(n), n - 1, (n, n), True, margin, level)


def welch(a: Sequence[float], b: Sequence[float], margin: float = MARGIN, level: float = LEVEL) -> Comparison:
    """Welch's unequal-variance t (Welch-Satterthwaite degrees of freedom)."""
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        raise ValueError("welch comparison needs values in both arms")
    ma, mb = math.fsum(a) / na, math.fsum(b) / nb
    if na < 2 or nb < 2:
        return _finish(ma - mb, None, None, (na, nb), False, margin, level)
    va = math.fsum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = math.fsum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if se > 0 else float(na + nb - 2)
    return _finish(ma - mb, se, df, (na, nb), False, margin, level)


def compare(a: Mapping[int, float], b: Mapping[int, float], margin: float = MARGIN, level: float = LEVEL) -> Comparison:
    """Paired when both arms ran the same seeds, else Welch."""
    if set(a) == set(b):
        return paired(a, b, margin, level)
    return welch(list(a.values()), list(b.values()), margin, level)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None]:
    """(mean, half-width of its t interval); half-width None for one value."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    return mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


#: What a claim says about a - b.
CLAIM_KINDS = ("higher", "lower", "equal")


def verdict(c: Comparison, claim: str, alpha: float = 1 - LEVEL) -> str:
    """confirm / contradict / cannot tell for a claim about a - b.

    ``higher`` (a beats b): confirm when the interval is above 0, contradict when below 0.
    ``lower``: the mirror.  ``equal`` (a ties b within the margin): confirm when TOST rejects
    both one-sided nulls (p_equiv < alpha); contradict when a difference is detected (the
    interval excludes 0) and equivalence is not shown; otherwise cannot tell.
    """
    if claim not in CLAIM_KINDS:
        raise ValueError(f"claim must be one of {CLAIM_KINDS}, got {claim!r}")
    if not c.defined:
        return "cannot tell"
    if claim == "equal":
        if c.p_equiv < alpha:
            return "confirm"
        if c.low > 0 or c.high < 0:
            return "contradict"
        return "cannot tell"
    sign = 1 if claim == "higher" else -1
    low, high = (c.low, c.high) if sign == 1 else (-c.high, -c.low)
    if low > 0:
        return "confirm"
    if high < 0:
        return "contradict"
    return "cannot tell"


def fmt_points(c: Comparison, scale: float = 100.0, digits: int = 1) -> str:
    """'-0.7 [-3.0, +1.5]' in points (scale 100), or '-0.7 [n/a]' without an interval."""
    d = f"{scale * c.diff:+.{digits}f}"
    if not c.defined:
        return f"{d} [n/a]"
    return f"{d} [{scale * c.low:+.{digits}f}, {scale * c.high:+.{digits}f}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"
