"""What the README promises a newcomer: it fits a screen or two, its set-up block runs in the order
written, and it names the main job and the test command.  Its code blocks run (or are checked)
in tests/repo/test_docs.py with every other Markdown file's."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)


def test_readme_stays_short():
    """Issue 24: the details live in docs/ (README was 47 KB); the README keeps about 10 KB."""
    assert len(README.encode()) <= 10_500, f"README.md is {len(README.encode())} bytes; move details to docs/"


def test_first_block_is_the_set_up_in_the_order_it_runs():
    lang, code = BLOCKS[0]
    assert lang == "bash"
    lines = [line.split("#")[0].strip() for line in code.splitlines()]

    def first(prefix: str) -> int:
        hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert hits, f"README's set-up block has no `{prefix} ...` line"
        return hits[0]

    torch = first("pip install torch")
    build_tools = first("pip install -U setuptools wheel")
    package = first('pip install --no-build-isolation -e ".[test]"')
    assert torch < package and build_tools < package  # the build needs torch, setuptools and wheel first
    assert "download.pytorch.org/whl/cpu" in lines[torch]  # the 200 MB CPU build, not the CUDA one


def test_readme_names_the_main_job_and_the_tests():
    shell = "\n".join(code for lang, code in BLOCKS if lang == "bash")
    assert "python -m sao_kernels bench" in shell
    assert "python -m pytest -q" in shell
    assert "`--no-build-isolation` builds" in README.split("```")[2]  # and says why, right after the set-up block
    assert [lang for lang, _ in BLOCKS].count("python") == 1  # the one example; the rest is in docs/


def test_every_docs_page_is_linked_from_the_readme():
    """A newcomer finds every page from the README (links checked in tests/repo/test_pointers.py)."""
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    pages += ["benchmarks/paper/README.md", "benchmarks/gpu/README.md", "CONTRIBUTING.md"]
    unlinked = [p for p in pages if f"]({p}" not in README]
    assert not unlinked, f"README.md links none of {unlinked}"
