"""``python -m sao_kernels bench --compare OLD.json``: this run against an earlier results.json.

Rows are matched on what was measured (``KEY_FIELDS``: op / case / model, mode, backend,
device, dtype, shape, G, block size, contention), never on the timings.  For each match the
speed-up change is new / old - 1; a match is a regression under ``--fail-threshold t`` when
the two 95 % intervals are further apart than ``t``: the new interval's top is below
(1 - t) x the old interval's bottom, so a drop inside the runs' own spread never fails a
build (pytest-benchmark's ``--benchmark-compare-fail``, with the spread taken into account).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

# What a row measured, in the order a label shows them (the sweep, small-width and models
# suites' descriptive fields; timings, flags, FLOPs and parameters are never part of the key).
KEY_FIELDS = (
    "op",
    "case",
    "model",
    "mode",
    "backend",
    "device",
    "dtype",
    "shape",
    "tokens",
    "in_features",
    "out_features",
    "width",
    "height",
    "depth",
    "batch",
    "kernel_size",
    "groups",
    "block_size",
    "contention",
)
_SHORT = {
    "tokens": "T",
    "in_features": "n",
    "out_features": "m",
    "groups": "G",
    "block_size": "b",
    "batch": "B",
    "height": "H",
    "width": "W",
    "kernel_size": "k",
    "depth": "depth",
}


def load_results(path: str | os.PathLike, what: str = "--compare") -> dict:
    """An earlier results.json ({"meta", "results", ...}).

    Raises:
        ValueError: naming ``what`` and the path, when it cannot be read or is not a
            results file of ``python -m sao_kernels bench``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise ValueError(f"{what}: cannot read {str(path)!r}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: {str(path)!r} is not JSON ({err})") from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "speedup" in r for r in rows):
        raise ValueError(
            f"{what}: {str(path)!r} is not a results.json of `bench` (expected an object with a "
            "'results' list of rows that each have a 'speedup')"
        )
    return data


def row_key(row: dict) -> tuple:
    """The fields that say what ``row`` measured, as a hashable key."""
    return tuple((f, tuple(v) if isinstance(v, list) else v) for f in KEY_FIELDS if (v := row.get(f)) is not None)


def row_label(row: dict, fields: Sequence[str] = KEY_FIELDS) -> str:
    """'linear_fwd native float32 T=512 n=2048 G=4' (the given fields that ``row`` has)."""
    parts = []
    for f in fields:
        v = row.get(f)
        if v is None or f == "device" or (f == "contention" and not v):
            continue
        parts.append("contention" if f == "contention" else f"{_SHORT[f]}={v}" if f in _SHORT else str(v))
    return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Change:
    """One matched row: old and new speed-up with their intervals."""

    label: str
    old: tuple[float, float, float]  # speed-up, lo, hi
    new: tuple[float, float, float]
    regression: bool

    @property
    def change(self) -> float:
        return self.new[0] / self.old[0] - 1.0

    def verdict(self) -> str:
        if self.regression:
            return "REGRESSION"
        if self.new[2] < self.old[1]:
            return "slower (beyond the spread)"
        if self.new[1] > self.old[2]:
            return "faster (beyond the spread)"
        return "within the spread"


@dataclasses.dataclass(frozen=True)
class RunComparison:
    changes: list[Change]
    only_old: int
    only_new: int
    threshold: float | None

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]


def _interval(row: dict) -> tuple[float, float, float]:
    s = float(row["speedup"])
    lo, hi = row.get("speedup_lo"), row.get("speedup_hi")
    return s, float(lo) if lo is not None else s, float(hi) if hi is not None else s


def compare_runs(old_rows: Sequence[dict], new_rows: Sequence[dict], threshold: float | None = None) -> RunComparison:
    """Match ``new_rows`` to ``old_rows`` by :func:`row_key`; regressions per ``threshold``
    (None: report only).  A key seen twice in one run matches its first row."""
    old = {}
    for r in old_rows:
        old.setdefault(row_key(r), r)
    changes, matched = [], set()
    for r in new_rows:
        key = row_key(r)
        if key not in old or key in matched:
            continue
        matched.add(key)
        o, n = _interval(old[key]), _interval(r)
        regression = threshold is not None and n[2] < (1.0 - threshold) * o[1]
        changes.append(Change(row_label(r), o, n, regression))
    new_keys = {row_key(r) for r in new_rows}
    return RunComparison(changes, len(set(old) - new_keys), len(new_keys - matched), threshold)


def comparison_markdown(cmp: RunComparison, old_meta: dict, new_meta: dict, old_path: str, new_path: str) -> str:
    """compare.md: which runs, the counts, and a table of every matched row."""
    rule = (
        f"regression = the new 95% interval's top below (1 - {cmp.threshold:g}) x the old interval's bottom"
        if cmp.threshold is not None
        else "no --fail-threshold: changes reported, nothing fails"
    )
    lines = [
        f"Comparison of `{new_path}` ({new_meta.get('machine')}, {new_meta.get('date')}) with `{old_path}` "
        f"({old_meta.get('machine')}, {old_meta.get('date')}).",
        "",
        summary_line(cmp) + f" ({rule}).",
    ]
    if old_meta.get("machine") != new_meta.get("machine"):
        lines += ["", "**Different machines**: the speed-ups are comparable only as far as the machines are."]
    lines += [
        "",
        "| row | old speed-up [95% CI] | new speed-up [95% CI] | change | verdict |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for c in cmp.changes:
        lines.append(f"| {c.label} | {_fmt(c.old)} | {_fmt(c.new)} | {100 * c.change:+.1f}% | {c.verdict()} |")
    return "\n".join(lines) + "\n"


def summary_line(cmp: RunComparison) -> str:
    """'12 matching rows, 1 regression; 3 only in the old run, 0 only in this run'."""
    n = len(cmp.regressions)
    regress = "" if cmp.threshold is None else f", {n} regression{'s' if n != 1 else ''}"
    return (
        f"{len(cmp.changes)} matching row{'s' if len(cmp.changes) != 1 else ''}{regress}; "
        f"{cmp.only_old} only in the old run, {cmp.only_new} only in this run"
    )


def _fmt(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.2f}x [{v[1]:.2f}-{v[2]:.2f}]"
