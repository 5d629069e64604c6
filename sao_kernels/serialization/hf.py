"""Hugging Face transformers round trip: ``sk.from_pretrained(ModelClass, path, ...)`` loads a
checkpoint written by a plain ``save_pretrained`` of a model with SAO layers back as the
sparse model (the swap of dense modules for SAO layers is ``sao_kernels.serialization.swap``'s).

transformers has no public hook between building a model and loading its weights (its
quantizer API runs before the checkpoint files are resolved; the SAO block that ``convert``
writes into the config, ``sao_kernels.serialization.hf_config``, only makes the plain loader refuse), so
the loader overrides the private ``_load_pretrained_model`` in a throwaway
subclass: at that point the model is built on the meta device and the files are resolved
(sharded, safetensors, ``.bin``, hub), so the dense modules are swapped before any tensor is
read.  A transformers without that method raises a clear error.  Needs the ``[hf]`` extra.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..layers import SAOConv2d, SAOLinear
from .checkpoint import SAO_KEYS, Source
from .hf_config import register_quantizer, sao_block
from .swap import apply_swap, plan_swap, replaceable

__all__ = ["from_pretrained"]


def _concrete_class(model_class: Any, path: Any, kwargs: Mapping[str, Any]) -> type:
    """``model_class``, or for an Auto class (AutoModel, ...) the class it maps the config to."""
    import transformers

    if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
        return model_class
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        raise TypeError(
            "from_pretrained: model_class must be a transformers model class (e.g. BertModel) or an "
            f"Auto class (e.g. AutoModel), got {model_class!r}"
        )
    config = kwargs.get("config")
    if not isinstance(config, transformers.PretrainedConfig):
        names = (
            "cache_dir",
            "force_download",
            "local_files_only",
            "token",
            "revision",
            "subfolder",
            "trust_remote_code",
        )
        config = transformers.AutoConfig.from_pretrained(config or path, **{k: kwargs[k] for k in names if k in kwargs})
    try:
        return mapping[type(config)]
    except KeyError:
        raise ValueError(
            f"from_pretrained: {model_class.__name__} has no model class for {type(config).__name__}"
        ) from None


def _prefix_resolver(model: nn.Module) -> Callable[[str], str | None]:
    """Checkpoint prefix -> module path, stripping or adding ``base_model_prefix`` as
    transformers does (a BertModel loads a BertForMaskedLM checkpoint and the reverse)."""
    paths = {name for name, _ in model.named_modules(remove_duplicate=False)}
    base = getattr(model, "base_model_prefix", "") or ""

    def resolve(prefix: str) -> str | None:
        if prefix in paths:
            return prefix
        if base and prefix.startswith(f"{base}.") and prefix[len(base) + 1 :] in paths:
            return prefix[len(base) + 1 :]
        return f"{base}.{prefix}" if base and f"{base}.{prefix}" in paths else None

    return resolve


def _untie_sao_layers(model: nn.Module) -> None:
    """Drop transformers' tied-weight entries naming a tensor the model no longer has (e.g.
    ``lm_head.weight`` once ``lm_head`` is an SAO layer): the saved model was not tied there."""
    for module in model.modules():
        tied = getattr(module, "all_tied_weights_keys", None)
        if tied:
            names = {k for k, _ in module.named_parameters(remove_duplicate=False)}
            names |= {k for k, _ in module.named_buffers(remove_duplicate=False)}
            for target, source in list(tied.items()):
                if target not in names or source not in names:
                    del tied[target]


def _tolerate_sao_children_in_init(model: nn.Module) -> list[nn.Module]:
    """transformers initialises every module after loading (the tensor-level guards skip
    loaded tensors), and some ``_init_weights`` read a child's dense weight directly (GPT-2:
    ``module.c_proj.weight``).  Where that child is now an SAO layer, loaded from the
    checkpoint, the AttributeError is ignored for that module: nothing of it is left to
    initialise there (GPT-2's line is the last of its ``_init_weights``).  Returns the
    models whose ``_init_weights`` was wrapped (undone by :func:`_restore_init`)."""
    wrapped = []
    for sub in model.modules():
        init = getattr(sub, "_init_weights", None)
        if init is None or "_init_weights" in sub.__dict__:
            continue

        def tolerant(module, _init=init):
            try:
                _init(module)
            except AttributeError:
                if not any(isinstance(c, (SAOLinear, SAOConv2d)) for c in module.children()):
                    raise

        sub._init_weights = tolerant
        wrapped.append(sub)
    return wrapped


def _restore_init(wrapped: list[nn.Module]) -> None:
    for sub in wrapped:
        sub.__dict__.pop("_init_weights", None)


def _config_without_sao_block(config_class: type, done: dict[str, Any]) -> type:
    """A throwaway subclass of ``config_class`` whose ``from_pretrained`` takes the SAO block
    out of the loaded config (into ``done["block"]``): transformers would otherwise hand it
    to the quantizer that refuses plain loads (``sao_kernels.serialization.hf_config``)."""

    def load_config(cls, *args, **kwargs):
        out = config_class.from_pretrained.__func__(cls, *args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        block = sao_block(config)
        if block is not None:
            done["block"] = block
            del config.quantization_config
        return out

    return type(
        config_class.__name__,
        (config_class,),
        {
            "from_pretrained": classmethod(load_config),
            "__module__": config_class.__module__,
            "__qualname__": config_class.__qualname__,
        },
    )


def from_pretrained(
    model_class: Any, pretrained_model_name_or_path: Any = None, *model_args: Any, **kwargs: Any
) -> Any:
    """``model_class.from_pretrained(...)`` for a checkpoint saved from a model with SAO layers.

    >>> model = sk.from_pretrained(BertModel, "saved/")   # after model.save_pretrained("saved/")

    Takes transformers' ``from_pretrained`` arguments (dtype, subfolder, revision, variant,
    config, state_dict, output_loading_info, ...) and returns an instance of
    ``model_class`` (an Auto class is resolved to its model class).  transformers builds
    the model (on the meta device) and resolves the checkpoint files; then the modules the
    checkpoint holds SAO layers for are swapped for empty SAO layers of the stored shapes,
    with the checks of :func:`load_sparse_state_dict`, and transformers loads every tensor as
    usual.  Tied weights whose target became an SAO layer are left untied.

    Needs transformers >= 5 (``pip install "sao_kernels[hf]"``).
    """
    try:
        import transformers
    except ImportError as err:
        raise ImportError('sao_kernels.from_pretrained needs transformers: pip install "sao_kernels[hf]"') from err
    model_class = _concrete_class(model_class, pretrained_model_name_or_path, kwargs)
    load = getattr(model_class, "_load_pretrained_model", None)
    unsupported = f"transformers {transformers.__version__} is not supported: sao_kernels needs transformers >= 5"
    if load is None or int(transformers.__version__.split(".")[0]) < 5:  # 4.x loads differently (no meta init)
        raise RuntimeError(f"from_pretrained: {unsupported}")
    done: dict[str, Any] = {}

    def load_with_sao_layers(model, state_dict, checkpoint_files, *args, **kw):
        # The model is built and the checkpoint resolved, no tensor is read yet: the one
        # point where the modules can be swapped.
        if state_dict is not None:
            source = Source.from_state_dict(state_dict, "from_pretrained: state_dict")
        elif checkpoint_files:
            source = Source.from_files(checkpoint_files)
        else:
            raise ValueError("from_pretrained: transformers found neither a state dict nor checkpoint files")
        done["plan"] = plan = plan_swap(model, source, _prefix_resolver(model))
        done["layers"] = apply_swap(model, plan)
        _untie_sao_layers(model)
        # transformers initialises the missing tensors after this returns: undone below
        done["wrapped"] = _tolerate_sao_children_in_init(model) if done["layers"] else []
        return load(model, state_dict, checkpoint_files, *args, **kw)

    config_class = model_class.config_class
    hooked = type(
        model_class.__name__,
        (model_class,),
        {
            "_load_pretrained_model": staticmethod(load_with_sao_layers),
            "config_class": _config_without_sao_block(config_class, done),
            "__module__": model_class.__module__,
            "__qualname__": model_class.__qualname__,
        },
    )
    if isinstance(kwargs.get("config"), transformers.PretrainedConfig) and sao_block(kwargs["config"]) is not None:
        config = kwargs["config"] = copy.deepcopy(kwargs["config"])
        done["block"] = sao_block(config)
        del config.quantization_config
    want_info = kwargs.pop("output_loading_info", False)
    register_quantizer()
    try:
        model, info = hooked.from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
    finally:
        _restore_init(done.get("wrapped", []))
    model.__class__ = model_class  # the subclass only hooked the load
    if type(model.config) is not config_class and isinstance(model.config, config_class):
        model.config.__class__ = config_class
    if done.get("block") is not None:  # kept for the next save_pretrained
        model.config.quantization_config = done["block"]
    if "plan" not in done:
        raise RuntimeError(
            f"from_pretrained: the checkpoint was not loaded through _load_pretrained_model; {unsupported}"
        )
    plan = done["plan"]
    missing = set(info.get("missing_keys", ())) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())
    }
    not_loaded = sorted(
        f"{paths[0]}.{leaf}"
        for paths in plan.paths.values()
        for leaf in SAO_KEYS
        if all(f"{p}.{leaf}" in missing for p in paths)
    )  # a shared module loads through any path
    if not_loaded:
        raise ValueError(f"from_pretrained: {', '.join(not_loaded)} were not loaded from the checkpoint")
    # SAO keys that transformers reports as unexpected are fine (e.g. a head this model does
    # not have) unless they were meant for a dense layer of the model (e.g. after a renaming).
    by_path, resolve = dict(model.named_modules(remove_duplicate=False)), _prefix_resolver(model)
    for key in sorted(info.get("unexpected_keys", ())):
        prefix, _, leaf = key.rpartition(".")
        path = resolve(prefix)
        module = by_path.get(path) if path is not None else None
        dense = module is not None and replaceable(module) and not isinstance(module, (SAOLinear, SAOConv2d))
        if leaf in SAO_KEYS and dense:
            raise ValueError(
                f"from_pretrained: the checkpoint's SAO layer {prefix!r} was not put in: {key} is "
                f"unexpected and {path!r} is still a dense {type(by_path[path]).__name__}"
            )
    for key, layer in done["layers"].items():
        if layer.values.is_meta:  # offloaded to disk by a device_map
            continue
        try:  # transformers sets the tensors directly, past the layer's own load-time checks
            layer.blocks()
        except (TypeError, ValueError) as err:
            raise ValueError(f"from_pretrained: {plan.paths[key][0]!r} is not a valid SAO layer: {err}") from err
    return (model, info) if want_info else model
