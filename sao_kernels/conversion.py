"""convert(): swap a model's nn.Linear / nn.Conv2d / Conv1D (and registered) modules for SAO
layers in one call, with a summary of what it did and why."""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ._checks import check_gain, check_generator, is_int
from .convert_hooks import carry_hooks, disable_transformer_fast_paths
from .convert_plan import ConversionRow, ConversionSummary, dense_flops, last_summary, remember
from .convert_registry import SAOSettings, dense_shape, lookup
from .convert_select import check_names, looks_trained, name_matches, output_heads, resolve_filter
from .init import CONV_INITS, LINEAR_INITS
from .layers import SAOLayerBase
from .serialization.hf_config import mark_config
from .sizes import check_activation, check_dim

__all__ = ["ReinitializedWarning", "conversion_summary", "convert"]

ON_EMPTY = ("warn", "raise", "ignore")
# 1x1 SAO convolutions can be slower than dense: the input-channel gather costs about as much
# as the 1x1 product it saves.  Measured forward at 1 thread: 0.53-0.59x (issue 22's
# walk-through, 2026-12-02); 0.16-0.30x at 64->256 ch 28x28 but 1.8-2.5x at 512->1024 ch 7x7
# (2026-12-06, docs/conversion.md): it depends on the shape, so skipping them is opt-in.
POINTWISE_REASON = (
    "1x1 convolution: as SAO it can run slower than dense on CPU (forward 0.16-0.59x at 1 thread for "
    "large maps, see docs/conversion.md); skip_pointwise_conv=True"
)


class ReinitializedWarning(UserWarning):
    """convert() replaced layers whose weights look trained by freshly initialised SAO layers
    (their weights are not kept).  Silence it with
    ``warnings.filterwarnings("ignore", category=ReinitializedWarning)``."""


def _is_candidate(module: nn.Module) -> bool:
    return lookup(module) is not None or isinstance(module, (nn.Linear, nn.Conv2d))


def _default_skip(module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why a module must stay dense whatever the call asks, or None."""
    if isinstance(parent, nn.MultiheadAttention):
        # MultiheadAttention's forward reads out_proj.weight directly (F.multi_head_attention_forward),
        # so a replaced out_proj would be bypassed; it stays dense.
        return "nn.MultiheadAttention reads out_proj.weight directly"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"grouped convolution (groups={module.groups})"
    if lookup(module) is None:
        base = "nn.Linear" if isinstance(module, nn.Linear) else "nn.Conv2d"
        return f"subclass {type(module).__name__} of {base} may rely on its dense weight"
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and not weight.is_floating_point():
        return f"its weight is {weight.dtype}, not floating point"
    return None


def _tied_to(module: nn.Module, owners: dict[int, list[tuple[nn.Module, str]]]) -> list[str]:
    """Qualified names of the parameters of *other* modules that are this module's weight."""
    weight = getattr(module, "weight", None)
    return [qual for other, qual in owners.get(id(weight), []) if other is not module] if weight is not None else []


def _check_arguments(model, sparsity, degree, groups, filter_fn, skip_invalid, settings, extra) -> None:
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
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"convert: {arg} must be a positive int, got {value!r}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(
            "convert: filter_fn must be a callable (name, module) -> bool (or (module, name)) or None, "
            f"got {filter_fn!r}"
        )
    for arg in ("skip_invalid", "include_heads", "skip_pointwise_conv", "dry_run"):
        value = skip_invalid if arg == "skip_invalid" else extra[arg]
        if not isinstance(value, bool):
            raise TypeError(f"convert: {arg} must be a bool, got {value!r}")
    if extra["on_empty"] not in ON_EMPTY:
        allowed = ", ".join(map(repr, ON_EMPTY))
        raise ValueError(f"convert: on_empty={extra['on_empty']!r} is not supported; allowed: {allowed}")
    check_names("target_modules", extra["target_modules"])
    check_names("exclude_modules", extra["exclude_modules"])
    try:
        check_activation(settings.activation)
        check_dim("block_size", settings.block_size)
        check_generator(settings.generator)
        check_gain(settings.gain)
    except (TypeError, ValueError) as err:
        raise type(err)(f"convert: {err}") from None
    for arg, value, allowed in (
        ("linear_init", settings.linear_init, LINEAR_INITS),
        ("conv_init", settings.conv_init, CONV_INITS),
    ):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"convert: {arg}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _places(model: nn.Module) -> list[tuple[str, nn.Module | None, str, nn.Module]]:
    """(name, parent or None for the root, attribute, module) of every candidate module, at
    every place it occurs (parent._modules, not named_children(): a module used twice in
    one parent is seen twice)."""
    places = [("", None, "", model)] if _is_candidate(model) else []
    for parent_name, parent in model.named_modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and _is_candidate(child):
                places.append((f"{parent_name}.{child_name}" if parent_name else child_name, parent, child_name, child))
    return places


