"""Which modules ``sao_kernels.convert`` touches: user selectors (``filter_fn`` in either
argument order, PEFT-style ``target_modules`` / ``exclude_modules``), output-head detection,
and whether a weight looks trained (for ``ReinitializedWarning``)."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["HEAD_NAMES", "TRAINED_SPECTRAL_RATIO"]

# Attribute names of output heads (transformers' task heads, torchvision's classifiers).
HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "qa_outputs", "head", "heads"})

_MODULE_PARAM_NAMES = {"module", "mod", "m", "layer", "submodule", "child"}
_NAME_PARAM_NAMES = {"name", "fqn", "path", "n", "qualname", "module_name", "key"}


# ------------------------------------------------------------------------ selectors
def filter_order(filter_fn: Callable) -> str | None:
    """ "name_first" / "module_first" from the parameters' annotations or names, None when
    they say nothing (e.g. ``lambda a, b: ...``)."""
    try:
        params = list(inspect.signature(filter_fn).parameters.values())[:2]
    except (TypeError, ValueError):
        return None
    if len(params) < 2:
        return None
    for i, p in enumerate(params):
        ann = p.annotation
        if isinstance(ann, str):
            ann_name = ann.rsplit(".", 1)[-1]
        else:
            ann_name = getattr(ann, "__name__", "")
        if ann_name == "str":
            return "name_first" if i == 0 else "module_first"
        if ann_name in ("Module", "Linear", "Conv2d") or (isinstance(ann, type) and issubclass(ann, nn.Module)):
            return "module_first" if i == 0 else "name_first"
    first, second = params[0].name.lower(), params[1].name.lower()
    if first in _MODULE_PARAM_NAMES or second in _NAME_PARAM_NAMES - {"n"}:
        return "module_first"
    if first in _NAME_PARAM_NAMES or second in _MODULE_PARAM_NAMES - {"m"}:
        return "name_first"
    return None


def resolve_filter(
    filter_fn: Callable, candidates: list[tuple[str, nn.Module]]
) -> tuple[Callable[[str, nn.Module], bool], str]:
    """``filter_fn`` as a ``(name, module) -> bool`` and the order it was called in.

    The order comes from the signature (:func:`filter_order`); when it says nothing, the
    filter is tried as ``(name, module)`` over the candidates and taken in that order unless
    it raises or selects nothing while ``(module, name)`` selects something without raising
    (a torchao-style ``lambda mod, fqn: isinstance(mod, nn.Linear)`` seen as ``(name,
    module)`` selects nothing)."""
    order = filter_order(filter_fn)
    if order is None:
        order = "name_first"

        def outcome(call):
            try:
                return sum(bool(call(n, m)) for n, m in candidates), None
            except (TypeError, AttributeError) as err:
                return 0, err

        chosen, err_nm = outcome(lambda n, m: filter_fn(n, m))
        if chosen == 0:
            other, err_mn = outcome(lambda n, m: filter_fn(m, n))
            if other > 0 and err_mn is None:
                order = "module_first"
    if order == "module_first":
        return (lambda n, m: bool(filter_fn(m, n))), order
    return (lambda n, m: bool(filter_fn(n, m))), order


def check_names(arg: str, value: object) -> None:
    if value is None or isinstance(value, str):
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"convert: {arg}={value!r} is not a valid regular expression: {err}") from None
        return
    if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        items = list(value)
        if all(isinstance(v, str) and v for v in items):
            return
    raise TypeError(
        f"convert: {arg} must be a list of module names (matched as the full name or its dotted suffix, "
        f"as in PEFT), a regular expression string (full match of the name) or None, got {value!r}"
    )


def name_matches(name: str, selector: str | Iterable[str]) -> bool:
    """PEFT's rule: a string is a regex fully matching the qualified name; a list matches a
    name equal to an entry or ending with ``"." + entry``."""
    if isinstance(selector, str):
        return re.fullmatch(selector, name) is not None
    return any(name == s or name.endswith("." + s) for s in selector)


# --------------------------------------------------------------------------- heads
def output_heads(model: nn.Module) -> set[int]:
    """ids of the modules that are output heads of ``model``: the module returned by
    ``model.get_output_embeddings()`` (transformers' LM heads), and every module at or under
    a path component named in ``HEAD_NAMES`` (``lm_head``, ``classifier``, ``score``,
    ``qa_outputs``, ``head``, ``heads``)."""
    heads = set()
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            out = get()
        except Exception:  # noqa: BLE001 - a model's own accessor may refuse (vision backbones raise)
            out = None
        if isinstance(out, nn.Module):
            heads.add(id(out))
    for name, module in model.named_modules(remove_duplicate=False):
        if name and any(part in HEAD_NAMES for part in name.split(".")):
            heads.add(id(module))
    return heads


# ----------------------------------------------------------------- trained weights
# A weight counts as trained when its largest singular value stands out of the bulk of a
# random matrix of its shape and RMS: s_max > TRAINED_SPECTRAL_RATIO * rms * (sqrt(m) +
# sqrt(n)) (the edge of the Marchenko-Pastur bulk).  Measured (2026-12-06, 200 draws per
# shape): torch's default Linear / Conv2d inits and N(0, 0.02) stay below 1.08 from 4x4 to
# 768x3072 (orthogonal inits: 0.5); a 32-64-64-2 tanh MLP after 10 Adam steps (lr 1e-2) is at
# 1.27 / 2.97 / 1.09 per layer, after 300 steps 1.69 / 3.59 / 1.16.
TRAINED_SPECTRAL_RATIO = 1.25
_POWER_ITERATIONS = 12  # from below: an estimate that is short only errs towards "fresh"


@torch.no_grad()
def spectral_ratio(weight: torch.Tensor) -> float:
    """s_max / (rms * (sqrt(m) + sqrt(n))) of ``weight`` viewed as (dim 0, the rest), with
    s_max from a power iteration on a fixed seed (the global RNG is not touched)."""
    w = weight.detach().flatten(1).float()
    m, n = w.shape
    rms = w.square().mean().sqrt()
    if not torch.isfinite(rms) or rms == 0:
        return 0.0
    gen = torch.Generator(device=w.device).manual_seed(0)
    v = torch.randn(n, generator=gen, device=w.device)
    s = torch.zeros((), device=w.device)
    for _ in range(_POWER_ITERATIONS):
        v = v / v.norm().clamp_min(1e-30)
        u = w @ v
        s = u.norm()
        v = w.T @ u
    return float(s / (rms * (math.sqrt(m) + math.sqrt(n))))


def looks_trained(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries learned structure (see ``TRAINED_SPECTRAL_RATIO``);
    False on the meta device and for modules without a floating weight."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.is_meta or not weight.is_floating_point() or weight.dim() < 2:
        return False
    return spectral_ratio(weight) > TRAINED_SPECTRAL_RATIO
