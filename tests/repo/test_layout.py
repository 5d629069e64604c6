"""The shape of the codebase (issues 17, 24): imports inside sao_kernels form no cycle
(module-level and function-level imports alike), no public name hides a module, no Python
module is over 500 lines, and no module uses another module's private names."""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import subprocess
import sys

import sao_kernels

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sao_kernels"
MAX_LINES = 500


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """sao_kernels modules imported anywhere in ``path`` (absolute or relative)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sao_kernels"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("sao_kernels"):
                continue
            for alias in node.names:  # "from . import x" may name a submodule
                sub = f"{mod}.{alias.name}"
                found.add(
                    sub
                    if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                    or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                    else mod
                )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for dep in _imports(path):
            while dep and dep not in modules:  # "sao_kernels.ops.linear.<name>" -> the module
                dep = dep.rsplit(".", 1)[0] if "." in dep else ""
            if dep and dep != name and not name.startswith(dep + "."):  # a package importing its parent
                deps.add(dep)
        graph[name] = deps
    return graph


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    # A package's __init__ importing its own submodules is not a cycle in the layering sense:
    # the edges that matter are between sibling modules, so submodules -> their own package
    # __init__ are dropped above and package -> own submodule edges are ignored here.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_public_name_hides_a_module():
    for info in pkgutil.walk_packages(sao_kernels.__path__, "sao_kernels."):
        if info.name.endswith("__main__"):
            continue  # (importing it runs the command line)
        parent_name, _, child = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        importlib.import_module(info.name)
        attr = getattr(parent, child, None)
        assert attr is None or attr is importlib.import_module(info.name), (
            f"{parent_name}.{child} is {type(attr).__name__}, hiding the module {info.name}"
        )


def test_no_python_module_over_500_lines():
    too_long = []
    for folder in (PACKAGE, ROOT / "benchmarks"):
        for path in folder.rglob("*.py"):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                too_long.append(f"{path.relative_to(ROOT)}: {n}")
    assert not too_long, "modules over 500 lines: " + ", ".join(too_long)


# ----------------------------------------------------------------- private names
# What counts (issue 24): a name starting with "_" (dunders such as __version__ excepted) is
# private to the module that defines it.  Another module of the package may not import it
# (``from .x import _y``, ``from sao_kernels.<module> import _y``) nor read it as an attribute of an
# imported module (``x._y``, ``sao_kernels.<module>._y``): a helper two modules share is public in
# the module that owns it.  A private *module* (``_validate.py``, ``_C``) is private to its
# package: any module inside that package (at any depth) may import it and its public names,
# nothing outside may.  A module's use of its own names, and importing a public name under a
# private alias (``import x as _x``), are fine.  Tests and scripts are outside this rule.


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").exists() or any(path.parent.glob(path.name + ".*.so"))


def _private_module_outside(importer: str, module: str) -> str | None:
    """The private module in ``module``'s dotted path that ``importer`` is outside of, if any."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if _private(part) and importer != owner and not importer.startswith(owner + "."):
            return ".".join(parts[: i + 1])
    return None


def _private_uses(source: str, name: str, package: str, where: str) -> list[str]:
    """Every use in ``source`` (the module ``name`` of ``package``) of another module's private
    name or of a private module outside its package, as 'where:line: what'."""
    tree = ast.parse(source)
    found, bound = [], {}  # bound: local name -> the sao_kernels module it names

    def module_used(module: str, line: int) -> None:
        outside = _private_module_outside(name, module)
        if outside:
            found.append(f"{where}:{line}: {outside} is private to its package")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sao_kernels"):
                    module_used(alias.name, node.lineno)
                    bound[alias.asname or "sao_kernels"] = alias.name if alias.asname else "sao_kernels"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("sao_kernels"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if _is_module(sub):
                    module_used(sub, node.lineno)
                    bound[alias.asname or alias.name] = sub
                    continue
                module_used(mod, node.lineno)
                if mod != name and _private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {mod} import {alias.name}")
    for node in ast.walk(tree):  # x._y, sao_kernels.<module>._y (the outermost attribute of a chain)
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in bound:
            continue
        mod = bound[base.id]
        for attr in reversed(chain):
            if _is_module(f"{mod}.{attr}"):
                mod = f"{mod}.{attr}"
                module_used(mod, node.lineno)
                continue
            if mod != name and _private(attr):
                found.append(f"{where}:{node.lineno}: {mod}.{attr}")
            break
    return sorted(set(found))


def test_private_use_checker_catches_each_form():
    """The checker itself: each form it must catch, and the uses it must allow."""
    cases = {
        "from .format import _helper\n": 1,
        "from sao_kernels.format import _helper\n": 1,
        "from . import format\nformat._helper()\n": 1,
        "import sao_kernels\nsao_kernels.format._helper()\n": 1,
        "from .ops._validate import check_index\n": 1,  # private module, outside sao_kernels.ops
        "from .ops import _validate\n": 1,
        "from . import __version__\nfrom .format import GroupedBlockFormat as _G\n": 0,
        "from ._checks import is_int\n": 0,  # private module, inside its package (sao_kernels)
        "import sao_kernels.ops\nsao_kernels.ops.linear\n": 0,
    }
    for source, expected in cases.items():
        found = _private_uses(source, "sao_kernels.probe", "sao_kernels", "probe.py")
        assert len(found) == expected, (source, found)


def test_no_module_uses_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found += _private_uses(path.read_text(encoding="utf-8"), name, package, str(path.relative_to(ROOT)))
    assert not found, "private names used across modules (make them public where they are defined):\n" + "\n".join(
        found
    )


def test_import_loads_the_runtime_only():
    """``import sao_kernels`` loads no tooling (the command line, the benchmark harness,
    matplotlib); ``sk.report`` imports it on first use."""
    code = (
        "import sys, sao_kernels as sk\n"
        "prefixes = ('sao_kernels.cli', 'sao_kernels.bench', 'matplotlib')\n"
        "tooling = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "assert not tooling, tooling\n"
        "assert callable(sk.report) and 'sao_kernels.cli.layer_report' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
