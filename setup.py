"""The optional native CPU extension ``sao_kernels._C`` (csrc/); the rest of the packaging
is declared in pyproject.toml.

The extension is compiled with torch.utils.cpp_extension when torch is importable at build
time and a C++ compiler is present, i.e. with

    pip install --no-build-isolation -e ".[test]"     (or: python setup.py build_ext --inplace)

(pip's default build isolation hides the installed torch from this script).  Without torch,
without a compiler, or if the compilation fails, the package still installs, without it: the
ops run their Python implementations.  That is said loudly, not in passing: a warning block on
stderr, copied to the terminal (/dev/tty) when there is one, because pip shows a build's own
output only with -v or on failure; and ``import sao_kernels`` then warns
(sao_kernels/_extension.py).  ``SAO_KERNELS_NO_EXT=1`` skips the build on purpose, quietly.
"""

import os
import shutil
import sys

from setuptools import setup

# Two libraries.  The ops library (schemas, CPU and autograd kernels) needs no Python, so C++
# programs and AOTInductor packages can load it; it is a plain shared library, not a Python
# module.  The Python module sao_kernels._C (the fast entry point) links it, so importing _C
# registers the ops.  (One library would not do: a Python module needs libpython's symbols,
# which a C++ program does not have.)
OPS_LIB_NAME = "sao_kernels.lib.libsao_kernels_ops"  # -> sao_kernels/lib/libsao_kernels_ops.so
OPS_LIB_SOURCES = [
    "csrc/schemas.cpp",
    "csrc/ops.cpp",
    "csrc/native_kernels.cpp",
    "csrc/lowp_bmm.cpp",
    "csrc/bf16_dot.cpp",
    "csrc/decode.cpp",
    "csrc/cpu_tier.cpp",
    "csrc/linear_act.cpp",
    "csrc/weight_cache.cpp",
]
EXT_NAME = "sao_kernels._C"
EXT_SOURCES = ["csrc/python_module.cpp"]


BUILD = 'pip install --no-build-isolation -e ".[test]"   (torch installed first)'


def _note(msg: str) -> None:
    print(f"sao_kernels setup: {msg}", file=sys.stderr)


# The commands that build (pip runs this script for metadata too: one block per install, not three).
_BUILDING = bool({"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"} & set(sys.argv[1:]))
_said: list[str] = []


def _loud(reason: str) -> None:
    """The warning block for an install without the native kernels: on stderr (pip -v, a failed
    pip run, python setup.py) and on the terminal, where a plain pip install shows nothing else."""
    if not _BUILDING or _said:  # a metadata step, or said already (the second library's failure)
        _note(f"without the native CPU kernels: {reason}")
        return
    _said.append(reason)
    rule = "!" * 88
    block = "\n".join(
        [
            rule,
            "WARNING: sao_kernels is being installed WITHOUT its native CPU kernels.",
            f"  why: {reason}",
            "  The ops will run their Python implementations (slower on CPU); import sao_kernels warns.",
            f"  To build them: {BUILD}",
            "  To go without them on purpose (and quietly): SAO_KERNELS_NO_EXT=1",
            rule,
        ]
    )
    print(block, file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        return
    try:  # pip captures stderr: the terminal, when there is one, still sees the block
        with open("/dev/tty", "w") as tty:
            print("\n" + block, file=tty)  # (after pip's spinner)
    except OSError:  # no controlling terminal (CI) or no /dev/tty (Windows)
        pass


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
        _loud(
            "torch is not importable by this build: pip's build isolation hides the installed torch "
            "(add --no-build-isolation), or torch is not installed yet"
        )
        return {}
    if _find_cxx() is None:
        _loud("no C++ compiler found (c++, g++, clang++ or $CXX)")
        return {}
    import torch

    if "pip-build-env" in torch.__file__:  # pip fetched a torch of its own into the isolated build
        _loud(
            f"this build sees torch {torch.__version__} from pip's isolated build environment "
            f"({os.path.dirname(torch.__file__)}), not the torch you run with: the kernels built against "
            "it may not load (add --no-build-isolation)"
        )

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
                _loud(f"building {EXT_NAME} failed ({err})")

        def get_ext_filename(self, ext_name):
            # (called with the full name and with its last component)
            if OPS_LIB_NAME.endswith(ext_name):  # a plain library: no Python ABI tag in its name
                return os.path.join(*ext_name.split(".")) + ".so"
            return super().get_ext_filename(ext_name)

        def copy_extensions_to_source(self):  # (--inplace and editable installs)
            os.makedirs(os.path.dirname(self.get_ext_fullpath(OPS_LIB_NAME)), exist_ok=True)
            super().copy_extensions_to_source()

        def build_extension(self, ext):
            if ext.name == EXT_NAME and len(self.extensions) > 1:  # link the ops library (built first)
                ext.extra_link_args += _link_ops_library(self.get_ext_fullpath(OPS_LIB_NAME))
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001
                _loud(f"building {ext.name} failed ({err})")

    if sys.platform == "win32":  # no rpath: one library, the Python module (C++ programs cannot load it)
        return {
            "ext_modules": [CppExtension(EXT_NAME, OPS_LIB_SOURCES + EXT_SOURCES, extra_compile_args=cflags)],
            "cmdclass": {"build_ext": OptionalBuildExtension},
        }
    soname = os.path.basename(OPS_LIB_NAME.replace(".", "/")) + ".so"
    ops_lib = CppExtension(
        OPS_LIB_NAME,
        OPS_LIB_SOURCES,
        extra_compile_args=cflags,
        extra_link_args=lflags
        + ([f"-Wl,-install_name,@rpath/{soname}"] if sys.platform == "darwin" else [f"-Wl,-soname,{soname}"]),
    )
    ops_lib.libraries.remove("torch_python")  # the point of this library: no Python
    ext = CppExtension(EXT_NAME, EXT_SOURCES, extra_compile_args=cflags, extra_link_args=list(lflags))
    return {"ext_modules": [ops_lib, ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


def _link_ops_library(path: str) -> list:
    """Linker arguments that make the Python module load the ops library at ``path`` (found at
    run time next to the module, wherever the package is installed)."""
    directory, name = os.path.split(path)
    lib = name[len("lib") : -len(".so")]
    if sys.platform == "darwin":
        return [f"-L{directory}", f"-l{lib}", "-Wl,-rpath,@loader_path/lib"]
    # --no-as-needed: the module calls no function of it (only the dispatcher), but needs it loaded
    return [f"-L{directory}", "-Wl,--no-as-needed", f"-l{lib}", "-Wl,-rpath,$ORIGIN/lib"]


# Metadata, dependencies and extras are in pyproject.toml; this file adds the optional extension.
setup(**_extension_kwargs())
