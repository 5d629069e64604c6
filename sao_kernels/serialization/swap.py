"""Swapping a model's dense modules for the SAO layers a checkpoint holds: which modules
can be replaced, the checks, and the empty layers put in their place (the load that follows
fills them).  All checks run in :func:`plan_swap`, before :func:`apply_swap` changes anything."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..convert_registry import lookup
from ..format import GroupedBlockFormat
from ..layers import SAOConv2d, SAOLinear
from .checkpoint import LayerSpec, Source, path_name, read_spec, sao_groups

__all__ = ["Plan", "apply_swap", "plan_swap", "replaceable", "weight_of"]

_REPLACEABLE = (nn.Linear, nn.Conv2d, SAOLinear, SAOConv2d)  # exact types: subclasses may read .weight


def _registered_kind(module: nn.Module) -> str:
    """ "linear" / "conv2d" for a type registered with a loadable kind (transformers' Conv1D
    is "linear"; see ``register_conversion``), else ""."""
    if type(module) in _REPLACEABLE:
        return ""
    found = lookup(module)
    return found.kind if found is not None and found.shape is not None else ""


def replaceable(module: nn.Module) -> bool:
    """Whether a saved SAO layer can be put where the model has ``module``."""
    return type(module) in _REPLACEABLE or bool(_registered_kind(module))


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _check_module(path: str, module: nn.Module, parent: nn.Module | None, spec: LayerSpec, where: str) -> None:
    """ValueError when ``module`` (the model's module at ``path``) cannot become ``spec``."""
    kind = type(module).__name__
    stored = f"{where}: holds {spec.describe()} for {path_name(path)}"
    if isinstance(parent, nn.MultiheadAttention):  # a checkpoint/model mismatch, a ValueError like the others
        raise ValueError(
            f"{stored}, the out_proj of an nn.MultiheadAttention, whose forward reads "  # noqa: TRY004
            "out_proj.weight directly: it cannot be an SAO layer"
        )
    if not replaceable(module):
        raise ValueError(
            f"{stored}, where the model has {_a(kind)}; only nn.Linear and nn.Conv2d (not subclasses), "
            "transformers' Conv1D, types registered with a kind (sao_kernels.register_conversion) "
            "and SAO layers can be replaced"
        )
    registered = _registered_kind(module)
    linear_like = isinstance(module, (nn.Linear, SAOLinear)) or registered == "linear"
    if linear_like == bool(spec.kernel_size):
        raise ValueError(f"{stored}, where the model has {_a(kind)}")
    if registered:
        dense = tuple(lookup(module).shape(module))
        if dense[2:] != spec.kernel_size:
            raise ValueError(f"{stored}, where the model has {_a(kind)} with kernel_size={dense[2:]}")
        shape = dense[:2]
    elif linear_like:
        shape = (module.out_features, module.in_features)
    else:
        if len(spec.kernel_size) != 2 or tuple(module.kernel_size) != spec.kernel_size:
            raise ValueError(f"{stored}, where the model has {_a(kind)} with kernel_size={tuple(module.kernel_size)}")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(
                f"{stored}, where the model has an nn.Conv2d with groups={module.groups}; "
                "only groups=1 convolutions can be replaced"
            )
        shape = (module.out_channels, module.in_channels)
    if shape != (spec.out_features, spec.in_features):
        raise ValueError(f"{stored}, where the model has {_a(kind)} {shape[0]}x{shape[1]} (out x in)")


def weight_of(module: nn.Module) -> Tensor:
    """The tensor whose device / dtype / requires_grad an SAO layer in its place takes."""
    if isinstance(module, (SAOLinear, SAOConv2d)):
        return module.values
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, Tensor) else next(p for p in module.parameters() if p.is_floating_point())


