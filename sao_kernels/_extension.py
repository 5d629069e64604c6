"""The optional native extension ``sao_kernels._C`` (csrc/): whether it is loaded, and why not.

The extension is two libraries.  The ops library ``sao_kernels/lib/libsao_kernels_ops.so``
(:data:`LIBRARY`) defines the public ``torch.ops.sao_kernels`` ops and registers their C++ CPU
and autograd kernels; it needs no Python, so C++ programs and AOTInductor packages load it
(docs/deploy.md).  The Python module ``sao_kernels._C`` (the fast entry point) links it, so
importing ``_C`` loads both.  It is built by ``pip install --no-build-isolation -e .`` (or ``python setup.py build_ext
--inplace``).  Without it (not built, built against another torch, or
``SAO_KERNELS_NO_EXT=1``) nothing raises: :func:`available` is False, and the ops run their
Python implementations (torch composite on CPU); only an explicit request for the ``native``
backend raises.  Why it is missing is said once per process: a :class:`NativeExtensionWarning`
(``import sao_kernels`` warns) when it was not built or does not load, an INFO line on the
``sao_kernels`` logger when ``SAO_KERNELS_NO_EXT=1`` asked for it.

This module imports nothing from the rest of the package (everything imports it).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import warnings
from typing import Optional

ENV_NO_EXT = "SAO_KERNELS_NO_EXT"
# The ops library (no Python): what a process that does not import sao_kernels loads.
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "libsao_kernels_ops.so")

log = logging.getLogger("sao_kernels")
_reason: Optional[str] = None
BUILD = "pip install --no-build-isolation -e ."


class NativeExtensionWarning(RuntimeWarning):
    """The native CPU kernels were not built or do not load (not said for ``SAO_KERNELS_NO_EXT=1``)."""


@functools.cache
def available() -> bool:
    """True when ``sao_kernels._C`` is loaded (its C++ kernels are registered)."""
    global _reason
    asked = os.environ.get(ENV_NO_EXT, "0") == "1"
    if asked:
        _reason = f"{ENV_NO_EXT}=1"
    else:
        try:
            importlib.import_module("sao_kernels._C")
        except ImportError as err:  # not built, or built against another torch
            _reason = f"sao_kernels._C did not load ({err})"
        else:
            return True
    message = (
        f"sao_kernels: native CPU kernels unavailable ({_reason}); CPU tensors run the torch composite. "
        f"Build them with: {BUILD}"
    )
    if asked:  # quiet: the user chose it
        log.info(message)
    else:  # loud, once per process (functools.cache)
        warnings.warn(f"{message} (or set {ENV_NO_EXT}=1 to run without them)", NativeExtensionWarning, stacklevel=2)
    return False


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (None when it is True)."""
    return None if available() else _reason


def require() -> None:
    """Raise RuntimeError (with the reason) unless the extension is loaded."""
    if not available():
        raise RuntimeError(
            f"the native backend was requested but the native CPU kernels are unavailable: {_reason}. "
            f"Build them with: {BUILD}"
        )
