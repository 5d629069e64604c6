"""The SAO products, registered as torch ops under ``torch.ops.sao_kernels``.

* ``linear(x, values, in_index, out_index, bias, block_size)``                   forward  (``linear.py``)
* ``linear_grad_input(grad_out, values, in_index, out_index, block_size)``        dX       (``linear_grad_input.py``)
* ``linear_grad_values(grad_out, x, in_index, out_index, groups, block_size)``    dV       (``linear_grad_values.py``)
* ``linear_act(x, values, in_index, out_index, bias, block_size, activation)``    act(forward)  (``linear_act.py``)

Glossary, used in every module here and in csrc/: T tokens (rows of an activation), m = G*a
output features, n = G*c input features, G groups (blocks), a = m/G and c = n/G the block
sides, b = ``block_size`` (the aligned run length of both index maps), R_g / C_g the output /
input features of group g.  x (T, n), y and grad_out (T, m), values (G, a, c).  In the
shared gather-matmul kernel (forward and grad-input) ``lhs`` is its left operand (X in the
forward, dY in grad-input) and N / K its output / reduction sides (a / c, or c / a).

How the ops are registered (which kernel runs for which dispatch key): ``_library.py``.
Argument checks: ``_validate.py``.  Triton kernels: ``triton/``.  Native CPU kernels: csrc/.
"""

from .._extension import LIBRARY
from . import linear, linear_act, linear_grad_input, linear_grad_values  # noqa: F401  (register the ops)
from ._library import NATIVE, autocast_eligible
from ._validate import check_block_size, check_index

# The ops' own rules that sao_kernels.functional applies too (autocast eligibility, index checks).
__all__ = ["LIBRARY", "NATIVE", "autocast_eligible", "check_block_size", "check_index"]
