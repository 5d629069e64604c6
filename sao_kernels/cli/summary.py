"""What ``python -m sao_kernels bench`` prints: one screen by default, less with ``-q``, the
full table with ``-v`` (the full table and its footnotes are always in results.md).

The default summary is a pivot of the results: one line per configuration (the descriptive
fields that vary between rows: op / case / model, mode, backend, dtype, shape, ...), one
column per G, the speed-up in each cell (``*`` = flagged, the reasons are in results.md).
"""

from __future__ import annotations

import collections
import pathlib
import sys
from collections.abc import Mapping, Sequence

from ..bench.compare import KEY_FIELDS, row_label

MAX_ROWS = 20  # pivot lines shown; with the header, the legend and the paths: one 30-line screen


def add_output_arguments(b) -> None:
    """bench's --out, -q / -v, --compare and --fail-threshold."""
    from .arguments import finite_float

    b.add_argument(
        "--out",
        default="sao_bench",
        help="output folder (default: ./sao_bench); a re-run keeps the earlier files and numbers its own "
        "(results-2.json, speedup-2.png, ...)",
    )
    loud = b.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print one line (the files are the same)")
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="print the full table with its footnotes (as in results.md)"
    )
    b.add_argument(
        "--compare",
        metavar="OLD.json",
        help="compare with an earlier run's results.json: a table of the matching rows (compare.md), the "
        "unmatched ones counted",
    )
    b.add_argument(
        "--fail-threshold",
        type=finite_float(0.0, 1.0, lo_open=False, hi_open=True),
        help="with --compare: exit 3 if a matching row's speed-up dropped by more than this fraction beyond both "
        "runs' 95%% intervals (e.g. 0.1)",
    )


def check_output_arguments(args, err) -> None:
    """Usage errors of --compare / --fail-threshold (``err`` exits 2), before any measuring;
    loads the --compare file into ``args.compare_data``."""
    if args.fail_threshold is not None and not args.compare:
        err("--fail-threshold needs --compare OLD.json")
    if args.compare:
        from ..bench.compare import load_results

        if args.suite == "tiers":
            err("--compare does not apply to --suite tiers")
        try:
            args.compare_data = load_results(args.compare)
        except ValueError as e:
            err(str(e))


def _varying(rows: Sequence[dict]) -> list[str]:
    """KEY_FIELDS (but G) whose value differs between rows: what tells the pivot's lines apart."""
    return [f for f in KEY_FIELDS if f != "groups" and len({repr(r.get(f)) for r in rows}) > 1]


def pivot_lines(rows: Sequence[dict], max_rows: int = MAX_ROWS) -> list[str]:
    """A Markdown table: a line per configuration, a column per G, speed-up cells."""
    fields = _varying(rows) or [f for f in ("op", "case", "model", "mode") if rows and f in rows[0]][:1]
    groups = sorted({r["groups"] for r in rows})
    lines_by: dict[str, dict[int, dict]] = collections.defaultdict(dict)
    for r in rows:
        lines_by[row_label(r, fields)].setdefault(r["groups"], r)

    def cell(r: dict | None) -> str:
        if r is None:
            return ""
        return f"{r['speedup']:.2f}x" + ("*" if r.get("flag") else "")

    out = ["| speed-up over dense | " + " | ".join(f"G={g}" for g in groups) + " |"]
    out.append("| --- |" + " ---: |" * len(groups))
    labels = list(lines_by)
    for label in labels[:max_rows]:
        out.append(f"| {label or 'all'} | " + " | ".join(cell(lines_by[label].get(g)) for g in groups) + " |")
    if len(labels) > max_rows:
        out.append(f"(and {len(labels) - max_rows} more lines: the full table is in results.md)")
    return out


def flag_counts(rows: Sequence[dict]) -> str:
    """'4 of 52 rows flagged (noisy 3, slow-median 1)' or 'no row flagged'."""
    counts = collections.Counter(code for r in rows for code in (r.get("flag") or "").split(",") if code)
    flagged = sum(1 for r in rows if r.get("flag"))
    if not flagged:
        return f"no row of {len(rows)} flagged"
    return f"{flagged} of {len(rows)} rows flagged ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"


def header_lines(meta: dict, what: str) -> list[str]:
    """What ran where: device, machine, threads, load (and the busy-machine note)."""
    from ..bench.machine import busy_load_note, cross_core_note

    load = [(meta.get(k) or [None])[0] for k in ("load_before", "load_after")]
    lines = [
        f"{what} on {meta.get('device')} ({meta.get('gpu') or meta.get('cpu')}; {meta.get('usable_cores')} usable "
        f"cores, {meta.get('threads')} torch threads), {meta.get('date')}; machine `{meta.get('machine')}`; "
        f"1-min load average {load[0]} before, {load[1]} after."
    ]
    return lines + [note for note in (busy_load_note(meta), cross_core_note(meta)) if note]


