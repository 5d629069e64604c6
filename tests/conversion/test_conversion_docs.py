"""Every Python snippet of docs/conversion.md runs as written (each in a fresh interpreter in a
temporary directory), and the summary table it shows is the one the code prints."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "conversion.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC, flags=re.S | re.M)


def run(code: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_doc_has_snippets():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_snippet_runs(index, tmp_path):
    proc = run(BLOCKS[index], tmp_path)
    assert proc.returncode == 0, f"docs/conversion.md snippet {index} failed:\n{proc.stderr[-4000:]}"
    if index == 0:  # the table the doc shows (long reasons cut at "..." there)
        shown = re.search(r"^Prints \(the first call\):\n\n```text\n(.*?)^```", DOC, flags=re.S | re.M).group(1)
        printed = proc.stdout.splitlines()
        for want, got in zip(shown.splitlines(), printed, strict=False):
            assert got.startswith(want.removesuffix("...")), (want, got)