def _selector(filter_fn, target_modules, exclude_modules, places) -> Callable[[str, nn.Module], str | None]:
    """``(name, module) -> None`` when the user's selectors admit the module, else the reason."""
    filt = resolve_filter(filter_fn, [(n, c) for n, _, _, c in places])[0] if filter_fn is not None else None

    def excluded(name: str, module: nn.Module) -> str | None:
        if exclude_modules is not None and name_matches(name, exclude_modules):
            return "excluded by exclude_modules"
        if target_modules is not None and not name_matches(name, target_modules):
            return "not in target_modules"
        if filt is not None and not filt(name, module):
            return "filter_fn returned False"
        return None

    return excluded


def _empty_message(model: nn.Module, rows: list[ConversionRow], dry_run: bool) -> str:
    what = f"convert: no module of {type(model).__name__} was converted"
    if not rows:
        return (
            f"{what}: it has no nn.Linear, nn.Conv2d, transformers Conv1D or registered module type "
            "(sao_kernels.register_conversion adds one)"
        )
    listed = "; ".join(f"{r.path or '(root)'}: {r.reason}" for r in rows[:5])
    more = f"; and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"{what} ({len(rows)} candidate(s)): {listed}{more}. sk.conversion_summary(model, ...) shows every row"


def _row(path, module, status, reason, new, also_at) -> ConversionRow:
    shape = dense_shape(module)
    if shape is None and isinstance(new, SAOLayerBase):
        out_f, in_f, kernel = new._shape()
        shape = (out_f, in_f, *(kernel or ()))
    before = sum(p.numel() for p in module.parameters())
    flops = dense_flops(shape)
    note = ""
    if status == "converted":
        after = sum(p.numel() for p in new.parameters())
        if isinstance(new, SAOLayerBase):
            groups, flops_after = new.groups, 2 * new.values.numel()
        else:
            groups, flops_after = 1, dense_flops(dense_shape(new))
        if shape is not None and len(shape) == 4 and shape[2:] == (1, 1):
            note = POINTWISE_REASON.split(";")[0]
    else:
        after, groups, flops_after = before, 1, flops
    return ConversionRow(
        path=path,
        type=type(module).__name__,
        shape=tuple(shape or ()),
        status=status,
        groups=groups,
        sparsity=1.0 - 1.0 / groups,
        params_before=before,
        params_after=after,
        flops_before=flops,
        flops_after=flops_after,
        reason=reason or "",
        note=note,
        also_at=tuple(also_at),
    )