def skipped_line(skipped: Sequence[dict], where: str) -> str | None:
    """One line: how many combinations were left out or failed, and why (reasons shortened)."""
    if not skipped:
        return None
    reasons = collections.Counter(
        "G and block_size that do not fit the width" if s.get("backend") == "*" else s["reason"].split(" (")[0]
        for s in skipped
    )
    static = sum(1 for s in skipped if s.get("static"))
    what = (
        "can never run here and were left out before timing"
        if static == len(skipped)
        else f"were not measured ({static} left out before timing as they can never run here)"
        if static
        else "were not measured"
    )
    why = "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
    return f"note: {len(skipped)} combinations {what}: {why} (listed in {where})"


def wrote_line(paths: Mapping[str, pathlib.Path]) -> str:
    """'wrote sao_bench/results-2.{json,csv,md}, sao_bench/speedup-2.png'."""
    by_stem: dict[pathlib.Path, list[str]] = collections.defaultdict(list)
    for p in paths.values():
        by_stem[p.with_suffix("")].append(p.suffix[1:])
    parts = [f"{s}.{e[0]}" if len(e) == 1 else f"{s}.{{{','.join(e)}}}" for s, e in by_stem.items()]
    return "wrote " + ", ".join(parts)


def bench_output(data: dict, paths: Mapping[str, pathlib.Path], verbosity: int) -> list[str]:
    """The lines ``bench`` prints after a run: -1 = quiet, 0 = one screen, 1 = the full table."""
    rows, meta = data["results"], data["meta"]
    if verbosity > 0:
        return [paths["md"].read_text().rstrip("\n"), wrote_line(paths)]
    if verbosity < 0:
        speedups = [r["speedup"] for r in rows]
        return [
            f"{meta.get('suite', 'sweep')}: {len(rows)} rows, speed-up {min(speedups):.2f}x-{max(speedups):.2f}x, "
            f"{flag_counts(rows)}; {wrote_line(paths)}"
        ]
    lines = header_lines(meta, f"sao_kernels bench --suite {meta.get('suite', 'sweep')}")
    lines += [""] + pivot_lines(rows)
    lines += [
        "",
        f"* = flagged: {flag_counts(rows)}; the reasons, the medians with their IQR, the intervals and what "
        f"was not measured are in {paths['md'].name} (-v prints it).",
    ]
    if any("slow-median" in (r.get("flag") or "") for r in rows):
        lines.append(
            "slow-median rows: most rounds were slowed by other processes or thread wake-up; compare ms_min in "
            "results.csv, or re-run with --threads 1 on a quiet machine."
        )
    lines.append(wrote_line(paths))
    return lines


def finish_bench(args, paths: Mapping[str, pathlib.Path]) -> int:
    """Print what ``bench`` measured (per -q / -v), compare with ``--compare`` and return the
    exit status: 3 on a regression beyond ``--fail-threshold``, else 0."""
    import json

    from ..bench.compare import compare_runs, comparison_markdown, summary_line
    from ..bench.results import text_file, write_outputs

    data = json.loads(paths["json"].read_text())
    verbosity = -1 if args.quiet else 1 if args.verbose else 0
    print("\n".join(bench_output(data, paths, verbosity)))
    if not getattr(args, "compare", None):
        return 0
    old = args.compare_data
    cmp = compare_runs(old["results"], data["results"], args.fail_threshold)
    md = comparison_markdown(cmp, old.get("meta", {}), data["meta"], args.compare, str(paths["json"]))
    out = paths["json"].parent
    written = write_outputs(out, {"compare.md": text_file(md)}, keep_previous=True)["compare.md"]
    if verbosity > 0:
        print(md.rstrip("\n"))
    elif verbosity == 0:
        table = md.split("\n\n")[-1].rstrip("\n").splitlines()  # the table: header, rule, rows
        shown = [line for line in table[2:] if "REGRESSION" in line or "beyond" in line]
        if shown:
            print("\n".join(table[:2] + shown[:MAX_ROWS]))
    verdict = summary_line(cmp)
    print(f"compared with {args.compare}: {verdict}; wrote {written}")
    if cmp.regressions:
        print(
            f"FAILED: {len(cmp.regressions)} row(s) slower than {args.compare} by more than "
            f"{100 * args.fail_threshold:g}% beyond the spread (see {written})",
            file=sys.stderr,
        )
        return 3
    return 0
