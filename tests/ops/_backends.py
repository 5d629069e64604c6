"""The backends the op tests run on: every one this machine has, none skipped.

torch (composite) and dense (reference) always; native when the extension is loaded (CI
builds it; its fallback run sets SAO_KERNELS_NO_EXT=1 and then native is absent, not
skipped); triton when Triton is installed: compiled on CUDA, interpreted on CPU tensors
(TRITON_INTERPRET=1, tests/conftest.py), where it is slow, so tests give it small shapes.
"""

from __future__ import annotations

import torch

from sao_kernels import _extension
from sao_kernels.dispatch import triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

BACKENDS = ["torch", "dense"]
if _extension.available() and DEVICE == "cpu":
    BACKENDS.append("native")
if triton_available():
    BACKENDS.append("triton")
FAST_BACKENDS = [b for b in BACKENDS if not (b == "triton" and DEVICE == "cpu")]
