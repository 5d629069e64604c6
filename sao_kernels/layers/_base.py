"""What SAOLinear and SAOConv2d share: the compact parameters and their index buffers,
construction from a GroupedBlockFormat, the bias init, ``reset_parameters`` and a
state_dict load that validates before it writes.

The layers keep no derived state about their indices (an identity index is detected by
the ops, per index version), so ``layer.out_index.copy_(perm)``, assigning a new buffer
and ``load_state_dict`` all take effect in the next forward.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._checks import check_gain
from ..format import GroupedBlockFormat, from_dense, from_pruned
from ..init import CONV_INITS, LINEAR_INITS, sao_blocks
from ..sizes import check_activation

__all__ = ["SAOLayerBase"]


def check_bias_flag(layer: str, bias: object) -> bool:
    """``bias`` as a bool.  A float there is almost always a sparsity passed positionally
    (``SAOLinear(1024, 1024, 0.875)``): say so instead of building a layer with a bias and
    then complaining that no sparsity was given."""
    if isinstance(bias, (bool, np.bool_)):
        return bool(bias)
    if isinstance(bias, numbers.Integral) and bias in (0, 1):
        return bool(bias)
    if isinstance(bias, numbers.Real):
        raise TypeError(
            f"{layer}: bias must be a bool, got {bias!r}. A number in the bias position is probably a "
            f"sparsity: sparsity, degree and groups are keyword-only, e.g. {layer}(..., sparsity={bias!r})"
        )
    raise TypeError(f"{layer}: bias must be a bool, got {type(bias).__name__} {bias!r}")


def pack_structured(layer: str, weight: Tensor, mask: Tensor | None) -> GroupedBlockFormat:
    """``weight`` (and ``mask``) in the compact format, or a ValueError that says what
    ``from_dense`` accepts and where a trained or unstructured-pruned weight goes instead."""
    try:
        return from_dense(weight) if mask is None else from_pruned(weight, mask)
    except ValueError as err:
        source = "its non-zeros do" if mask is None else "the mask does"
        raise ValueError(
            f"{layer}.from_dense: {source} not form an SAO pattern ({err}). from_dense packs exactly what an "
            "SAO layer can hold: a weight whose non-zeros (or whose mask, e.g. torch.nn.utils.prune's weight_mask) "
            "form a row- and column-permuted block diagonal of G equal blocks, as sao_kernels.init.sao_ or an "
            "SAO layer's dense_weight() give; an unstructured pruning (prune.l1_unstructured, "
            "random_unstructured) does not. To make an SAO layer from a trained dense or pruned layer, keeping "
            "as much of its weight as the SAO structure allows, use sk.convert(model, ..., keep_weights=True)."
        ) from err


class _ParametrizationDict(nn.ModuleDict):
    """The ``parametrizations`` ModuleDict of a parametrized SAO layer.  torch's is an
    nn.ModuleDict, which refuses the key "values" (the name of its ``values()`` method,
    ``KeyError: attribute 'values' already exists``); the parametrization code reads it by
    key only (``parametrizations["values"]``), so that key is allowed here."""

    def add_module(self, name: str, module: nn.Module | None) -> None:
        if name in ("values", "keys", "items") and isinstance(module, nn.Module):
            self._modules[name] = module
        else:
            super().add_module(name, module)


class SAOLayerBase(nn.Module):
    """Holds ``values`` (the only trainable weight), the ``in_index`` / ``out_index`` buffers
    and ``bias``, and how to draw them again (``activation``, ``init``, ``gain``).

    Subclasses set ``DEFAULT_INIT``, ``VALUE_DIMS`` (3 or 5) and implement ``_shape()``:
    (out_features, in_features, kernel_size or None).
    """

    DEFAULT_INIT: str = ""
    VALUE_DIMS: int = 3

    values: nn.Parameter
    in_index: Tensor
    out_index: Tensor
    bias: nn.Parameter | None
    block_size: int
    activation: str
    init: str
    gain: float

    def _shape(self) -> tuple[int, int, tuple[int, int] | None]:
        raise NotImplementedError

    def __setattr__(self, name: str, value) -> None:
        # torch.nn.utils.parametrize installs ``module.parametrizations = ModuleDict()`` on
        # the first parametrization: see _ParametrizationDict.
        if name == "parametrizations" and type(value) is nn.ModuleDict and len(value) == 0:
            value = _ParametrizationDict()
        super().__setattr__(name, value)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling anything.
        raise TypeError(
            f"{type(self).__name__}: torch.jit.script is not supported (the SAO ops' index checks and "
            "dispatch are Python); use torch.compile(model) or torch.export.export(model, args) instead"
        )

    # ------------------------------------------------------------------ construction
    def _build(
        self,
        bias: bool,
        *,
        sparsity: float | None,
        degree: int | None,
        groups: int | None,
        block_size: int,
        activation: str,
        init: str | None,
        gain: float,
        generator: torch.Generator | None,
        device,
        dtype,
        blocks: GroupedBlockFormat | None = None,
        bias_tensor: Tensor | None = None,
    ) -> None:
        """The one construction path: draw an SAO layer of the requested sparsity / degree /
        groups, or take ``blocks`` (and ``bias_tensor``) as they are."""
        out_f, in_f, kernel = self._shape()
        init = self._default_init(kernel) if init is None else init
        if blocks is None:
            blocks = sao_blocks(
                out_f,
                in_f,
                sparsity=sparsity,
                degree=degree,
                groups=groups,
                activation=activation,
                init=init,
                kernel_size=kernel,
                block_size=block_size,
                gain=gain,
                smaller_groups="contiguous",
                generator=generator,
                device=device,
                dtype=dtype,
            )
            bias_tensor = self._draw_bias(blocks.values, generator) if bias else None
        else:
            expected = (out_f, in_f, *(kernel or ()))
            if blocks.shape != expected:
                raise ValueError(
                    f"blocks of shape {blocks.shape} given for a layer of shape {expected}; use from_blocks"
                )
            if (sparsity, degree, groups) != (None, None, None):
                raise ValueError("sparsity / degree / groups given with blocks, which fix them; use from_blocks")
            # the recipe reset_parameters() will use must at least name valid choices
            check_activation(activation)
            allowed = LINEAR_INITS if kernel is None else CONV_INITS
            if not isinstance(init, str) or init not in allowed:
                raise ValueError(f"init={init!r} is not supported; allowed: {', '.join(map(repr, allowed))}")
        self.activation, self.init, self.gain = activation, init, check_gain(gain)
        self.values = nn.Parameter(blocks.values.detach())
        self.register_buffer("in_index", blocks.in_index)
        self.register_buffer("out_index", blocks.out_index)
        self.block_size = blocks.block_size
        if bias_tensor is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias_tensor.detach())

    def _default_init(self, kernel: tuple[int, int] | None) -> str:
        return self.DEFAULT_INIT

    def _draw_bias(self, values: Tensor, generator: torch.Generator | None) -> Tensor:
        """nn.Linear's / nn.Conv2d's bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the
        dense fan_in (in_features * kh * kw), drawn in float64 on the generator's device."""
        out_f, in_f, kernel = self._shape()
        if values.is_meta:
            return torch.empty(out_f, device=values.device, dtype=values.dtype)
        bound = 1.0 / math.sqrt(in_f * (math.prod(kernel) if kernel else 1))
        u = torch.rand(
            out_f, generator=generator, dtype=torch.float64, device=generator.device if generator is not None else "cpu"
        )
        return ((2 * u - 1) * bound).to(device=values.device, dtype=values.dtype)

    @classmethod
    def _check_blocks(cls, blocks: object, bias: object) -> None:
        if not isinstance(blocks, GroupedBlockFormat):
            raise TypeError(
                f"{cls.__name__}.from_blocks: blocks must be a GroupedBlockFormat, got {type(blocks).__name__}"
            )
        if blocks.values.dim() != cls.VALUE_DIMS:
            want = "(G, m/G, n/G)" if cls.VALUE_DIMS == 3 else "(G, m/G, n/G, kh, kw)"
            raise ValueError(
                f"{cls.__name__}.from_blocks: blocks.values must have shape {want}, got {tuple(blocks.values.shape)}"
            )
        if bias is None:
            return
        v = blocks.values
        if not isinstance(bias, Tensor) or not bias.is_floating_point() or tuple(bias.shape) != (blocks.out_features,):
            got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(
                f"{cls.__name__}.from_blocks: bias must be a floating tensor of shape ({blocks.out_features},) "
                f"or None, got {got}"
            )
        if bias.device != v.device or bias.dtype != v.dtype:
            raise ValueError(
                f"{cls.__name__}.from_blocks: bias ({bias.dtype} on {bias.device}) must match blocks.values "
                f"({v.dtype} on {v.device})"
            )

    # -------------------------------------------------------------------- re-init
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw a new SAO topology, values and bias in place, as the constructor does, with
        this layer's groups, block_size, activation, init and gain, on its device and dtype.

        The tensors are written in place (optimizers and shards keep their references).
        This is the second half of deferred initialisation: build on the meta device,
        ``to_empty(device=...)``, then ``reset_parameters()``.  On the meta device it draws
        nothing.
        """
        out_f, in_f, kernel = self._shape()
        blocks = sao_blocks(
            out_f,
            in_f,
            groups=self.groups,
            activation=self.activation,
            init=self.init,
            kernel_size=kernel,
            block_size=self.block_size,
            gain=self.gain,
            smaller_groups="contiguous",
            generator=generator,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        bias = self._draw_bias(blocks.values, generator) if self.bias is not None else None
        if parametrize.is_parametrized(self, "values"):
            self.values = blocks.values  # through the parametrization's right_inverse
        else:
            self.values.copy_(blocks.values)
        self.in_index.copy_(blocks.in_index)
        self.out_index.copy_(blocks.out_index)
        if bias is not None:
            self.bias.copy_(bias)

    # ---------------------------------------------------------------- state_dict
    def _check_incoming(self, state_dict: dict, prefix: str) -> None:
        """Validate what a load would leave in this layer (incoming tensors, current ones
        where a key is absent) without touching the layer."""

        def get(name: str):
            return state_dict.get(prefix + name, getattr(self, name))

        values, in_index, out_index = get("values"), get("in_index"), get("out_index")
        if not isinstance(values, Tensor) or not values.is_floating_point():
            got = getattr(values, "dtype", type(values).__name__)
            raise ValueError(f"values must be a floating-point tensor, got {got}")
        if values.shape != self.values.shape:
            raise ValueError(
                f"values has shape {tuple(values.shape)} but the layer's is {tuple(self.values.shape)} "
                f"(G={self.groups} groups, block_size={self.block_size})"
            )
        for name, idx in (("in_index", in_index), ("out_index", out_index)):
            if not isinstance(idx, Tensor) or idx.dtype != torch.int64:
                raise ValueError(f"{name} must be an int64 tensor, got {getattr(idx, 'dtype', type(idx).__name__)}")
        if self.bias is not None and prefix + "bias" in state_dict:
            bias = state_dict[prefix + "bias"]
            m = self.bias.shape[0]
            if not isinstance(bias, Tensor) or not bias.is_floating_point() or tuple(bias.shape) != (m,):
                got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, Tensor) else type(bias).__name__
                raise ValueError(f"bias must be a floating tensor of shape ({m},), got {got}")
        # Shapes, permutation and block_size runs of the indices, by the format's own checks;
        # a zero-stride stand-in carries the values' shape without copying them.
        stand_in = torch.zeros((), device=in_index.device).expand(values.shape)
        GroupedBlockFormat(stand_in, in_index, out_index.to(in_index.device), self.block_size)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Validate first: a rejected state leaves the layer exactly as it was (torch copies
        # tensor by tensor, so checking afterwards would leave it half loaded).
        try:
            self._check_incoming(state_dict, prefix)
        except (TypeError, ValueError) as err:
            name = prefix.rstrip(".") or type(self).__name__
            raise ValueError(
                f"load_state_dict: {name} is not a valid SAO layer: {err}; the layer was left unchanged"
            ) from None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -------------------------------------------------------------------- views
    @property
    def groups(self) -> int:
        """G, the number of blocks."""
        return self.values.shape[0]

    @property
    def sparsity(self) -> float:
        """Exactly 1 - 1/G."""
        return 1.0 - 1.0 / self.groups

    def blocks(self) -> GroupedBlockFormat:
        """The layer's weight in the compact format (shares storage with ``values``)."""
        return GroupedBlockFormat(self.values.detach(), self.in_index, self.out_index, self.block_size)

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight, differentiable w.r.t. ``values``."""
        return GroupedBlockFormat(self.values, self.in_index, self.out_index, self.block_size).to_dense()
