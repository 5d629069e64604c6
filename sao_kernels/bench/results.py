"""Results files: atomic writes, CSV / Markdown tables with spread and flags, speedup.png.

Every output set (results.{json,csv,md} + speedup.png, report.*, the scripts' files) is
written by :func:`write_outputs`: each file is rendered to a temporary file in the target
folder and only then renamed over the old one (``os.replace``), and files of the set that
this run does not produce are deleted, so a folder never mixes two runs.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

from .timing import comparison_columns

# The speed-up's ideal and the row's flags, after the timing columns of a row.
FLAG_FIELDS = ("ideal_speedup", "flag", "flag_reason")
# Timing columns of a row: medians, minima and IQRs in ms, the speed-up with its 95 %
# interval, rounds (timing.comparison_columns), then the ideal and the flags.
TIMING_FIELDS = comparison_columns() + FLAG_FIELDS

HOW_TO_READ = (
    "SAO and dense were timed in the same process, interleaved (one sample of each per round, the order "
    "reversed every other round) until the spread was small or the time budget was spent. ms = median per "
    "call over the rounds, IQR = q3 - q1 of the per-round times. speed-up = dense median / SAO median; "
    "[lo-hi] is its 95% paired bootstrap interval (rounds resampled with replacement). ideal = G, the work "
    "ratio. Flags: noisy = an IQR or the interval's half-width above {limit:.0f}% of the median; "
    "suspect = speed-up above the ideal (impossible from the work saved: check the baseline or the timing); "
    "slow-median = a median above {slow:g}x its min (most rounds slowed by other processes or thread wake-up: "
    "compare the ms_min columns, or re-run with --threads 1 on a quiet machine)."
)


def how_to_read(flag_spread: float) -> str:
    """The paragraph under every results table (flags with this run's limits)."""
    from .timing import MEDIAN_OVER_MIN

    return HOW_TO_READ.format(limit=100 * flag_spread, slow=MEDIAN_OVER_MIN)


# --------------------------------------------------------------------- atomic writes
def check_writable(out_dir: str | os.PathLike, what: str = "out") -> pathlib.Path:
    """Create ``out_dir`` if needed and prove a file can be created there; call this before
    measuring so that a bad folder fails in a second, not after the run.

    Raises:
        ValueError: naming ``what``, the folder and the OS error.
    """
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{what}: cannot write results to {str(out)!r}: {err.strerror or err}") from None
    return out


def run_names(out_dir: str | os.PathLike, names: Iterable[str]) -> dict[str, str]:
    """{name: the name this run writes} so that no file of an earlier run in ``out_dir`` is
    replaced: the names themselves when none of them exists there, else each with the
    smallest suffix ``-N`` (N >= 2) free for the whole set (``results-2.json``,
    ``speedup-2.png``), so the files of one run keep one number."""
    out, names = pathlib.Path(out_dir), list(names)

    def numbered(name: str, n: int) -> str:
        stem, dot, ext = name.partition(".")
        return f"{stem}-{n}{dot}{ext}"

    if not any((out / name).exists() for name in names):
        return {name: name for name in names}
    n = 2
    while any((out / numbered(name, n)).exists() for name in names):
        n += 1
    return {name: numbered(name, n) for name in names}


def fresh_folder(path: str | os.PathLike) -> pathlib.Path:
    """``path`` when it does not exist or is empty, else ``path-2``, ``path-3``, ... (the first
    free one): a run's own folder, never one holding an earlier run's files."""
    path = pathlib.Path(path)
    n, candidate = 2, path
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def write_outputs(
    out_dir: str | os.PathLike,
    producers: Mapping[str, Callable[[pathlib.Path], None]],
    owned: Iterable[str] = (),
    *,
    keep_previous: bool = False,
) -> dict[str, pathlib.Path]:
    """Write a set of files atomically; returns {file name: path}.

    Args:
        producers: file name -> function writing that file to the path it is given (a
            temporary file with the same suffix, in ``out_dir``).
        owned: further names of this set; any of them not produced now is deleted, so a
            previous run's file never sits next to this run's (e.g. a stale speedup.png).
        keep_previous: never replace an earlier run's files: when any name of the set
            (produced or owned) exists, write the set under the numbered names of
            :func:`run_names` instead (the returned paths say where); nothing is deleted.

    If any producer raises, every temporary file is removed, the old files are left as
    they were, and the exception propagates.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if keep_previous:
        actual = run_names(out, [*producers, *(set(owned) - set(producers))])
        if any(actual[name] != name for name in actual):
            owned = ()  # a new numbered set: nothing of it exists, nothing to delete
    else:
        actual = {name: name for name in producers}
    temps: dict[str, pathlib.Path] = {}
    try:
        for name, produce in producers.items():
            target = out / actual[name]
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{target.stem}.", suffix=target.suffix)
            os.close(fd)
            temps[name] = pathlib.Path(tmp)
            produce(temps[name])
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    paths = {}
    for name, tmp in temps.items():
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / actual[name])
        paths[name] = out / actual[name]
    for name in set(owned) - set(producers):
        (out / name).unlink(missing_ok=True)
    return paths


def text_file(text: str) -> Callable[[pathlib.Path], None]:
    """A producer for :func:`write_outputs` that writes ``text`` (UTF-8)."""
    return lambda path: path.write_text(text, encoding="utf-8")


def json_file(obj: object) -> Callable[[pathlib.Path], None]:
    """A producer for :func:`write_outputs` that writes ``obj`` as indented JSON."""
    return text_file(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(v: object) -> object:
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)


# -------------------------------------------------------------------- table helpers
def to_csv(rows: Iterable[dict], fields: Sequence[str]) -> str:
    """CSV with the given columns (missing values empty, lists joined with 'x')."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r.get(k)) for k in fields})
    return buf.getvalue()


def _csv_value(v: object) -> object:
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return "" if v is None else v


def fmt_ms(row: dict, tag: str = "", side: str = "") -> str:
    """'median (IQR iqr)' of ``ms{tag}{side}`` (side '' = SAO, '_dense' = dense)."""
    med, iqr = row.get(f"ms{tag}{side}"), row.get(f"ms{tag}{side}_iqr")
    if med is None:
        return ""
    return f"{med:.4g} ({iqr:.2g})" if iqr is not None else f"{med:.4g}"


def fmt_speedup(row: dict, tag: str = "") -> str:
    """'1.91x [1.85-1.97]'."""
    v, lo, hi = row.get(f"speedup{tag}"), row.get(f"speedup{tag}_lo"), row.get(f"speedup{tag}_hi")
    if v is None:
        return ""
    return f"{v:.2f}x [{lo:.2f}-{hi:.2f}]" if lo is not None else f"{v:.2f}x"


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], str], bool]]) -> list[str]:
    """Lines of a Markdown table; columns are (header, cell function, right-aligned)."""
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " |",
        "|" + "|".join(" ---: " if right else " --- " for _, _, right in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(cell(r) for _, cell, _ in columns) + " |")
    return lines


