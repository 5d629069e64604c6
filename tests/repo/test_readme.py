"""Every Python snippet of README.md runs as written (each in a fresh interpreter, in a
temporary directory, so files a snippet writes do not land in the repository), and the
README's shell commands name things that exist."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# fenced blocks, also those indented inside a list item
BLOCKS = [textwrap.dedent(b) for b in re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", README, flags=re.S | re.M)]


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_snippet_runs(index, tmp_path):
    code = BLOCKS[index]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAO_KERNELS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"README snippet {index} failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"


def test_readme_commands_name_existing_files_and_flags():
    """The scripts and CLI sub-commands the README's shell blocks run exist."""
    shell = "\n".join(re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M))
    for script in re.findall(r"python (benchmarks/\S+\.py)", shell):
        assert (ROOT / script).is_file(), script
    for sub in re.findall(r"python -m sao_kernels (\w+)", shell):
        assert sub in ("bench", "report", "info"), sub
    assert 'pip install --no-build-isolation -e ".[test]"' in README
