"""convert(): swap a model's nn.Linear / nn.Conv2d modules for SAO layers in one call."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .init import CONV_INITS, LINEAR_INITS, _check_gain, _check_generator
from .layers import SAOConv2d, SAOLinear
from .sizes import _check_activation, _check_dim

__all__ = ["ReinitializedWarning", "convert"]


class ReinitializedWarning(UserWarning):
    """convert() replaced layers by freshly initialised SAO layers (their weights are not
    kept).  Silence it with ``warnings.filterwarnings("ignore", category=ReinitializedWarning)``."""


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


def _default_skip(name: str, module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why a module must stay dense, or None."""
    if isinstance(parent, nn.MultiheadAttention):
        # MultiheadAttention's forward reads out_proj.weight directly (F.multi_head_attention_forward),
        # so a replaced out_proj would be bypassed; it stays dense.
        return "nn.MultiheadAttention reads out_proj.weight directly"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"grouped convolution (groups={module.groups})"
    if isinstance(module, nn.Linear) and type(module) not in (nn.Linear,):
        return f"subclass {type(module).__name__} of nn.Linear may rely on its dense weight"
    if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
        return f"subclass {type(module).__name__} of nn.Conv2d may rely on its dense weight"
    if not module.weight.is_floating_point():
        return f"its weight is {module.weight.dtype}, not floating point"
    return None


def _tied_to(module: nn.Module, owners: dict[int, list[tuple[nn.Module, str]]]) -> list[str]:
    """Qualified names of the parameters of *other* modules that are this module's weight."""
    return [qual for other, qual in owners.get(id(module.weight), []) if other is not module]


def _carry_hooks(name: str, old: nn.Module, new: nn.Module) -> None:
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
    weight = old.weight
    tensor_hooks = len(getattr(weight, "_backward_hooks", None) or {}) + len(
        getattr(weight, "_post_accumulate_grad_hooks", None) or {}
    )
    if tensor_hooks:
        lost.append(f"{tensor_hooks} hook(s) on its weight tensor (the dense weight no longer exists)")
    if lost:
        warnings.warn(f"convert: {name}: not carried to the SAO layer: {'; '.join(lost)}", stacklevel=4)


