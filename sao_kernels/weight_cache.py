"""``frozen_weights()``: inference with the native kernels' re-laid weights kept between calls.

A forward on the CPU re-lays each SAO weight ``values`` (G, a, c) into the layout its GEMM
reads: the bfloat16 micro-kernel's panels, the brgemm's V^T (float32 at more than a few tokens)
or VNNI-packed B (bfloat16 / float16 with AMX).  That is one pass over V per call, and on two
threads the pass writes data the other core then reads.  Inside ``frozen_weights()`` the native
forward keeps each layout between calls (one entry per weight and layout) and builds it again
only when the weight changed.  docs/cpu_engines.md ("The weight cache for inference") has the
measurements and the rules.

    with torch.inference_mode(), sk.frozen_weights():
        for batch in batches:
            y = model(batch)

What counts as a change: the weight's version counter (any in-place write through the
parameter, a view of it or ``p.detach()``, e.g. ``optimizer.step()`` or ``p.copy_(...)`` under
``no_grad``), a new tensor, or its storage freed.  Writes through ``p.data`` (which has a version
counter of its own) or from outside torch (a NumPy array from ``.numpy()``, DLPack) are **not**
seen.  Weights that are
inference tensors (created under ``torch.inference_mode()``) have no version counter and are
never cached.  So keep weights unchanged inside the block; leaving it drops every entry.

The cache is process-wide (all threads; a nested block is part of the outer one) and holds one
copy of each weight it saw, as large as the weight.  Without the native extension, and on
devices other than the CPU, there is nothing to keep and the block changes nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from . import _extension

__all__ = ["frozen_weights", "weight_cache_stats"]

_lock = threading.Lock()
_depth = 0


def _switch(on: bool) -> None:
    if _extension.available():
        torch.ops.sao_kernels._weight_cache(on)


@contextlib.contextmanager
def frozen_weights() -> Iterator[None]:
    """Keep the native forward's re-laid SAO weights between calls inside the block (also a
    decorator).  The weights must not change inside it except through in-place ops on the
    parameters themselves (see the module docstring)."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _switch(True)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _switch(False)


def weight_cache_stats() -> dict[str, int]:
    """What the cache holds now: ``{"bytes": ..., "entries": ...}`` (zeros outside
    ``frozen_weights()`` and without the native extension)."""
    if not _extension.available():
        return {"bytes": 0, "entries": 0}
    nbytes, entries = torch.ops.sao_kernels._weight_cache_stats()
    return {"bytes": int(nbytes), "entries": int(entries)}
