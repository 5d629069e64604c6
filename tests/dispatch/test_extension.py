"""An install without the native extension is said loudly, never in passing: setup.py prints a
warning block when it cannot build it (no torch visible to the build, no compiler, a failed
compilation), and ``import sao_kernels`` warns once (NativeExtensionWarning) when ``_C`` does not
load; ``SAO_KERNELS_NO_EXT=1`` stays quiet.  Each case runs in a subprocess: setup.py on a copy
of the build files in a temporary directory (nothing of the checkout is built or written)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from sao_kernels import _extension

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCK = "WARNING: sao_kernels is being installed WITHOUT its native CPU kernels."
# A meta path finder that makes importing ``name`` (and its submodules) fail.
HIDE = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == {name!r} or name.startswith({name!r} + "."):
                raise ImportError(f"{{name}} hidden by the test")
            return None

    sys.meta_path.insert(0, _Hide())
    """
)


def run(code: str, cwd, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.pop(_extension.ENV_NO_EXT, None)
    full.update(env)
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


IMPORT_AND_RUN = textwrap.dedent(
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        import sao_kernels as sk
        from sao_kernels import _extension

        layer = sk.SAOLinear(16, 32, sparsity=0.5).double()
        x = torch.randn(3, 16, dtype=torch.float64)
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias, rtol=1e-12, atol=1e-12)
        layer(x).sum().backward()
        assert _extension.available() is False and _extension.available() is False
    said = [str(w.message) for w in caught if issubclass(w.category, sk.NativeExtensionWarning)]
    print(len(said))
    print(said[0] if said else "")
    """
)


def test_import_warns_once_when_the_extension_does_not_load(tmp_path):
    proc = run(HIDE.format(name="sao_kernels._C") + IMPORT_AND_RUN, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, message = proc.stdout.splitlines()
    assert count == "1", proc.stdout
    assert "sao_kernels._C did not load (sao_kernels._C hidden by the test)" in message
    assert _extension.BUILD in message and "SAO_KERNELS_NO_EXT=1" in message


def test_no_ext_asked_for_is_quiet(tmp_path):
    proc = run(IMPORT_AND_RUN, tmp_path, SAO_KERNELS_NO_EXT="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "0", proc.stdout


@pytest.fixture
def build_files(tmp_path):
    """setup.py and what it reads, copied: the checkout's own build is never touched."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "bin").mkdir()
    return tmp_path


def setup_py(build_files, *args, hide: str | None = None, **env) -> str:
    """stderr of ``python setup.py ARGS`` run in ``build_files``."""
    code = (HIDE.format(name=hide) if hide else "") + textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["setup.py", *{list(args)!r}]
        runpy.run_path("setup.py", run_name="__main__")
        """
    )
    env.setdefault("PATH", os.environ["PATH"])
    proc = run(code, build_files, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the install itself never fails over it
    return proc.stderr


def building(build_files) -> list[str]:
    return ["build_ext", "--build-temp", str(build_files / "tmp"), "--build-lib", str(build_files / "lib")]


def test_setup_says_loudly_when_torch_is_hidden_by_build_isolation(build_files):
    err = setup_py(build_files, *building(build_files), hide="torch")
    assert err.count(BLOCK) == 1, err
    assert "torch is not importable by this build" in err and "--no-build-isolation" in err
    # pip runs setup.py for the metadata too: one line there, the block only in the build step
    err = setup_py(build_files, "--name", hide="torch")
    assert BLOCK not in err and "without the native CPU kernels: torch is not importable" in err


def test_setup_says_loudly_without_a_compiler(build_files):
    env = {"PATH": str(build_files / "bin"), "CXX": ""}  # an empty PATH: no c++, g++, clang++
    err = setup_py(build_files, *building(build_files), **env)
    assert err.count(BLOCK) == 1 and "no C++ compiler found" in err, err


def test_setup_says_loudly_when_the_compilation_fails(build_files):
    err = setup_py(build_files, *building(build_files), CXX="false")  # a "compiler" that always fails
    assert err.count(BLOCK) == 1 and "building sao_kernels" in err and "failed" in err, err
    assert not list((build_files / "lib").rglob("*.so"))


def test_setup_with_no_ext_is_quiet(build_files):
    err = setup_py(build_files, *building(build_files), SAO_KERNELS_NO_EXT="1")
    assert BLOCK not in err and "SAO_KERNELS_NO_EXT=1: not building" in err
