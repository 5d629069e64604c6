"""The shape of the codebase (issue 17): imports inside sao_kernels form no cycle (module-level
and function-level imports alike), no public name hides a module, and no Python module is over
500 lines."""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil

import sao_kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
