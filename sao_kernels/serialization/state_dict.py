"""``load_sparse_state_dict``: a state dict saved from a model with SAO layers, loaded into
the code that builds the model again (the "skeleton", with ``nn.Linear`` / ``nn.Conv2d`` where
the SAO layers were): exactly those modules become SAO layers of the stored shapes (the
keys are in :mod:`sao_kernels.serialization.checkpoint`), then the state dict loads as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from ..format import GroupedBlockFormat
from .checkpoint import SAO_KEYS, Source
from .swap import Plan, apply_swap, plan_swap, weight_of

__all__ = ["load_sparse_state_dict"]


def _keys_after(model: nn.Module, plan: Plan) -> tuple[set[str], dict[str, tuple[str, ...]]]:
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
    plan = plan_swap(model, Source.from_state_dict(state_dict, where), lambda prefix: prefix)
    for key, module in plan.modules.items():
        prefix = plan.stored_at[key]
        if weight_of(module).is_meta and not assign:
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

    apply_swap(model, plan)
    result = model.load_state_dict(state_dict, strict=False, assign=assign)
    return _IncompatibleKeys(
        [k for k in result.missing_keys if not present.intersection(aliases.get(k, ()))], list(result.unexpected_keys)
    )
