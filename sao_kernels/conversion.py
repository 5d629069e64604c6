"""convert(): swap a model's nn.Linear / nn.Conv2d modules for SAO layers in one call."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .layers import SAOConv2d, SAOLinear


def _default_skip(name: str, module: nn.Module, parent: nn.Module) -> str | None:
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
    return None


def _disable_transformer_fast_paths(model: nn.Module) -> None:
    """torch's fused inference path of nn.TransformerEncoderLayer / nn.TransformerEncoder
    reads ``linear1.weight`` / ``linear2.weight`` as dense tensors.  For converted layers it
    is switched off through the flags torch itself consults (the regular path is used)."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and (
            isinstance(module.linear1, SAOLinear) or isinstance(module.linear2, SAOLinear)
        ):
            module.activation_relu_or_gelu = 0  # only read by the fast-path checks
        if isinstance(module, nn.TransformerEncoder) and any(
            isinstance(m, SAOLinear) for m in module.modules()
        ):
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
    """Replace ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` by SAO layers, in place.

    The new layers are freshly initialised with SAO (``linear_init`` / ``conv_init``) at the
    given sparsity / degree / groups; biases are copied from the replaced modules; device
    and dtype are kept.  ``filter_fn(name, module) -> bool`` chooses which modules to
    convert (default: all).  Modules that must stay dense (the ``out_proj`` of an
    ``nn.MultiheadAttention``, grouped convolutions, subclasses) are left with a warning.
    A module used at several places becomes one shared SAO layer.  Converted
    ``nn.TransformerEncoderLayer`` s have torch's fused inference fast path switched off
    (it reads dense ``linear1.weight``), so eval mode runs the regular path.

    Args:
        skip_invalid: when a layer's shape cannot reach the requested sparsity, leave it
            dense with a warning (True) or raise the ValueError (False).

    Returns:
        ``model`` itself.
    """
    if [sparsity, degree, groups].count(None) != 2:
        raise ValueError("convert: give exactly one of sparsity, degree or groups")
    todo = []
    for parent_name, parent in model.named_modules():
        # parent._modules, not named_children(): a module used twice in one parent must be
        # seen twice (named_children skips repeats).
        for child_name, child in list(parent._modules.items()):
            if not isinstance(child, (nn.Linear, nn.Conv2d)):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if filter_fn is not None and not filter_fn(name, child):
                continue
            why = _default_skip(name, child, parent)
            if why is not None:
                warnings.warn(f"convert: left {name} dense: {why}", stacklevel=2)
                continue
            todo.append((name, parent, child_name, child))

    replaced: dict[int, nn.Module] = {}  # one SAO layer per original module: sharing is kept
    for name, parent, child_name, child in todo:
        if id(child) in replaced:
            setattr(parent, child_name, replaced[id(child)])
            continue
        ref = child.weight
        common = dict(
            sparsity=sparsity, degree=degree, groups=groups, activation=activation,
            block_size=block_size, gain=gain, generator=generator, device=ref.device, dtype=ref.dtype,
        )
        try:
            if isinstance(child, nn.Linear):
                new = SAOLinear(child.in_features, child.out_features, child.bias is not None, init=linear_init, **common)
            else:
                new = SAOConv2d(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.bias is not None, child.padding_mode, init=conv_init, **common,
                )
        except ValueError as err:
            if not skip_invalid:
                raise ValueError(f"convert: cannot convert {name}: {err}") from err
            warnings.warn(f"convert: left {name} dense: {err}", stacklevel=2)
            continue
        if child.bias is not None:
            with torch.no_grad():
                new.bias.copy_(child.bias)
        new.train(child.training)
        replaced[id(child)] = new
        setattr(parent, child_name, new)

    _disable_transformer_fast_paths(model)
    return model
