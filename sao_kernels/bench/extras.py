"""The optional packages of the benchmark tooling, the ``[bench]`` extra: matplotlib (the plots
of ``bench`` and ``report``) and tqdm (their progress bars).

``import sao_kernels`` and the layers, ops and conversion never import them; the tooling imports
them through :func:`require` at the point of use, and the command line checks them up front
(:func:`check`) so that a missing one stops ``bench`` before minutes of measuring, with the
command that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

PACKAGES = ("matplotlib", "tqdm")
INSTALL = 'pip install --no-build-isolation -e ".[bench]"'


class MissingExtraError(ImportError):
    """A package of the ``[bench]`` extra is not installed; the message says how to install it."""


def _message(missing: list[str], purpose: str) -> str:
    names = " and ".join(missing)
    return (
        f"{purpose} needs {names}, not installed here: {'they are' if len(missing) > 1 else 'it is'} in "
        f"sao_kernels' [bench] extra: {INSTALL} (or: pip install {' '.join(missing)})"
    )


def require(module: str, purpose: str) -> ModuleType:
    """Import and return ``module`` (``"matplotlib"``, ``"tqdm.auto"``, ...); when its package
    is missing, :class:`MissingExtraError` naming ``purpose`` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(_message([module.split(".")[0]], purpose)) from err


def progress_bar(**kwargs):
    """A ``tqdm.auto`` progress bar; :class:`MissingExtraError` without tqdm."""
    return require("tqdm.auto", "the progress bar (--no-progress: none)").tqdm(**kwargs)


def check(packages: Iterable[str], purpose: str) -> None:
    """:class:`MissingExtraError` naming every package of ``packages`` that cannot be imported."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(_message(missing, purpose))
