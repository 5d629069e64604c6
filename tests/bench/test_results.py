"""sao_kernels.bench.results: atomic result sets, up-front write checks, tables with flags."""

import csv
import io
import os
import stat

import pytest

from sao_kernels.bench.results import (
    check_writable,
    flag_cells,
    fmt_ms,
    fmt_speedup,
    markdown_table,
    text_file,
    to_csv,
    write_outputs,
)


def test_write_outputs_replaces_the_set_and_removes_stale_files(tmp_path):
    (tmp_path / "results.json").write_text("old")
    (tmp_path / "speedup.png").write_text("old plot")
    paths = write_outputs(tmp_path, {"results.json": text_file("new")}, owned=["results.json", "speedup.png"])
    assert paths == {"results.json": tmp_path / "results.json"}
    assert (tmp_path / "results.json").read_text() == "new"
    assert not (tmp_path / "speedup.png").exists()  # no previous run's plot next to the new results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary files left


def test_a_failing_producer_leaves_the_old_files_untouched(tmp_path):
    (tmp_path / "results.json").write_text("old")
    (tmp_path / "speedup.png").write_text("old plot")

    def broken_plot(path):
        path.write_text("half")
        raise RuntimeError("matplotlib exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        write_outputs(
            tmp_path,
            {"results.json": text_file("new"), "speedup.png": broken_plot},
            owned=["results.json", "speedup.png"],
        )
    assert (tmp_path / "results.json").read_text() == "old"
    assert (tmp_path / "speedup.png").read_text() == "old plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "speedup.png"]


def test_producers_get_a_temporary_path_with_the_real_suffix(tmp_path):
    seen = []
    write_outputs(tmp_path, {"a.png": lambda p: (seen.append(p), p.write_bytes(b"x"))})
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path and seen[0].name != "a.png"
    assert stat.S_IMODE(os.stat(tmp_path / "a.png").st_mode) == 0o644


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--out: cannot write results to"):
        check_writable(blocker / "sub", "--out")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write"):
            check_writable(ro)


def test_tables_show_spread_and_numbered_flag_reasons():
    rows = [
        dict(
            name="a",
            ms=1.0,
            ms_iqr=0.01,
            ms_dense=4.0,
            ms_dense_iqr=0.02,
            speedup=4.0,
            speedup_lo=3.9,
            speedup_hi=4.1,
            flag="",
            flag_reason="",
        ),
        dict(
            name="b",
            ms=1.0,
            ms_iqr=0.5,
            ms_dense=4.0,
            ms_dense_iqr=0.02,
            speedup=4.0,
            speedup_lo=2.0,
            speedup_hi=6.0,
            flag="noisy",
            flag_reason="noisy: SAO IQR 50%",
        ),
        dict(
            name="c",
            ms=1.0,
            ms_iqr=0.5,
            ms_dense=4.0,
            ms_dense_iqr=0.02,
            speedup=4.0,
            speedup_lo=2.0,
            speedup_hi=6.0,
            flag="noisy",
            flag_reason="noisy: SAO IQR 50%",
        ),
    ]
    assert fmt_ms(rows[0]) == "1 (0.01)" and fmt_ms(rows[0], side="_dense") == "4 (0.02)"
    assert fmt_speedup(rows[1]) == "4.00x [2.00-6.00]"
    cell, notes = flag_cells(rows)
    assert [cell(r) for r in rows] == ["", "noisy [1]", "noisy [1]"] and notes == ["1. noisy: SAO IQR 50%"]
    lines = markdown_table(rows, [("name", lambda r: r["name"], False), ("flag", cell, False)])
    assert lines[0] == "| name | flag |" and lines[3] == "| b | noisy [1] |"
    back = list(csv.DictReader(io.StringIO(to_csv(rows, ("name", "speedup_lo", "flag_reason", "missing")))))
    assert back[1] == {"name": "b", "speedup_lo": "2.0", "flag_reason": "noisy: SAO IQR 50%", "missing": ""}


def test_keep_previous_numbers_the_new_set_and_never_replaces_an_old_file(tmp_path):
    """Issue 24: re-running into the same --out silently overwrote the previous results."""
    (tmp_path / "results.json").write_text("run 1")
    (tmp_path / "speedup-2.png").write_text("a stray file of a second run")
    producers = {"results.json": text_file("run 2"), "results.md": text_file("md 2")}
    paths = write_outputs(tmp_path, producers, owned=["speedup.png"], keep_previous=True)
    # -2 is taken by one file of the set, so the whole set moves on to -3 (one number per run)
    assert paths == {"results.json": tmp_path / "results-3.json", "results.md": tmp_path / "results-3.md"}
    assert (tmp_path / "results.json").read_text() == "run 1"
    assert (tmp_path / "speedup-2.png").read_text() == "a stray file of a second run"
    assert (tmp_path / "results-3.json").read_text() == "run 2"
    # an empty folder: the plain names, as before
    fresh = tmp_path / "fresh"
    assert write_outputs(fresh, producers, keep_previous=True)["results.json"] == fresh / "results.json"


def test_fresh_folder_never_reuses_a_folder_with_files(tmp_path):
    """bench --suite tiers writes into tiers_<machine>_<date>: a second run that day gets -2."""
    from sao_kernels.bench.results import fresh_folder

    first = tmp_path / "tiers_box_2026-12-06"
    assert fresh_folder(first) == first  # does not exist yet
    first.mkdir()
    assert fresh_folder(first) == first  # empty: nothing to keep
    (first / "avx2.json").write_text("run 1")
    assert fresh_folder(first) == tmp_path / "tiers_box_2026-12-06-2"
    (tmp_path / "tiers_box_2026-12-06-2").mkdir()
    (tmp_path / "tiers_box_2026-12-06-2" / "avx2.json").write_text("run 2")
    assert fresh_folder(first) == tmp_path / "tiers_box_2026-12-06-3"
