"""Shipping a model without sao_kernels (docs/deploy.md): the native extension's ops library
(``sao_kernels.ops.LIBRARY``) alone defines the ops and runs them, and an AOTInductor package
of a converted model runs in a process that loads only that library (or the Python module
``_C`` that links it), equal to eager.  The C++ example (examples/cpp_aoti) is built and run by
CI (.ci/run).  These tests need the extension (they fail, never skip, without it)."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import sao_kernels as sk
from sao_kernels import _extension

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpp_aoti"
MODULE = importlib.import_module("sao_kernels._C").__file__ if _extension.available() else "sao_kernels._C"


def run_python(args: list, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "SAO_KERNELS_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=600)


def test_extension_is_two_libraries():
    """The ops library does not depend on Python (a C++ program could not load it); the Python
    module does, and links the ops library."""
    assert _extension.available(), _extension.unavailable_reason()
    ops, module = pathlib.Path(sk.ops.LIBRARY).read_bytes(), pathlib.Path(MODULE).read_bytes()
    assert b"libtorch_python.so" in module and b"libsao_kernels_ops.so" in module
    assert b"libtorch_python.so" not in ops and b"PyModule_Create" not in ops


# The ops through the library alone: forward and backward equal the dense product; what needs
# the Python implementations (a forced backend, the twins) says so.
ALONE = """
    import sys, torch
    torch.ops.load_library(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    G, a, c, T = 3, 4, 5, 7
    x = torch.randn(T, G * c, generator=g, requires_grad=True)
    v = torch.randn(G, a, c, generator=g)
    ii, oi, b = torch.randperm(G * c, generator=g), torch.randperm(G * a, generator=g), torch.randn(G * a, generator=g)
    w = torch.zeros(G * a, G * c)
    for k in range(G):
        w[oi[k * a:(k + 1) * a, None], ii[k * c:(k + 1) * c]] = v[k]
    y = torch.ops.sao_kernels.linear(x, v, ii, oi, b, 1)
    torch.testing.assert_close(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    dy = torch.randn(T, G * a, generator=g)
    y.backward(dy)
    torch.testing.assert_close(x.grad, dy @ w, rtol=1e-5, atol=1e-5)
    assert not any(m.startswith("sao_kernels") for m in sys.modules)
    print("NATIVE-OK", flush=True)
    torch.ops.sao_kernels.linear(x.detach().double(), v.double(), ii, oi, b.double(), 1)  # native: float64 too
    try:
        torch.ops.sao_kernels.linear(x.detach().int(), v.int(), ii, oi, None, 1)
    except NotImplementedError as err:
        assert "Python implementation" in str(err) and "torch.int32" in str(err), err
        print("REFUSED-OK")
"""


@pytest.mark.parametrize("library", ["ops", "module"])
def test_the_library_alone_runs_the_ops(library):
    path = sk.ops.LIBRARY if library == "ops" else MODULE
    proc = run_python(["-c", textwrap.dedent(ALONE), path])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "NATIVE-OK" in proc.stdout and "REFUSED-OK" in proc.stdout, proc.stdout


def test_a_forced_python_backend_is_refused_clearly_without_sao_kernels():
    code = ALONE.split('    print("NATIVE-OK"')[0] + "    print('NATIVE-OK')\n"
    proc = run_python(["-c", textwrap.dedent(code), sk.ops.LIBRARY], SAO_KERNELS_BACKEND="torch")
    assert proc.returncode != 0 and "NATIVE-OK" not in proc.stdout
    assert "NotImplementedError" in proc.stderr and "backend 'torch'" in proc.stderr, proc.stderr[-2000:]


def docs_snippets() -> list:
    """docs/deploy.md's Python blocks that this test runs (marked ``run-by`` it): 1. export and
    package, 2. run without sao_kernels."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    mark = r"^<!-- doc-test: run-by tests/deploy/test_deploy.py -->\n```python\n(.*?)^```"
    return [textwrap.dedent(b) for b in re.findall(mark, text, flags=re.S | re.M)]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> pathlib.Path:
    """docs/deploy.md's export snippet, run as written: docs/saving.md's MLP packaged (model.pt2)
    with inputs and eager outputs at T=1 and T=128 (data.pt)."""
    out = tmp_path_factory.mktemp("aoti")
    proc = subprocess.run(
        [sys.executable, "-c", docs_snippets()[0]],
        cwd=out,
        env=snippet_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == sk.ops.LIBRARY
    return out


def snippet_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SAO_KERNELS_BACKEND"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def test_docs_run_snippet_needs_only_the_library(package):
    """docs/deploy.md's second snippet, as written, in a fresh process (it asserts the outputs
    equal eager to 1e-6 and that sao_kernels was not imported)."""
    assert len(docs_snippets()) == 2
    proc = subprocess.run(
        [sys.executable, "-c", docs_snippets()[1]],
        cwd=package,
        env=snippet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("library", ["ops", "module"])
def test_package_runs_with_one_library_and_no_sao_kernels(package, library):
    """The example's run_package.py loads one library (the ops library, or the Python module
    that links it) and the package (no ``import sao_kernels``, which it asserts) and compares
    with the eager outputs at T=1 and T=128 (max abs difference <= 1e-6)."""
    path = sk.ops.LIBRARY if library == "ops" else MODULE
    proc = run_python([str(EXAMPLE / "run_package.py"), path, str(package)])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "T=1: output (1, 64)" in proc.stdout and "T=128: output (128, 64)" in proc.stdout, proc.stdout


def test_package_without_the_library_fails_naming_the_op(package):
    """What the issue measured before the ops were defined in C++: without the library the
    package cannot run (the check that the library is what makes it work)."""
    proc = run_python(
        [
            "-c",
            "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])(torch.randn(1, 64))",
            str(package / "model.pt2"),
        ]
    )
    assert proc.returncode != 0 and "sao_kernels::linear" in proc.stderr, proc.stderr[-2000:]
