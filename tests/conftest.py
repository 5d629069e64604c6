"""Test-wide setup.

Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors.  The
interpreter is chosen when a kernel is decorated, so TRITON_INTERPRET must be set before
sao_kernels is imported: that is why it is set here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