def _empty_sao_layer(module: nn.Module, spec: LayerSpec) -> SAOLinear | SAOConv2d:
    """An SAO layer of shape ``spec`` with ``module``'s device, dtype, training flag,
    requires_grad and convolution geometry.  No random init: values and bias are left
    uninitialised and the indices are identities, because the load that follows overwrites
    every one of them (the checkpoint holds them: that is how the layer was found).  On the
    meta device (transformers' construction) no memory is touched at all."""
    ref = weight_of(module)
    device, dtype = ref.device, ref.dtype
    G, m, n = spec.groups, spec.out_features, spec.in_features
    blocks = GroupedBlockFormat(
        torch.empty((G, m // G, n // G, *spec.kernel_size), device=device, dtype=dtype),
        torch.arange(n, device=device),
        torch.arange(m, device=device),
        spec.block_size,
    )
    bias = torch.empty(m, device=device, dtype=dtype) if spec.bias else None
    if spec.kernel_size:
        layer = SAOConv2d.from_blocks(
            blocks,
            bias,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            padding_mode=module.padding_mode,
        )
    else:
        layer = SAOLinear.from_blocks(blocks, bias)
    layer.values.requires_grad_(ref.requires_grad)
    if layer.bias is not None:
        bias = getattr(module, "bias", None)
        layer.bias.requires_grad_(bias.requires_grad if isinstance(bias, Tensor) else ref.requires_grad)
    return layer.train(module.training)


@dataclass
class Plan:
    """What to replace, keyed by id(module) so that a shared module is replaced once."""

    modules: dict[int, nn.Module] = field(default_factory=dict)
    specs: dict[int, LayerSpec] = field(default_factory=dict)
    paths: dict[int, list[str]] = field(default_factory=dict)  # every path of the module in the model
    stored_at: dict[int, str] = field(default_factory=dict)  # the checkpoint prefix it was read from
    unmatched: list[str] = field(default_factory=list)  # SAO prefixes with no module in the model

    def replaced_paths(self) -> set[str]:
        return {p for paths in self.paths.values() for p in paths}


def plan_swap(model: nn.Module, source: Source, resolve: Callable[[str], str | None]) -> Plan:
    """Which modules become which SAO layers; raises ValueError before anything is changed."""
    by_path = dict(model.named_modules(remove_duplicate=False))
    parents = {f"{p}.{c}" if p else c: parent for p, parent in by_path.items() for c in parent._modules}
    own_keys = set(model.state_dict(keep_vars=True))
    plan = Plan()
    for prefix, leaves in sorted(sao_groups(source.shapes).items()):
        path = resolve(prefix)
        if path is None or path not in by_path:
            plan.unmatched.append(prefix)
            continue
        module = by_path[path]
        dot = f"{path}." if path else ""
        if not replaceable(module) and all(f"{dot}{leaf}" in own_keys for leaf in leaves):
            continue  # a module of the model's own that holds a tensor called "values": loaded as is
        spec = read_spec(source, prefix, leaves)
        _check_module(path, module, parents.get(path), spec, source.where)
        if not path:
            raise ValueError(
                f"{source.where}: holds {spec.describe()} for the root module, which cannot be "
                "replaced in place; wrap it (e.g. nn.Sequential(layer)) or build the SAO layer directly"
            )
        previous = plan.specs.setdefault(id(module), spec)
        if previous != spec:
            raise ValueError(
                f"{source.where}: {path_name(path)} is shared with {path_name(plan.stored_at[id(module)])} in the "
                f"model, but the checkpoint holds {previous.describe()} there and {spec.describe()} here"
            )
        plan.modules[id(module)] = module
        plan.stored_at.setdefault(id(module), prefix)
    for path, module in by_path.items():
        if id(module) in plan.modules:
            plan.paths.setdefault(id(module), []).append(path)
    return plan


def apply_swap(model: nn.Module, plan: Plan) -> dict[int, SAOLinear | SAOConv2d]:
    """Swap every planned module, at every path, for one new SAO layer (sharing is kept)."""
    new = {}
    for key, module in plan.modules.items():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            warnings.warn(f"the hooks of {plan.paths[key][0]!r} are not carried over to its SAO layer", stacklevel=3)
        new[key] = _empty_sao_layer(module, plan.specs[key])
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new:
                parent._modules[child_name] = new[id(child)]
    return new