def _check_arguments(
    model,
    sparsity,
    degree,
    groups,
    filter_fn,
    skip_invalid,
    activation,
    linear_init,
    conv_init,
    block_size,
    gain,
    generator,
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            # A scripted or traced module runs its compiled graph, not its submodules' forward:
            # swapping submodules would change nothing it computes.
            shown = f"submodule {name!r}" if name else "the model"
            raise TypeError(
                f"convert: {shown} is a TorchScript module ({type(module).__name__}, from torch.jit.script or "
                "torch.jit.trace); its compiled graph would ignore converted layers. Convert the eager model, "
                "then use torch.compile or torch.export"
            )
    if [sparsity, degree, groups].count(None) != 2:
        raise ValueError("convert: give exactly one of sparsity, degree or groups")
    if sparsity is not None and (
        isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= sparsity < 1.0
    ):
        raise ValueError(f"convert: sparsity must be a float in [0, 1), got {sparsity!r}")
    for arg, value in (("degree", degree), ("groups", groups)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"convert: {arg} must be a positive int, got {value!r}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"convert: filter_fn must be a callable (name, module) -> bool or None, got {filter_fn!r}")
    if not isinstance(skip_invalid, bool):
        raise TypeError(f"convert: skip_invalid must be a bool, got {skip_invalid!r}")
    try:
        _check_activation(activation)
        _check_dim("block_size", block_size)
        _check_generator(generator)
        _check_gain(gain)
    except (TypeError, ValueError) as err:
        raise type(err)(f"convert: {err}") from None
    for arg, value, allowed in (("linear_init", linear_init, LINEAR_INITS), ("conv_init", conv_init, CONV_INITS)):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"convert: {arg}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _disable_transformer_fast_paths(model: nn.Module) -> None:
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


def convert(
    model: nn.Module,
    *,
    sparsity: float | None = None,
    degree: int | None = None,
    groups: int | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    skip_invalid: bool = True,
    activation: str = "tanh",
    linear_init: str = "sao",
    conv_init: str = "delta",
    block_size: int = 1,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` by SAO layers, in place,
    and return the model's new root: **always use the return value** (when ``model`` is
    itself an ``nn.Linear`` / ``nn.Conv2d`` the converted layer is returned; otherwise it is
    ``model``).

    The weights are **re-initialised by SAO**: every converted layer gets a fresh SAO
    topology and values (``linear_init`` / ``conv_init``) at the given sparsity / degree /
    groups; the pretrained weights are not kept (a :class:`ReinitializedWarning` says so,
    once per call).  To keep an SAO-structured or pruned weight, pack it with
    ``SAOLinear.from_dense`` / ``SAOConv2d.from_dense`` instead.

    What is kept: the bias (the very Parameter object), device and dtype, train/eval
    mode, ``requires_grad`` of the weight (on ``values``) and of the bias, forward hooks,
    forward pre-hooks and full backward (pre-)hooks (the handles still remove them).  Hooks
    that cannot be carried (deprecated non-full backward hooks, state_dict hooks, hooks on
    the weight tensor) are named in a warning.  A module used at several places becomes one
    shared SAO layer.  Modules that stay dense, each with a warning: a layer whose weight
    is tied to another module's parameter (e.g. GPT-2's ``lm_head`` and ``wte``: converting
    would break the tie), the ``out_proj`` of an ``nn.MultiheadAttention``, grouped
    convolutions, subclasses, non-floating weights.  Converted
    ``nn.TransformerEncoderLayer`` s have torch's fused inference fast path switched off
    (it reads dense ``linear1.weight``), so eval mode runs the regular path.  A model on the
    meta device converts without drawing anything (see ``SAOLinear``: deferred init).

    Args:
        filter_fn: ``filter_fn(name, module) -> bool`` chooses which modules to convert
            (default: all); the root module's name is "".
        skip_invalid: when a layer's shape cannot reach the requested sparsity, leave it
            dense with a warning (True) or raise the ValueError (False).
        The other arguments are those of ``SAOLinear`` / ``SAOConv2d``; they are checked up
        front (a bad value raises instead of leaving every layer dense).

    Returns:
        The new root module.
    """
    _check_arguments(
        model,
        sparsity,
        degree,
        groups,
        filter_fn,
        skip_invalid,
        activation,
        linear_init,
        conv_init,
        block_size,
        gain,
        generator,
    )
    # Which module owns each parameter (remove_duplicate=False: shared modules and tied
    # parameters are seen at every place they occur).
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, f"{mod_name}.{p_name}" if mod_name else p_name))

    # (name, parent or None for the root, attribute, module)
    places: list[tuple[str, nn.Module | None, str, nn.Module]] = [("", None, "", model)]
    for parent_name, parent in model.named_modules():
        # parent._modules, not named_children(): a module used twice in one parent must be
        # seen twice (named_children skips repeats).
        for child_name, child in list(parent._modules.items()):
            if child is not None:
                places.append((f"{parent_name}.{child_name}" if parent_name else child_name, parent, child_name, child))
    todo = []
    for name, parent, attr, child in places:
        if not isinstance(child, (nn.Linear, nn.Conv2d)):
            continue
        if filter_fn is not None and not filter_fn(name, child):
            continue
        shown = name or f"the model itself ({type(child).__name__})"
        why = _default_skip(name, child, parent)
        tied = _tied_to(child, owners)
        if why is None and tied:
            why = f"its weight is tied to {', '.join(tied)} (converting it would break the tie)"
        if why is not None:
            warnings.warn(f"convert: left {shown} dense: {why}", stacklevel=2)
            continue
        todo.append((name, shown, parent, attr, child))

    replaced: dict[int, nn.Module] = {}  # one SAO layer per original module: sharing is kept
    root = model
    reinitialised = []
    for _name, shown, parent, attr, child in todo:
        if id(child) not in replaced:
            new = _convert_one(
                shown,
                child,
                sparsity,
                degree,
                groups,
                activation,
                linear_init,
                conv_init,
                block_size,
                gain,
                generator,
                skip_invalid,
            )
            if new is None:
                continue
            replaced[id(child)] = new
            if not child.weight.is_meta:
                reinitialised.append(shown)
        if parent is None:
            root = replaced[id(child)]
        else:
            setattr(parent, attr, replaced[id(child)])

    if reinitialised:
        listed = ", ".join(reinitialised[:5])
        if len(reinitialised) > 5:
            listed += f" and {len(reinitialised) - 5} more"
        warnings.warn(
            f"convert: {len(reinitialised)} layer(s) were re-initialised by SAO ({listed}): their weights are "
            "freshly drawn, the pretrained values are not kept (biases are). To keep an SAO-structured or pruned "
            "weight, use SAOLinear.from_dense / SAOConv2d.from_dense.",
            ReinitializedWarning,
            stacklevel=2,
        )
    _disable_transformer_fast_paths(root)
    return root


def _convert_one(
    shown,
    child,
    sparsity,
    degree,
    groups,
    activation,
    linear_init,
    conv_init,
    block_size,
    gain,
    generator,
    skip_invalid,
) -> nn.Module | None:
    """The SAO layer that replaces ``child``, or None (left dense with a warning)."""
    ref = child.weight
    common = {
        "sparsity": sparsity,
        "degree": degree,
        "groups": groups,
        "activation": activation,
        "block_size": block_size,
        "gain": gain,
        "generator": generator,
        "device": ref.device,
        "dtype": ref.dtype,
    }
    has_bias = child.bias is not None
    try:
        if isinstance(child, nn.Linear):
            new = SAOLinear(child.in_features, child.out_features, has_bias, init=linear_init, **common)
        else:
            new = SAOConv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                has_bias,
                child.padding_mode,
                init=conv_init,
                **common,
            )
    except ValueError as err:
        if not skip_invalid:
            raise ValueError(f"convert: cannot convert {shown}: {err}") from err
        warnings.warn(f"convert: left {shown} dense: {err}", stacklevel=3)
        return None
    if has_bias:
        new.bias = child.bias  # the same Parameter: value, requires_grad, hooks and ties kept
    new.values.requires_grad_(ref.requires_grad)
    new.train(child.training)
    _carry_hooks(shown, child, new)
    return new