def flag_cells(
    rows: Sequence[dict], flag_key: str = "flag", reason_key: str = "flag_reason"
) -> tuple[Callable[[dict], str], list[str]]:
    """(cell function "noisy [2]", note lines "2. reason") numbering each distinct reason once."""
    numbers: dict[str, int] = {}
    for r in rows:
        reason = r.get(reason_key)
        if reason and reason not in numbers:
            numbers[reason] = len(numbers) + 1

    def cell(r: dict) -> str:
        reason = r.get(reason_key)
        return f"{r.get(flag_key)} [{numbers[reason]}]" if reason else ""

    notes = [f"{n}. {reason}" for reason, n in numbers.items()]
    return cell, notes


def meta_header(meta: dict, what: str) -> list[str]:
    """The lines that say what a table was measured on (machine, versions, load)."""
    from .machine import busy_load_note, cross_core_note, cross_core_ratios

    name = meta.get("gpu") or meta.get("cpu")
    lines = [
        f"{what} on {meta['device']} ({name}; {meta.get('usable_cores')} usable cores, {meta['threads']} torch "
        f"threads), torch {meta['torch']}, triton {meta.get('triton')}, sao_kernels {meta['sao_kernels']}, "
        f"{meta['date']}. Machine label: `{meta.get('machine', '')}`.",
        "",
        f"Load average (1, 5, 15 min) before the run: {meta.get('load_before')}; after: {meta.get('load_after')}.",
    ]
    probes = [meta.get(k) for k in ("cross_core_before", "cross_core_after")]
    if any(probes):
        ratios = cross_core_ratios([p and p["ratio"] for p in probes], digits=2, unit="x")
        lines.append(f"Cross-core probe (reading another core's writes / one's own, before / after): {ratios}.")
    if meta.get("contention"):
        lines.append(f"Contention rows ran with a busy-loop process pinned on core {meta['contention']['core']}.")
    lines += [note for note in (busy_load_note(meta), cross_core_note(meta)) if note]
    return lines + [""]


