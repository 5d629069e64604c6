"""The Triton kernels of the SAO products and their launchers.

Imported lazily, only when the ``triton`` backend runs (``sao_kernels.dispatch.select``), so
CPU users never need Triton installed.  The launchers take checked arguments (the ops'
``_validate``): index maps are None for the identity or contiguous int64 permutations, and
the run lengths passed are verified.

* ``kernels.py``: the kernels (``@triton.jit``); ``_jit.py``: the helpers they share
* ``gather_matmul.py``: forward and grad-input, :func:`grouped_gather_matmul`
* ``grad_values.py``: grad-values, :func:`grouped_grad_values`
* ``tiles.py``: heuristic tiles, split counts, autotune candidates; ``cost_model.py``: fused
  gather or permute-then-contiguous for element-level index maps
* ``aot.py``: compile every configuration the launchers can choose for sm_80 / sm_90 on a CPU
  machine and read registers, spills, shared memory and the SASS instruction mix (problem
  grids: ``aot_problems.py``; the checks the compiled code is held to: ``compiled_checks.py``)
* ``_common.py`` (device, launch steps, dtypes), ``_index.py`` (int32 index copies, cached),
  ``_steps.py`` (launch steps of the permute and split-reduction kernels)
"""

from .gather_matmul import grouped_gather_matmul
from .grad_values import grouped_grad_values

__all__ = ["grouped_gather_matmul", "grouped_grad_values"]