def _settings_text(sparsity, degree, groups) -> str:
    return next(f"{k}={v!r}" for k, v in (("sparsity", sparsity), ("degree", degree), ("groups", groups)) if v)


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
    target_modules: str | Iterable[str] | None = None,
    exclude_modules: str | Iterable[str] | None = None,
    include_heads: bool = False,
    skip_pointwise_conv: bool = False,
    on_empty: str = "warn",
    dry_run: bool = False,
    keep_weights: bool = False,
    orthogonalize: bool = False,
) -> nn.Module | ConversionSummary:
    """Replace ``nn.Linear``, ``nn.Conv2d`` and transformers ``Conv1D`` modules of ``model``
    (and types added with :func:`sao_kernels.register_conversion`) by SAO layers, in place,
    and return the model's new root: **always use the return value** (when ``model`` is
    itself such a module the converted layer is returned; otherwise it is ``model``).
    ``sao_kernels.conversion_summary(root)`` then gives one row per candidate module: what
    was converted, what was left dense and why, parameters and FLOPs before and after.

    The weights are **re-initialised by SAO**: every converted layer gets a fresh SAO
    topology and values (``linear_init`` / ``conv_init``) at the given sparsity / degree /
    groups.  When a replaced weight looks trained (its top singular value stands out of a
    random matrix's, see ``convert_select.TRAINED_SPECTRAL_RATIO``) a
    :class:`ReinitializedWarning` says so once per call; freshly built models convert
    silently.  To keep an SAO-structured weight, pack it with ``SAOLinear.from_dense``.

    What is kept: the bias (the very Parameter object), device and dtype, train/eval
    mode, ``requires_grad`` of the weight (on ``values``) and of the bias, forward hooks,
    forward pre-hooks and full backward (pre-)hooks (the handles still remove them).  Hooks
    that cannot be carried (deprecated non-full backward hooks, state_dict hooks, hooks on
    the weight tensor) are named in a warning.  A module used at several places becomes one
    shared SAO layer.  Modules that stay dense, each with a warning: a layer whose weight
    is tied to another module's parameter (e.g. GPT-2's ``lm_head`` and ``wte``: converting
    would break the tie), output heads unless ``include_heads`` (see below), the
    ``out_proj`` of an ``nn.MultiheadAttention``, grouped convolutions, subclasses,
    non-floating weights, shapes that cannot reach the sparsity.  Converted
    ``nn.TransformerEncoderLayer`` s have torch's fused inference fast path switched off
    (it reads dense ``linear1.weight``), so eval mode runs the regular path.  A model on the
    meta device converts without drawing anything (see ``SAOLinear``: deferred init).

    Args:
        filter_fn: chooses which modules to convert (default: all); ``filter_fn(name,
            module)`` or torchao's ``filter_fn(module, fqn)``: the order is read from the
            parameter annotations (str / nn.Module) or names (module / mod / m / layer
            first, or fqn / name / path second); when they say nothing, ``(name, module)``
            unless that raises or selects nothing while ``(module, name)`` selects some.
            The root module's name is "".
        target_modules / exclude_modules: PEFT-style: a list of names (a module matches
            when its qualified name equals one or ends with ``"." + name``, e.g.
            ``["c_attn", "c_fc"]``) or a regex string (full match of the qualified name).
            A module is converted when filter_fn, target_modules and exclude_modules all
            admit it.
        include_heads: also convert output heads.  A head is the module that
            ``model.get_output_embeddings()`` returns (transformers' LM heads, e.g.
            Llama's ``lm_head``) or any module at or under a path component named
            ``lm_head``, ``classifier``, ``score``, ``qa_outputs``, ``head`` or ``heads``.
            Left dense by default: the head's outputs are the model's, so its sparsity is
            a modelling choice of its own.  A tied head stays dense either way.
        skip_pointwise_conv: leave 1x1 convolutions dense: as SAO they can run slower than
            dense on CPU (the channel gather costs about as much as the product; measured
            0.16-0.59x forward at 1 thread on large feature maps, faster on small ones: see
            docs/conversion.md).  The summary notes converted 1x1 convolutions.
        skip_invalid: when a layer's shape cannot reach the requested sparsity, leave it
            dense with a warning (True) or raise the ValueError (False).
        on_empty: when nothing is converted: "warn" (a UserWarning listing every
            candidate and why it stayed dense), "raise" (a ValueError with that text) or
            "ignore".
        dry_run: change nothing and return the :class:`ConversionSummary` of what the
            call would do (layers are built on the meta device: nothing is drawn; no
            warnings).
        keep_weights: keep the trained weights instead of re-initialising: each layer gets
            the SAO topology that retains the most of its weight's energy and W's values on
            it (``sao_kernels.pretrained``; per-layer retention in
            ``sao_kernels.pretrained.retained_energy(model)``).  ``generator`` seeds its
            restarts.
        orthogonalize: with ``keep_weights``, replace each kept block by its nearest
            semi-orthogonal matrix scaled to the block's Frobenius norm.
        The other arguments are those of ``SAOLinear`` / ``SAOConv2d``; they are checked up
        front (a bad value raises instead of leaving every layer dense).

    Returns:
        The new root module (``dry_run=True``: the summary).
    """
    settings = SAOSettings(
        sparsity, degree, groups, activation, linear_init, conv_init, block_size, gain, generator, None
    )
    for arg, value in (("keep_weights", keep_weights), ("orthogonalize", orthogonalize)):
        if not isinstance(value, bool):
            raise TypeError(f"convert: {arg} must be a bool, got {value!r}")
    if orthogonalize and not keep_weights:
        raise ValueError("convert: orthogonalize=True needs keep_weights=True (it orthogonalises the kept blocks)")
    extra = {
        "target_modules": target_modules,
        "exclude_modules": exclude_modules,
        "include_heads": include_heads,
        "skip_pointwise_conv": skip_pointwise_conv,
        "on_empty": on_empty,
        "dry_run": dry_run,
    }
    _check_arguments(model, sparsity, degree, groups, filter_fn, skip_invalid, settings, extra)
    if dry_run:  # the kept topology has the same shapes: a dry run builds plain meta layers
        settings = dataclasses.replace(settings, generator=None, device="meta")
    elif keep_weights:
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("convert: keep_weights=True: the model's weights are on the meta device, nothing to keep")
        settings = dataclasses.replace(settings, keep_weights=True, orthogonalize=orthogonalize)
    # Which module owns each parameter (remove_duplicate=False: shared modules and tied
    # parameters are seen at every place they occur).
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, f"{mod_name}.{p_name}" if mod_name else p_name))
    places = _places(model)
    excluded = _selector(filter_fn, target_modules, exclude_modules, places)
    heads = output_heads(model)

    by_module: dict[int, list[tuple[str, nn.Module | None, str]]] = {}  # admitted places
    first: dict[int, tuple[str, nn.Module, str | None]] = {}  # path, module, exclusion reason
    for name, parent, attr, child in places:
        why = excluded(name, child)
        entry = first.setdefault(id(child), (name, child, why))
        if why is None:
            by_module.setdefault(id(child), []).append((name, parent, attr))
            if entry[2] is not None:  # excluded at its first place, admitted here: this place names it
                first[id(child)] = (name, child, None)

    rows: list[ConversionRow] = []
    replaced: dict[int, nn.Module] = {}
    to_warn: list[str] = []
    order = {}
    for i, (_, m) in enumerate(model.named_modules(remove_duplicate=False)):
        order.setdefault(id(m), i)
    for key, (path, child, why) in sorted(first.items(), key=lambda item: order.get(item[0], -1)):
        all_paths = [n for n, _, _, c in places if c is child]
        also_at = [p for p in all_paths if p != path]
        shown = path or f"the model itself ({type(child).__name__})"
        new, status = None, "excluded"
        if why is None:
            status = "dense"
            why = next((r for _, parent, _ in by_module[key] if (r := _default_skip(child, parent))), None)
            tied = _tied_to(child, owners)
            if why is None and tied:
                why = f"its weight is tied to {', '.join(tied)} (converting it would break the tie)"
            if why is None and key in heads and not include_heads:
                why = "an output head (include_heads=True converts it)"
            pointwise = isinstance(child, nn.Conv2d) and tuple(child.kernel_size) == (1, 1)
            if why is None and skip_pointwise_conv and pointwise:
                why = POINTWISE_REASON
            elif why is not None and not dry_run:
                to_warn.append(f"convert: left {shown} dense: {why}")
            if why is None:
                try:
                    new = lookup(child).fn(child, settings)
                except ValueError as err:
                    if not skip_invalid:
                        raise ValueError(f"convert: cannot convert {shown}: {err}") from err
                    why = str(err)
                    if not dry_run:
                        to_warn.append(f"convert: left {shown} dense: {err}")
                if new is None and why is None:
                    why = f"the conversion function registered for {type(child).__name__} returned None"
                    if not dry_run:
                        to_warn.append(f"convert: left {shown} dense: {why}")
                if new is not None:
                    status, replaced[key] = "converted", new
        rows.append(_row(path, child, status, why, new, also_at))
    summary = ConversionSummary(
        rows=rows,
        model=type(model).__name__,
        settings=_settings_text(sparsity, degree, groups),
        dry_run=dry_run,
        model_params_before=sum(p.numel() for p in model.parameters()),
    )
    if dry_run:
        return summary
    for message in to_warn:
        warnings.warn(message, stacklevel=2)

    root = model
    reinitialised = []
    for key, new in replaced.items():
        child = first[key][1]
        weight = getattr(child, "weight", None)
        if isinstance(new, SAOLayerBase) and isinstance(weight, torch.Tensor):
            new.values.requires_grad_(weight.requires_grad)
        new.train(child.training)
        shown = first[key][0] or f"the model itself ({type(child).__name__})"
        carry_hooks(shown, child, new)
        if not keep_weights and looks_trained(child):
            reinitialised.append(shown)
        for _name, parent, attr in by_module[key]:
            if parent is None:
                root = new
            else:
                setattr(parent, attr, new)

    if reinitialised:
        listed = ", ".join(reinitialised[:5])
        if len(reinitialised) > 5:
            listed += f" and {len(reinitialised) - 5} more"
        warnings.warn(
            f"convert: {len(reinitialised)} layer(s) whose weights look trained were re-initialised by SAO "
            f"({listed}): their weights are freshly drawn, the trained values are not kept (biases are). To keep "
            "what they learned, convert with keep_weights=True (an SAO topology chosen to keep the most of each "
            "weight); an SAO-structured weight packs exactly with SAOLinear.from_dense / SAOConv2d.from_dense.",
            ReinitializedWarning,
            stacklevel=2,
        )
    disable_transformer_fast_paths(root)
    if replaced:
        mark_config(root, len(replaced))  # a transformers model's config.json then says it holds SAO layers
    remember(summary, root, model)
    if not replaced and on_empty != "ignore":
        message = _empty_message(model, rows, dry_run)
        if on_empty == "raise":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return root


def conversion_summary(model: nn.Module, **convert_kwargs) -> ConversionSummary:
    """The :class:`ConversionSummary` of ``model``.

    ``conversion_summary(model)``: what the last ``convert`` did to it (pass the model
    ``convert`` returned, or the one passed in).  ``conversion_summary(model, groups=4,
    ...)``: what ``convert(model, groups=4, ...)`` would do, without changing the model
    (``convert(..., dry_run=True)``).  ``print(summary)`` shows the table,
    ``summary.to_markdown()`` the Markdown table, ``summary.rows`` / ``to_dicts()`` the data.
    """
    if convert_kwargs:
        return convert(model, **convert_kwargs, dry_run=True)
    if not isinstance(model, nn.Module):
        raise TypeError(f"conversion_summary: model must be an nn.Module, got {type(model).__name__}")
    found = last_summary(model)
    if found is None:
        raise ValueError(
            f"conversion_summary: no convert() of this {type(model).__name__} is recorded; pass convert's "
            "arguments for a dry run, e.g. sk.conversion_summary(model, groups=4)"
        )
    return found
