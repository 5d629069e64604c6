"""Loading saved SAO models back into dense model code: state dicts, safetensors, transformers.

A model with SAO layers saves, for the layer at prefix ``p``, the tensors

    p.values     (G, m/G, n/G) or (G, m/G, n/G, kh, kw)   floating
    p.in_index   (n,) int64
    p.out_index  (m,) int64
    p.bias       (m,)                                     optional

while the code that builds the model again (the "skeleton") puts ``nn.Linear`` /
``nn.Conv2d`` at ``p``.  :func:`load_sparse_state_dict` swaps exactly those modules for SAO
layers of the stored shapes and loads the state dict; :func:`sao_kernels.serialization.from_pretrained`
does the same inside Hugging Face transformers' ``from_pretrained``.  Everything needed is in the
checkpoint (G and the block sides from ``values``' shape, the kernel size, the block size
from the runs of the indices, the bias from its key), so ``torch.save(model.state_dict())``,
``safetensors.torch.save_file`` / ``save_model`` and a plain ``model.save_pretrained`` (also
when Trainer or ``push_to_hub`` calls it) need no extra step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from ..convert_registry import lookup
from ..format import GroupedBlockFormat, _largest_block_size
from ..layers import SAOConv2d, SAOLinear

__all__ = ["load_sparse_state_dict"]

SAO_KEYS = ("values", "in_index", "out_index")
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


_FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}


@dataclass(frozen=True)
class _LayerSpec:
    """One SAO layer as a checkpoint stores it."""

    groups: int
    out_features: int
    in_features: int
    kernel_size: tuple[int, ...]  # () for a linear layer
    bias: bool
    block_size: int

    def describe(self) -> str:
        kind = f"{'x'.join(map(str, self.kernel_size))} convolution" if self.kernel_size else "linear layer"
        return f"an SAO {kind} {self.out_features}x{self.in_features} (out x in, G={self.groups})"


@dataclass(frozen=True)
class _Source:
    """Names, shapes and dtypes of a checkpoint's tensors; ``read`` loads one on demand."""

    where: str
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    read: Callable[[str], Tensor]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], where: str) -> _Source:
        tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
        return cls(
            where,
            {k: tuple(v.shape) for k, v in tensors.items()},
            {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
            tensors.__getitem__,
        )

    @classmethod
    def from_files(cls, files: Iterable[str]) -> _Source:
        """Safetensors files are read through their headers (only the index tensors are
        loaded); a ``.bin`` is memory-mapped."""
        shapes, dtypes, readers = {}, {}, {}
        files = [str(f) for f in files]
        for file in files:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                handle = safe_open(file, framework="pt")
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    sl = handle.get_slice(key)
                    shapes[key], readers[key] = tuple(sl.get_shape()), handle.get_tensor
                    dtypes[key] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
            else:
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for key, value in loaded.items():
                    shapes[key], readers[key] = tuple(value.shape), loaded.__getitem__
                    dtypes[key] = str(value.dtype).removeprefix("torch.")
        return cls("from_pretrained: " + ", ".join(files), shapes, dtypes, lambda key: readers[key](key))


def _name(path: str) -> str:
    return repr(path) if path else "the root module"


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _sao_groups(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """{module prefix: {leaf: key}} for every key whose last part is values / in_index / out_index."""
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        if leaf in SAO_KEYS:
            groups.setdefault(prefix, {})[leaf] = key
    return groups


def _read_spec(source: _Source, prefix: str, leaves: Mapping[str, str]) -> _LayerSpec:
    """The layer stored at ``prefix``; ValueError naming the key when the stored set is not one."""
    dot = f"{prefix}." if prefix else ""
    vkey, ikey, okey, bkey = (f"{dot}{leaf}" for leaf in (*SAO_KEYS, "bias"))
    missing = [key for key in (vkey, ikey, okey) if key not in source.shapes]
    if missing:
        raise ValueError(
            f"{source.where}: {_name(prefix)} holds {', '.join(sorted(leaves.values()))} but not "
            f"{', '.join(missing)}; an SAO layer is stored as {vkey}, {ikey}, {okey} (and optionally {bkey})"
        )
    vshape = source.shapes[vkey]
    if len(vshape) not in (3, 5) or min(vshape[:3]) < 1:
        raise ValueError(
            f"{source.where}: {vkey} has shape {vshape}; expected (G, m/G, n/G) for a linear layer or "
            "(G, m/G, n/G, kh, kw) for a convolution, with non-empty groups"
        )
    if source.dtypes[vkey] not in _FLOAT_DTYPES:
        raise ValueError(f"{source.where}: {vkey} has dtype {source.dtypes[vkey]}; expected a floating dtype")
    G, a, c = vshape[:3]
    for key, size in ((ikey, G * c), (okey, G * a)):
        if source.dtypes[key] != "int64" or source.shapes[key] != (size,):
            raise ValueError(
                f"{source.where}: {key} is {source.dtypes[key]} of shape {source.shapes[key]}; expected "
                f"int64 of shape ({size},) to match {vkey} of shape {vshape} (G={G})"
            )
    if bkey in source.shapes and source.shapes[bkey] != (G * a,):
        raise ValueError(
            f"{source.where}: {bkey} has shape {source.shapes[bkey]}; expected ({G * a},) to match "
            f"{vkey} of shape {vshape}"
        )
    # block_size is not stored, so the largest run width of the indices is taken: the layer
    # was built with a divisor of it, and every valid block_size gives the same products.
    block_size = _largest_block_size(source.read(ikey).cpu(), source.read(okey).cpu(), a, c)
    return _LayerSpec(G, G * a, G * c, tuple(vshape[3:]), bkey in source.shapes, block_size)


def _check_module(path: str, module: nn.Module, parent: nn.Module | None, spec: _LayerSpec, where: str) -> None:
    """ValueError when ``module`` (the model's module at ``path``) cannot become ``spec``."""
    kind = type(module).__name__
    stored = f"{where}: holds {spec.describe()} for {_name(path)}"
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


def _weight_of(module: nn.Module) -> Tensor:
    """The tensor whose device / dtype / requires_grad an SAO layer in its place takes."""
    if isinstance(module, (SAOLinear, SAOConv2d)):
        return module.values
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, Tensor) else next(p for p in module.parameters() if p.is_floating_point())


def _empty_sao_layer(module: nn.Module, spec: _LayerSpec) -> SAOLinear | SAOConv2d:
    """An SAO layer of shape ``spec`` with ``module``'s device, dtype, training flag,
    requires_grad and convolution geometry.  No random init: values and bias are left
    uninitialised and the indices are identities, because the load that follows overwrites
    every one of them (the checkpoint holds them: that is how the layer was found).  On the
    meta device (transformers' construction) no memory is touched at all."""
    ref = _weight_of(module)
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
class _Plan:
    """What to replace, keyed by id(module) so that a shared module is replaced once."""

    modules: dict[int, nn.Module] = field(default_factory=dict)
    specs: dict[int, _LayerSpec] = field(default_factory=dict)
    paths: dict[int, list[str]] = field(default_factory=dict)  # every path of the module in the model
    stored_at: dict[int, str] = field(default_factory=dict)  # the checkpoint prefix it was read from
    unmatched: list[str] = field(default_factory=list)  # SAO prefixes with no module in the model

    def replaced_paths(self) -> set[str]:
        return {p for paths in self.paths.values() for p in paths}


def _plan(model: nn.Module, source: _Source, resolve: Callable[[str], str | None]) -> _Plan:
    """Which modules become which SAO layers; raises ValueError before anything is changed."""
    by_path = dict(model.named_modules(remove_duplicate=False))
    parents = {f"{p}.{c}" if p else c: parent for p, parent in by_path.items() for c in parent._modules}
    own_keys = set(model.state_dict(keep_vars=True))
    plan = _Plan()
    for prefix, leaves in sorted(_sao_groups(source.shapes).items()):
        path = resolve(prefix)
        if path is None or path not in by_path:
            plan.unmatched.append(prefix)
            continue
        module = by_path[path]
        dot = f"{path}." if path else ""
        if not replaceable(module) and all(f"{dot}{leaf}" in own_keys for leaf in leaves):
            continue  # a module of the model's own that holds a tensor called "values": loaded as is
        spec = _read_spec(source, prefix, leaves)
        _check_module(path, module, parents.get(path), spec, source.where)
        if not path:
            raise ValueError(
                f"{source.where}: holds {spec.describe()} for the root module, which cannot be "
                "replaced in place; wrap it (e.g. nn.Sequential(layer)) or build the SAO layer directly"
            )
        previous = plan.specs.setdefault(id(module), spec)
        if previous != spec:
            raise ValueError(
                f"{source.where}: {_name(path)} is shared with {_name(plan.stored_at[id(module)])} in the "
                f"model, but the checkpoint holds {previous.describe()} there and {spec.describe()} here"
            )
        plan.modules[id(module)] = module
        plan.stored_at.setdefault(id(module), prefix)
    for path, module in by_path.items():
        if id(module) in plan.modules:
            plan.paths.setdefault(id(module), []).append(path)
    return plan


def _apply(model: nn.Module, plan: _Plan) -> dict[int, SAOLinear | SAOConv2d]:
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


def _keys_after(model: nn.Module, plan: _Plan) -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """The model's state dict keys once the plan is applied (a bias where the model has
    one), and for each key every key naming the same tensor (shared modules, tied weights)."""
    replaced = plan.replaced_paths()
    by_tensor: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key.rpartition(".")[0] not in replaced:
            by_tensor.setdefault(id(tensor), []).append(key)
    groups = list(by_tensor.values())
    for key, paths in plan.paths.items():
        leaves = (*SAO_KEYS, "bias") if getattr(plan.modules[key], "bias", None) is not None else SAO_KEYS
        groups += [[f"{p}.{leaf}" for p in paths] for leaf in leaves]
    aliases = {k: tuple(group) for group in groups for k in group}
    return set(aliases), aliases


def load_sparse_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True, assign: bool = False
) -> _IncompatibleKeys:
    """Load a state dict saved from a model with SAO layers into ``model``, in place, where
    ``model`` has dense ``nn.Linear`` / ``nn.Conv2d`` modules at those places.

    Every module whose keys in ``state_dict`` hold ``values`` / ``in_index`` / ``out_index``
    becomes an ``SAOLinear`` / ``SAOConv2d`` of the stored shape (G, block sides, kernel
    size; block size from the runs of the indices; a bias when ``<prefix>.bias`` is stored)
    with the module's device, dtype, training flag, requires_grad and convolution stride /
    padding / dilation / padding_mode; a module at several paths becomes one shared SAO
    layer; SAO modules already in ``model`` are rebuilt the same way.  No random init is
    run.  Then ``model.load_state_dict(state_dict, assign=assign)`` loads every tensor
    (values bit-exact when the dtypes agree, cast to the model's dtype otherwise).  All
    checks run before the model is changed.

    Args:
        model: the skeleton, e.g. the freshly built dense model; for one on the "meta"
            device pass ``assign=True``.
        state_dict: e.g. from ``torch.load(path, weights_only=True)`` or
            ``safetensors.torch.load_file(path)``.
        strict: as for ``nn.Module.load_state_dict``: missing or unexpected keys raise.  A
            key that is missing because the model shares its tensor with a key that is
            present (a shared module or tied weight that ``safetensors.torch.save_model``
            stored once) counts as present.  With ``strict=False`` a replaced layer's bias
            follows the checkpoint.
        assign: as for ``nn.Module.load_state_dict``.

    Returns:
        ``(missing_keys, unexpected_keys)``, as ``nn.Module.load_state_dict``.

    Raises:
        ValueError: an SAO layer in the checkpoint is incomplete (``values`` without
            ``in_index``, ...), malformed, sits where the model has no nn.Linear / nn.Conv2d,
            contradicts the model's shapes, or shared keys disagree; the message names the key.
        RuntimeError: ``strict=True`` and keys are missing or unexpected; a size mismatch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_sparse_state_dict: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"load_sparse_state_dict: state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}"
        )
    where = "load_sparse_state_dict: state_dict"
    plan = _plan(model, _Source.from_state_dict(state_dict, where), lambda prefix: prefix)
    for key, module in plan.modules.items():
        prefix = plan.stored_at[key]
        if _weight_of(module).is_meta and not assign:
            raise ValueError(
                f"{where}: {prefix!r} is on the meta device, where nothing can be copied; "
                "pass assign=True to take the state dict's tensors"
            )
        try:  # the layer checks again when it loads; here it is before anything changes
            GroupedBlockFormat(*(state_dict[f"{prefix}.{leaf}"] for leaf in SAO_KEYS), plan.specs[key].block_size)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {prefix!r} is not a valid SAO layer: {err}") from err

    expected, aliases = _keys_after(model, plan)
    present = {k for k, v in state_dict.items() if isinstance(v, Tensor)}
    missing = sorted(k for k in expected - present if not present.intersection(aliases[k]))
    unexpected = sorted(set(state_dict) - expected)
    if strict and (missing or unexpected):
        parts = [f"missing key(s): {', '.join(missing)}"] if missing else []
        parts += [f"unexpected key(s): {', '.join(unexpected)}"] if unexpected else []
        raise RuntimeError(
            f"load_sparse_state_dict: the state dict does not match {type(model).__name__} "
            f"(with its SAO layers in place): {'; '.join(parts)}"
        )
    replaced, own = plan.replaced_paths(), model.state_dict(keep_vars=True)
    for key in sorted(present & own.keys()):
        theirs, ours = state_dict[key], own[key]
        if key.rpartition(".")[0] not in replaced and not nn.parameter.is_lazy(ours) and theirs.shape != ours.shape:
            raise RuntimeError(
                f"load_sparse_state_dict: size mismatch for {key}: the state dict has shape "
                f"{tuple(theirs.shape)}, the model {tuple(ours.shape)}"
            )
    first_of: dict[tuple[str, ...], str] = {}
    for key in sorted(present & expected):
        first = first_of.setdefault(aliases[key], key)
        a, b = state_dict[first], state_dict[key]
        if first != key and not (a.is_meta or b.is_meta) and not torch.equal(a, b.to(a.device)):
            raise ValueError(
                f"{where}: {first} and {key} name the same tensor in the model (a shared module or a "
                "tied weight) but hold different values"
            )

    _apply(model, plan)
    result = model.load_state_dict(state_dict, strict=False, assign=assign)
    return _IncompatibleKeys(
        [k for k in result.missing_keys if not present.intersection(aliases.get(k, ()))], list(result.unexpected_keys)
    )
