"""Small built-in models for ``sao-kernels report`` (and their example inputs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn


def mlp(width: int = 1024, depth: int = 4, tokens: int = 256) -> tuple[nn.Module, torch.Tensor]:
    """A plain tanh MLP of ``depth`` square layers; input (tokens, width)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers), torch.randn(tokens, width)


def cnn(channels: int = 64, depth: int = 4, size: int = 32, batch: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A plain 3x3 CNN (stem from 16 channels, ``depth`` square convs, pooled linear head)."""
    layers: list[nn.Module] = [nn.Conv2d(16, channels, 3, padding=1), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 16)]
    return nn.Sequential(*layers), torch.randn(batch, 16, size, size)


def transformer_block(
    d_model: int = 512, nhead: int = 8, tokens: int = 128, batch: int = 4
) -> tuple[nn.Module, torch.Tensor]:
    """nn.TransformerEncoderLayer (FFN 4x, no dropout); input (batch, tokens, d_model)."""
    layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.0, batch_first=True)
    return layer, torch.randn(batch, tokens, d_model)


BUILTIN: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer-block": transformer_block,
}


def load_model(spec: str) -> tuple[nn.Module, object]:
    """A built-in name, or ``package.module:factory`` where ``factory()`` returns
    ``(model, example_inputs)`` (inputs: a tensor or a tuple of tensors).

    Raises:
        ValueError: for any spec that does not give that (unknown name, module that does not
            import, missing attribute, a factory that raises, calls sys.exit or returns something
            else, a model or inputs on the meta device); the message names the spec and what
            went wrong.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]()
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"model {spec!r} is not a built-in ({', '.join(BUILTIN)}) nor 'package.module:factory'")
    try:
        module = importlib.import_module(mod_name)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any import failure is the user's spec
        raise ValueError(f"model {spec!r}: cannot import {mod_name!r} ({type(err).__name__}: {err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {mod_name!r} has no callable {attr!r}")
    try:
        result = factory()
    except SystemExit as err:  # a factory is not a program: exiting would end the CLI silently
        raise ValueError(
            f"model {spec!r}: {attr}() called sys.exit({err.code!r}) instead of returning (model, example_inputs)"
        ) from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"model {spec!r}: {attr}() raised {type(err).__name__}: {err}") from None
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise ValueError(f"model {spec!r}: {attr}() must return (model, example_inputs), got {type(result).__name__}")
    inputs = result[1]
    tensors = (inputs,) if torch.is_tensor(inputs) else inputs
    if not isinstance(tensors, (tuple, list)) or not tensors or not all(torch.is_tensor(t) for t in tensors):
        raise ValueError(
            f"model {spec!r}: example_inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
        )
    on_meta = [n for n, t in [*result[0].named_parameters(), *result[0].named_buffers()] if t.is_meta]
    if on_meta or any(t.is_meta for t in tensors):
        where = f"its parameters / buffers ({', '.join(on_meta[:3])}{', ...' if len(on_meta) > 3 else ''})"
        raise ValueError(
            f"model {spec!r}: {where if on_meta else 'its example inputs'} are on the meta device (no data); "
            "materialise them first (e.g. module.to_empty(device='cpu') and load_state_dict)"
        )
    return result
