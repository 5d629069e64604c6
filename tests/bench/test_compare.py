"""sao_kernels.bench.compare: matching a run's rows to an earlier results.json, regressions
beyond the spread (``bench --compare OLD.json --fail-threshold``)."""

import json

import pytest

from sao_kernels.bench.compare import compare_runs, comparison_markdown, load_results, row_key


def _row(op, G, s, lo, hi, **extra):
    return dict(
        op=op,
        backend="torch",
        device="cpu",
        dtype="float32",
        tokens=8,
        in_features=32,
        out_features=32,
        groups=G,
        block_size=1,
        contention=False,
        speedup=s,
        speedup_lo=lo,
        speedup_hi=hi,
        ms=1.0 / s,
        flag="",
        **extra,
    )


def _write(path, rows, machine="box"):
    path.write_text(json.dumps({"meta": {"machine": machine, "date": "2026-12-06"}, "results": rows, "skipped": []}))
    return path


def test_matching_rows_changes_and_the_threshold_beyond_the_spread(tmp_path):
    old = load_results(
        _write(
            tmp_path / "old.json",
            [
                _row("linear_fwd", 2, 2.0, 1.9, 2.1),
                _row("linear_fwd", 4, 4.0, 3.8, 4.2),
                _row("linear_fwd", 8, 8.0, 7.0, 9.0),
                _row("linear_grad_input", 2, 1.5, 1.4, 1.6),  # not in the new run
            ],
        )
    )["results"]
    new = [
        _row("linear_fwd", 2, 1.5, 1.45, 1.55, ms_min=0.1),  # -25%, intervals far apart: regression
        _row("linear_fwd", 4, 3.5, 3.3, 3.7),  # -12.5%, but 3.7 >= 0.9 * 3.8: within threshold + spread
        _row("linear_fwd", 8, 8.8, 8.5, 9.1),  # faster, overlapping intervals
        _row("conv2d_fwd", 2, 1.0, 0.9, 1.1),  # not in the old run
    ]
    cmp = compare_runs(old, new, threshold=0.1)
    assert [c.label for c in cmp.changes] == [
        "linear_fwd torch float32 T=8 n=32 m=32 G=2 b=1",
        "linear_fwd torch float32 T=8 n=32 m=32 G=4 b=1",
        "linear_fwd torch float32 T=8 n=32 m=32 G=8 b=1",
    ]
    assert [c.regression for c in cmp.changes] == [True, False, False]
    assert cmp.changes[0].change == pytest.approx(-0.25)
    assert (cmp.only_old, cmp.only_new) == (1, 1)
    assert [c.verdict() for c in cmp.changes] == ["REGRESSION", "slower (beyond the spread)", "within the spread"]
    # no threshold: changes reported, nothing fails; a looser threshold lets the -25% pass
    assert not compare_runs(old, new).regressions
    assert not compare_runs(old, new, threshold=0.3).regressions
    md = comparison_markdown(cmp, {"machine": "a"}, {"machine": "b"}, "old.json", "new.json")
    assert "3 matching rows, 1 regression; 1 only in the old run, 1 only in this run" in md
    assert "| -25.0% | REGRESSION |" in md and "Different machines" in md


def test_keys_ignore_timings_but_not_what_was_measured():
    a, b = _row("linear_fwd", 2, 2.0, 1.9, 2.1), _row("linear_fwd", 2, 9.0, 8.0, 10.0, rounds=7)
    assert row_key(a) == row_key(b)
    assert row_key(a) != row_key(dict(a, dtype="bfloat16")) != row_key(dict(a, contention=True))


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ('{"meta": {}}', "is not a results.json of `bench`"),
        ('{"results": [{"op": "x"}]}', "is not a results.json of `bench`"),
    ],
)
def test_bad_compare_files_name_the_flag(tmp_path, text, message):
    path = tmp_path / "old.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as exc:
        load_results(path)
    assert str(exc.value).startswith("--compare: ")
