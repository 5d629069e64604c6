"""What ``sao_kernels.convert`` carries from a replaced module to its SAO layer (hooks), and
torch's fused Transformer fast path that it switches off for converted layers."""

from __future__ import annotations

import warnings

from torch import nn

from .layers import SAOLinear

__all__: list[str] = []

# Module hook tables that describe the module's forward / backward as a whole: they apply
# unchanged to the SAO layer that replaces it, and are carried over (the very dict objects,
# so that the RemovableHandles the user holds still remove them).
_CARRIED_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
)
# Hooks about the replaced module's own tensors (its state_dict keys ``weight`` / ``bias``):
# they cannot mean the same thing on the SAO layer, whose state is values / in_index / out_index.
_STATE_HOOKS = {
    "_state_dict_hooks": "state_dict",
    "_state_dict_pre_hooks": "state_dict pre",
    "_load_state_dict_pre_hooks": "load_state_dict pre",
    "_load_state_dict_post_hooks": "load_state_dict post",
}


def carry_hooks(name: str, old: nn.Module, new: nn.Module) -> None:
    for attr in _CARRIED_HOOKS:
        setattr(new, attr, getattr(old, attr))
    lost = []
    if old._backward_hooks:
        if old._is_full_backward_hook is False:
            lost.append(
                f"{len(old._backward_hooks)} backward hook(s) registered with the deprecated "
                "register_backward_hook (register_full_backward_hook hooks are carried)"
            )
        else:
            new._backward_hooks = old._backward_hooks
            new._is_full_backward_hook = old._is_full_backward_hook
    for attr, what in _STATE_HOOKS.items():
        if getattr(old, attr):
            lost.append(f"{len(getattr(old, attr))} {what} hook(s) (they refer to its weight/bias keys)")
    weight = getattr(old, "weight", None)
    tensor_hooks = len(getattr(weight, "_backward_hooks", None) or {}) + len(
        getattr(weight, "_post_accumulate_grad_hooks", None) or {}
    )
    if tensor_hooks:
        lost.append(f"{tensor_hooks} hook(s) on its weight tensor (the dense weight no longer exists)")
    if lost:
        warnings.warn(f"convert: {name}: not carried to the SAO layer: {'; '.join(lost)}", stacklevel=3)


def disable_transformer_fast_paths(model: nn.Module) -> None:
    """torch's fused inference path of nn.TransformerEncoderLayer / nn.TransformerEncoder
    reads ``linear1.weight`` / ``linear2.weight`` as dense tensors.  For converted layers it
    is switched off through the flags torch itself consults (the regular path is used)."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and (
            isinstance(module.linear1, SAOLinear) or isinstance(module.linear2, SAOLinear)
        ):
            module.activation_relu_or_gelu = 0  # only read by the fast-path checks
        if isinstance(module, nn.TransformerEncoder) and any(isinstance(m, SAOLinear) for m in module.modules()):
            module.use_nested_tensor = False
