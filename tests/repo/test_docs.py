"""Every Python snippet of docs/*.md runs as written (each in a fresh interpreter, in a
temporary directory), as tests/repo/test_readme.py does for the README."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Pages whose snippets a test of their own runs (chained snippets, printed output checked).
DEDICATED = {
    "conversion.md": "conversion/test_conversion_docs.py",
    "deploy.md": "deploy/test_deploy.py",
    "pretrained.md": "conversion/test_pretrained.py",
}
BLOCKS = [
    (path.name, i, textwrap.dedent(block))
    for path in sorted((ROOT / "docs").glob("*.md"))
    if path.name not in DEDICATED
    for i, block in enumerate(
        re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    )
]


def test_docs_have_python_snippets():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("page, test_file", sorted(DEDICATED.items()))
def test_dedicated_doc_tests_exist(page, test_file):
    assert (ROOT / "docs" / page).exists()
    assert f"docs/{page}" in (ROOT / "tests" / test_file).read_text(encoding="utf-8")


@pytest.mark.parametrize("name, index, code", BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_docs_python_snippet_runs(name, index, code, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAO_KERNELS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{name} snippet {index} failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
