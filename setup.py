"""The optional native CPU extension ``sao_kernels._C`` (csrc/); the rest of the packaging
is declared in pyproject.toml.

The extension is compiled with torch.utils.cpp_extension when torch is importable at build
time and a C++ compiler is present, i.e. with

    pip install --no-build-isolation -e ".[test]"     (or: python setup.py build_ext --inplace)

(pip's default build isolation hides the installed torch from this script).  Without torch,
without a compiler, with ``SAO_KERNELS_NO_EXT=1``, or if the compilation fails, the package
installs without it and the ops run their Python implementations (sao_kernels/_extension.py
logs one line saying why).
"""

import os
import shutil
import sys

from setuptools import setup

EXT_NAME = "sao_kernels._C"
EXT_SOURCES = ["csrc/ops.cpp", "csrc/native_kernels.cpp", "csrc/lowp_bmm.cpp", "csrc/decode.cpp"]


def _note(msg: str) -> None:
    print(f"sao_kernels setup: {msg}", file=sys.stderr)


def _find_cxx() -> str | None:
    if sys.platform == "win32":
        return shutil.which("cl")
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name.split()[0]):
            return name
    return None


def _extension_kwargs() -> dict:
    if os.environ.get("SAO_KERNELS_NO_EXT", "0") == "1":
        _note("SAO_KERNELS_NO_EXT=1: not building the native CPU kernels (the torch composite will run)")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _note(
            "torch is not importable here (pip build isolation?): installing without the native CPU kernels; "
            "to build them: pip install --no-build-isolation -e ."
        )
        return {}
    if _find_cxx() is None:
        _note("no C++ compiler found: installing without the native CPU kernels")
        return {}

    if sys.platform == "win32":
        cflags, lflags = ["/O2", "/openmp", "/std:c++17"], []
    elif sys.platform == "darwin":  # Apple clang has no -fopenmp: at::parallel_for runs serially
        cflags, lflags = ["-O3", "-std=c++17"], []
    else:
        cflags, lflags = ["-O3", "-fopenmp"], ["-fopenmp"]

    class OptionalBuildExtension(BuildExtension):
        """Build the extension, but never fail the install over it: the ops fall back to the
        torch composite (and the native tests, which refuse to skip, will say so)."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any compiler / toolchain failure
                _note(f"building {EXT_NAME} failed ({err}); installing without the native CPU kernels")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001
                _note(f"building {ext.name} failed ({err}); installing without the native CPU kernels")

    ext = CppExtension(EXT_NAME, EXT_SOURCES, extra_compile_args=cflags, extra_link_args=lflags)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


# Metadata, dependencies and extras are in pyproject.toml; this file adds the optional extension.
setup(**_extension_kwargs())