def skipped_lines(skipped: Sequence[dict]) -> list[str]:
    """'Left out before timing' (``static`` entries) and 'Not measured' sections: each
    distinct reason once, with what it applied to."""
    lines = []
    for static, title in ((True, "Left out before timing (these can never run here):"), (False, "Not measured:")):
        by_reason: dict[str, list[str]] = collections.defaultdict(list)
        for s in skipped:
            if bool(s.get("static")) == static:
                by_reason[s["reason"]].append(s["what"])
        if by_reason:
            lines += ["", title, ""]
        for reason, whats in by_reason.items():
            shown = "; ".join(whats[:4]) + (f"; and {len(whats) - 4} more" if len(whats) > 4 else "")
            lines.append(f"- {reason} ({len(whats)}: {shown})")
    return lines


def finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# ------------------------------------------------------------------ one results set
def results_markdown(
    rows: Sequence[dict],
    meta: dict,
    *,
    what: str,
    columns: Sequence[tuple[str, Callable[[dict], str], bool]],
    skipped: Sequence[dict] = (),
    flag_spread: float = 0.10,
    notes: Sequence[str] = (),
) -> str:
    """Header (machine, load), how to read, the table with a flag column, flag reasons,
    and what was not measured."""
    flag_cell, flag_notes = flag_cells(rows)
    lines = meta_header(meta, what) + [how_to_read(flag_spread), ""] + list(notes)
    if notes:
        lines.append("")
    lines += markdown_table(rows, list(columns) + [("flag", flag_cell, False)])
    if flag_notes:
        lines += ["", "Flags:", ""] + flag_notes
    lines += skipped_lines(skipped)
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | os.PathLike,
    rows: Sequence[dict],
    meta: dict,
    *,
    stem: str,
    fields: Sequence[str],
    markdown: str,
    skipped: Sequence[dict] = (),
    formats: Sequence[str] = ("json", "csv", "md"),
    plot: tuple[str, Callable[[pathlib.Path], None]] | None = None,
    owned_plot: str | None = None,
    keep_previous: bool = False,
) -> dict[str, pathlib.Path]:
    """Write ``{stem}.json`` ({"meta", "results", "skipped"}), ``.csv``, ``.md`` and the plot
    (file name, producer) atomically into ``out_dir``; returns {suffix: path}.  A plot file
    of this set (``owned_plot``) that is not produced this time is deleted; with
    ``keep_previous`` an earlier run's set is kept and this one numbered (:func:`write_outputs`)."""
    producers: dict[str, Callable[[pathlib.Path], None]] = {}
    if "json" in formats:
        producers[f"{stem}.json"] = json_file({"meta": meta, "results": list(rows), "skipped": list(skipped)})
    if "csv" in formats:
        producers[f"{stem}.csv"] = text_file(to_csv(rows, fields))
    if "md" in formats:
        producers[f"{stem}.md"] = text_file(markdown)
    if plot is not None:
        producers[plot[0]] = plot[1]
    owned = [f"{stem}.{s}" for s in ("json", "csv", "md")] + ([owned_plot] if owned_plot else [])
    written = write_outputs(out_dir, producers, owned, keep_previous=keep_previous)
    return {name.rsplit(".", 1)[1]: path for name, path in written.items()}
