"""How the three SAO products are registered with the dispatcher (``torch.ops.sao_kernels``).

One schema per op (and one per private twin, below), defined in C++ by the native extension's
ops library (csrc/schemas.cpp), so that a process that loads only that library (a C++ program,
an AOTInductor package: docs/deploy.md) has the ops; without the extension, defined here from
``SCHEMAS`` (the same strings: tests/ops/test_schemas.py compares them).  Which kernel serves
each dispatch key, with and without the extension: the table in docs/design.md ("The dispatch
table"), kept there once.

The Python implementation (``linear_python`` etc.) validates its arguments, asks
``sao_kernels.dispatch.select`` which backend runs, and runs the Triton kernels, the torch
composite or the masked-dense reference.  For the C++ CPU kernel to reach it, each op has a
private twin ``_<op>_python`` with the same schema whose only kernel is that function.

So the default CPU path (``auto``, native kernels built) never enters Python: argument
checks, the backend choice, the autograd node and the kernels are all C++.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._functorch.utils import enable_single_level_autograd_function

from .. import _extension

NAMESPACE = "sao_kernels"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")

SCHEMAS = {
    "linear": (
        "(Tensor x, Tensor values, Tensor? in_index, Tensor? out_index, Tensor? bias, int block_size=1) -> Tensor"
    ),
    "linear_grad_input": (
        "(Tensor grad_out, Tensor values, Tensor? in_index, Tensor? out_index, int block_size=1) -> Tensor"
    ),
    "linear_grad_values": (
        "(Tensor grad_out, Tensor x, Tensor? in_index, Tensor? out_index, int groups, int block_size=1) -> Tensor"
    ),
}

# Importing the extension defines the schemas and registers its C++ CPU and Autograd kernels;
# the Python kernels below are registered against those schemas.
NATIVE = _extension.available()
if not NATIVE:
    for _name, _args in SCHEMAS.items():
        LIB.define(_name + _args)
        LIB.define(f"_{_name}_python" + _args)


def register(name: str, python_impl: Callable, autograd_impl: Callable) -> None:
    """Register one op's Python kernels (see the table in this module's docstring)."""
    LIB.impl(f"_{name}_python", python_impl, "CPU")
    # CompositeExplicitAutograd fills every backend key without a kernel of its own: CUDA
    # and other devices always, CPU too when the C++ kernel is not there.
    LIB.impl(name, python_impl, "CompositeExplicitAutograd")
    if not NATIVE:
        LIB.impl(name, autograd_impl, "Autograd", with_keyset=True)
    for device_type in AUTOCAST_DEVICES:
        register_autocast(name, device_type)


AUTOCAST_DEVICES = ("cpu", "cuda")


def register_autocast(name: str, device_type: str) -> None:
    """The op's kernel under ``torch.autocast(device_type)``: autocast's rule for
    lower-precision ops (as ``F.linear`` / ``F.conv2d`` follow it), with the autocast dtype
    current at the call: floating tensors on ``device_type`` that are not float64 are cast
    to ``torch.get_autocast_dtype(device_type)``; integer, float64 and other devices' tensors
    are left as they are (so the op's dtype checks raise where ``nn.Linear`` does).  Mirrors
    ``torch.library.register_autocast``, which fixes the dtype at registration instead."""
    op = getattr(torch.ops.sao_kernels, name).default
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    dispatch_key = getattr(torch._C.DispatchKey, key)

    def autocast_impl(*args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return op(*(_cast(a, device_type, dtype) for a in args))

    # (the Python kernel serves tracing under torch.compile; the library kernel eager calls)
    if op.has_kernel_for_dispatch_key(dispatch_key):
        op.py_kernels.pop(dispatch_key)
    op.py_impl(dispatch_key)(autocast_impl)
    LIB.impl(name, lambda _keyset, *args: autocast_impl(*args), key, with_keyset=True)


def autocast_eligible(t: torch.Tensor, device_type: str) -> bool:
    """Autocast's rule for lower-precision ops: a floating tensor on ``device_type`` that is
    not float64 is cast to the autocast dtype; anything else is left as it is."""
    return t.is_floating_point() and t.dtype is not torch.float64 and t.device.type == device_type


def _cast(value, device_type: str, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and autocast_eligible(value, device_type):
        return value.to(dtype)
    return value


def _refuse_nested_autodiff(op_name: str) -> None:
    # Measured: through this Python autograd kernel, a torch.func autodiff transform nested in
    # another (hessian, jvp(grad(f)), grad(grad(f))) loses the inner level's tangents and
    # returns zeros.  One level (grad, vjp, jvp, jacrev, jacfwd, with vmap) is right.  The C++
    # autograd kernels of the native extension handle every nesting.
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    levels = [i for i in retrieve_all_functorch_interpreters() if i.key() in (TransformType.Grad, TransformType.Jvp)]
    if len(levels) > 1:
        raise NotImplementedError(
            f"sao_kernels::{op_name}: nested torch.func autodiff transforms (e.g. hessian, jvp of grad) need the "
            f"native extension's autograd kernels, which are not loaded ({_extension.unavailable_reason()}); "
            "build them with: pip install --no-build-isolation -e ."
        )


def python_autograd(op_name: str, setup_context: Callable, backward: Callable, jvp: Callable) -> Callable:
    """The Autograd kernel used without the native extension: an autograd.Function whose
    forward redispatches below autograd, with ``backward`` (reverse mode, double backward
    through the ops' own autograd) and ``jvp`` (forward mode: ``torch.func.jvp`` /
    ``jacfwd`` / ``hessian``).  The C++ autograd kernels implement the same formulas."""
    op = getattr(torch.ops.sao_kernels, op_name).default

    class Function(torch.autograd.Function):
        generate_vmap_rule = True  # vmap runs forward batched (the op's batching rule)

        @staticmethod
        def forward(keyset, *args):
            with torch._C._AutoDispatchBelowAutograd():
                return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup_context(ctx, inputs[1:], output)

        @staticmethod
        def backward(ctx, grad):
            return (None, *backward(ctx, grad))

        @staticmethod
        def jvp(ctx, _keyset_t, *tangents):
            return jvp(ctx, *tangents)

    Function.__name__ = f"SAO_{op_name}_Function"
    _plain_apply = super(torch.autograd.Function, Function).apply  # skips functorch's routing

    def autograd_impl(keyset, *args):
        # Through the Function unless nothing can be differentiated (forward-mode tangents
        # are invisible from here, so only inference mode skips it).
        if torch.is_inference_mode_enabled():
            with torch._C._AutoDispatchBelowAutograd():
                return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)
        if torch._C._are_functorch_transforms_active():
            _refuse_nested_autodiff(op_name)
        # (the dispatcher drops trailing arguments equal to their defaults: put them back)
        args, _ = torch._library.utils.fill_defaults(op._schema, args, {})
        # Under torch.func transforms this kernel runs inside the transform's processing of
        # one level, like torch's generated autograd kernels: the Function records its node
        # with the plain (single-level) autograd path, as functorch does for its own.
        with enable_single_level_autograd_function():
            return _plain_apply(keyset, *args)

    return autograd_impl
