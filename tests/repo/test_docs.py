"""Every code block of every Markdown file in the repository is accounted for, by its fence's
language and, where needed, an annotation on the line above the fence:

* ```python   runs as written, each block in a fresh interpreter in a temporary directory (files
              it writes do not land in the repository).  A block that a test of its own runs
              (chained blocks, printed output compared) carries
              ``<!-- doc-test: run-by tests/<its test>.py -->``, and that test must name the page.
* ```bash     commands: not run here (they install, or take minutes), but checked: every script
              they run exists, every ``--flag`` given to ``python -m sao_kernels SUB`` or to a
              ``python SCRIPT.py`` is in its ``--help``, and every ``pip install -e`` builds the
              native extension (``--no-build-isolation``).
* ```text     printed output or a formula: nothing to run.
* anything else, or a fence without a language, must carry ``<!-- doc-test: not-run: why -->``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^([ \t]*)```(\S*)[ \t]*$")
ANNOTATION = re.compile(r"^[ \t]*<!-- doc-test: (run-by (?P<test>\S+)|not-run: (?P<why>.+?)) -->[ \t]*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    run_by: str | None  # a test file that runs this block
    not_run: str | None  # why this block is not run

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def markdown_files() -> list[pathlib.Path]:
    """Every Markdown file of the repository (tracked, or new and not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return sorted({ROOT / p for p in out if (ROOT / p).is_file()})
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = ("build", "dist", "__pycache__")
        return sorted(p for p in ROOT.rglob("*.md") if not any(q.startswith(".") or q in skip for q in p.parts))


def parse(page: pathlib.Path) -> list[Block]:
    """The fenced blocks of one page (also those indented inside a list item)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    rel = page.relative_to(ROOT).as_posix()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(2), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{rel}:{start + 1}: a code fence that never closes"
        above = ANNOTATION.match(lines[start - 1]) if start else None
        code = textwrap.dedent("\n".join(lines[start + 1 : j])) + "\n"
        blocks.append(Block(rel, start + 1, lang, code, above and above.group("test"), above and above.group("why")))
        i = j + 1
    return blocks


BLOCKS = [b for page in markdown_files() for b in parse(page)]
PYTHON = [b for b in BLOCKS if b.lang == "python" and b.run_by is None and b.not_run is None]
SHELL = [b for b in BLOCKS if b.lang == "bash"]


def test_every_block_is_accounted_for():
    """A block in another language, or without one, says why it is not run."""
    loose = [b.id for b in BLOCKS if b.lang not in ("python", "bash", "text") and b.not_run is None]
    assert not loose, f"blocks without a language this test knows and without <!-- doc-test: not-run: why -->: {loose}"
    assert len(PYTHON) >= 10 and len(SHELL) >= 4  # the scan still finds the blocks


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.run_by], ids=lambda b: b.id)
def test_dedicated_tests_run_their_blocks(block):
    test = ROOT / block.run_by
    assert test.is_file(), f"{block.id}: {block.run_by} does not exist"
    assert block.page in test.read_text(encoding="utf-8"), f"{block.run_by} does not read {block.page}"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_runs(block, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAO_KERNELS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stderr ---\n{proc.stderr[-4000:]}"


# ------------------------------------------------------------------ shell blocks
def commands(code: str) -> list[list[str]]:
    """The commands of a shell block, as argument lists (comments dropped, `&&` split)."""
    out = []
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", ";", "|", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


@functools.cache
def help_text(*argv: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"python {' '.join(argv)} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _flags(args: list[str]) -> list[str]:
    return [a.split("=")[0] for a in args if a.startswith("--")]


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.id)
def test_shell_block_names_what_exists(block):
    for cmd in commands(block.code):
        if cmd[0] == "pip" and "-e" in cmd:
            assert "--no-build-isolation" in cmd, f"{block.id}: {shlex.join(cmd)} would leave the native kernels out"
        if cmd[0] != "python" or len(cmd) < 2:
            continue
        if cmd[1] == "-m" and cmd[2] == "sao_kernels":
            assert len(cmd) > 3, f"{block.id}: {shlex.join(cmd)} names no sub-command"
            usage = help_text("-m", "sao_kernels", cmd[3])
            missing = [f for f in _flags(cmd[4:]) if f != "--help" and f not in usage]
            assert not missing, f"{block.id}: `{shlex.join(cmd)}`: {missing} not in its --help"
        elif cmd[1].endswith(".py"):
            script = ROOT / cmd[1]
            assert script.is_file(), f"{block.id}: {cmd[1]} does not exist"
            flags = [f for f in _flags(cmd[2:]) if f != "--help"]
            if flags:
                usage = help_text(cmd[1])
                missing = [f for f in flags if f not in usage]
                assert not missing, f"{block.id}: `{shlex.join(cmd)}`: {missing} not in its --help"


def editable_installs_without_the_build(text: str) -> list[str]:
    """``pip install ... -e`` commands (in code blocks or inline code) that leave the native
    kernels out: without ``--no-build-isolation`` the build cannot see the installed torch."""
    installs = re.findall(r"pip install[^`\n#]*", text)
    return [c.strip() for c in installs if re.search(r"\s-e\b", c) and "--no-build-isolation" not in c]


def test_every_editable_install_builds_the_extension():
    bad = {
        page.relative_to(ROOT).as_posix(): cmds
        for page in markdown_files()
        if (cmds := editable_installs_without_the_build(page.read_text(encoding="utf-8")))
    }
    assert not bad, f"add --no-build-isolation to {bad}"


def test_the_shell_checks_catch_what_they_should():
    """A check that cannot fail proves nothing: the parser and the pip rule on known inputs."""
    assert commands('pip install -e ".[hf]"   # comment\nruff check . && ruff format --check .') == [
        ["pip", "install", "-e", ".[hf]"],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
    ]
    assert editable_installs_without_the_build('needs `pip install -e ".[hf]"`.') == ['pip install -e ".[hf]"']
    assert not editable_installs_without_the_build('`pip install --no-build-isolation -e ".[hf]"`, `pip install torch`')
    bad = Block("x.md", 1, "bash", 'pip install -e ".[paper]"\n', None, None)
    with pytest.raises(AssertionError, match="native kernels"):
        test_shell_block_names_what_exists(bad)
    unknown = Block("x.md", 1, "bash", "python -m sao_kernels bench --no-such\n", None, None)
    with pytest.raises(AssertionError, match="not in its --help"):
        test_shell_block_names_what_exists(unknown)
