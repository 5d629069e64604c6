"""Every repository path and every ``sao_kernels.*`` name that the prose points to exists: the
comments and docstrings of .py files, the comments of .cpp / .h files and all of every
Markdown file.  A pointer to a moved or deleted file is a doc that stopped being true.

Paths: tokens whose first component is a folder of the repository (``csrc/ops.cpp``,
``tests/dispatch/test_dispatch.py``, ``ops/triton/tiles.py``, ``docs/``), resolved against the repository
root, the file's own folder and the package folders; one that resolves nowhere is reported.
Tokens with a placeholder (``<date>``, ``*``, ``{json,md}``) are patterns, not paths, and are
not checked.  Names: ``sao_kernels.dispatch.AUTO`` imports the longest module prefix and
resolves the rest by getattr (``torch.ops.sao_kernels.linear`` is torch's namespace, not a
module path; ``sao_kernels.h`` is a file, checked as one).
"""

from __future__ import annotations

import functools
import importlib
import io
import pathlib
import re
import subprocess
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Folders a relative path may be written against (``ops/_library.py`` means the package's).
BASES = [ROOT, ROOT / "sao_kernels", ROOT / "tests", ROOT / "benchmarks", ROOT / "csrc"]
# Generated records of past runs: they quote the command lines of their day, by design.
RECORDS = ("benchmarks/results/", "benchmarks/paper/results/")


def _files(*patterns: str) -> list[pathlib.Path]:
    """The repository's files (tracked, or new and not ignored) matching the patterns."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return sorted({ROOT / p for p in out if (ROOT / p).is_file()})
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        found = set()
        for pattern in patterns:
            found.update(p for p in ROOT.rglob(pattern.lstrip("*/")) if not _ignored(p))
        return sorted(found)


def _ignored(path: pathlib.Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return any(p.startswith(".") or p in ("build", "dist", "__pycache__") or p.endswith(".egg-info") for p in parts)


def _python_prose(text: str) -> str:
    """Comments and docstrings of a Python source: comment tokens, and strings that open a
    statement (docstrings, and the bare strings that document a constant)."""
    chunks, opens_statement = [], True
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            chunks.append(tok.string)
        elif tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            opens_statement = True
            continue
        elif tok.type == tokenize.STRING and opens_statement:
            chunks.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            opens_statement = False
    return "\n".join(chunks)


def _cpp_prose(text: str) -> str:
    """Comments of a C++ source (``//`` and ``/* */``; string literals are not comments)."""
    code = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    return "\n".join(re.findall(r"//[^\n]*|/\*.*?\*/", code, flags=re.S))


@functools.cache
def _prose() -> list[tuple[str, str]]:
    """(file relative to the root, the prose it holds) for every file the test reads."""
    out = []
    for path in _files("*.py", "*.cpp", "*.h", "*.md"):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            text = _python_prose(text)
        elif path.suffix in (".cpp", ".h"):
            text = _cpp_prose(text)
        out.append((rel, text))
    return out


def _top_folders() -> set[str]:
    """First components a path may start with: the folders of the repository (not hidden)."""
    names = {p.name for base in BASES for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    return (names - {"build", "dist"}) | {".ci"}


PATH = re.compile(r"(?<![\w./~$-])((?:\.\./)*[.\w-]+/[\w./-]*)")
PLACEHOLDER = re.compile(r"[<>*{}]|\.\.\.|/\.\w")


def path_pointers() -> list[tuple[str, str]]:
    """(file, path) for every repository path written in the prose."""
    tops = _top_folders()
    found = []
    for rel, text in _prose():
        for m in PATH.finditer(text):
            token = m.group(1).rstrip(".,:;")
            end = m.end(1)
            if end < len(text) and text[end] in "<*{":  # a pattern: tiers_<cpu>_<date>/...
                continue
            first = token.lstrip("./").split("/")[0] if token.startswith("../") else token.split("/")[0]
            if first not in tops or PLACEHOLDER.search(token):
                continue
            found.append((rel, token))
    return found


def _resolves(rel: str, token: str) -> bool:
    here = (ROOT / rel).parent
    if token.startswith("../"):
        return (here / token).resolve().exists()
    return any((base / token).exists() for base in [*BASES, here])


NAME = re.compile(r"(?<![\w.])sao_kernels(?:\.[A-Za-z_]\w*)+")


SK = re.compile(r"(?<![\w.])sk((?:\.[A-Za-z_]\w*)+)")  # Markdown's ``import sao_kernels as sk``


def name_pointers() -> list[tuple[str, str]]:
    """(file, dotted name) for every ``sao_kernels.*`` name written in the prose (and every
    ``sk.*`` name in Markdown, whose snippets import the package as ``sk``)."""
    found = []
    for rel, text in _prose():
        for m in NAME.finditer(text):
            if not any((base / m.group(0)).is_file() for base in BASES):  # csrc/sao_kernels.h
                found.append((rel, m.group(0)))
        if rel.endswith(".md"):
            found += [(rel, "sao_kernels" + m.group(1)) for m in SK.finditer(text)]
    return found


@functools.cache
def _resolve_name(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_scan_sees_pointers():
    """The patterns still match what the repository writes (a scan that finds nothing passes)."""
    paths = {t for _, t in path_pointers()}
    names = {n for _, n in name_pointers()}
    assert {"csrc/ops.cpp", "tests/dispatch/test_dispatch.py"} <= paths, sorted(paths)[:20]
    assert {"sao_kernels.dispatch.AUTO", "sao_kernels.cpu.tier_env", "sao_kernels.SAOLinear.from_blocks"} <= names


def test_repository_paths_exist():
    stale = sorted({(rel, t) for rel, t in path_pointers() if not rel.startswith(RECORDS) and not _resolves(rel, t)})
    assert not stale, "paths that do not exist:\n" + "\n".join(f"  {rel}: {t}" for rel, t in stale)


def test_dotted_names_resolve():
    stale = sorted({(rel, n) for rel, n in name_pointers() if not rel.startswith(RECORDS) and not _resolve_name(n)})
    assert not stale, "sao_kernels names that do not resolve:\n" + "\n".join(f"  {rel}: {n}" for rel, n in stale)


def test_stale_pointers_are_reported():
    """The pointers issue 24 found stale would fail here (a check that cannot fail proves nothing)."""
    assert not _resolves("sao_kernels/dispatch.py", "tests/test_backend.py")
    assert not _resolves("sao_kernels/ops/triton/tiles.py", "tests/ops/triton/test_compiled.py")
    assert _resolves("docs/cpu_tiers.md", "../benchmarks/results/pretrained_2026-12-06.md")
    assert not _resolve_name("sao_kernels.backend.AUTO") and _resolve_name("sao_kernels.dispatch.AUTO")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"(?ms)^[ \t]*```.*?^[ \t]*```", "", page.read_text(encoding="utf-8"))  # not code comments
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def markdown_links() -> list[tuple[str, str]]:
    """(page, target) for every relative link of every Markdown file (web links are not checked)."""
    return [
        (rel, target)
        for rel, text in _prose()
        if rel.endswith(".md")
        for target in LINK.findall(text)
        if not re.match(r"[a-z]+:", target)
    ]


def _link_resolves(rel: str, target: str) -> bool:
    path, _, anchor = target.partition("#")
    page = (ROOT / rel).parent / path if path else ROOT / rel
    if not page.exists():
        return False
    return not anchor or (page.suffix == ".md" and anchor in _anchors(page))


def test_markdown_links_resolve():
    """Relative links point to files that exist, and anchors to headings of the linked page."""
    broken = sorted(
        {(rel, t) for rel, t in markdown_links() if not rel.startswith(RECORDS) and not _link_resolves(rel, t)}
    )
    assert not broken, "broken links:\n" + "\n".join(f"  {rel}: {t}" for rel, t in broken)
    assert _link_resolves("README.md", "docs/design.md#status-and-limitations")
    assert not _link_resolves("README.md", "docs/design.md#no-such-heading")
    assert not _link_resolves("docs/usage.md", "docs/saving.md")  # a link is relative to its page
