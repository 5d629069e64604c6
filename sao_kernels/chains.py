"""SAO chains: ``fuse_chains(model)`` fuses each ``SAOLinear`` with the elementwise activation
after it, and folds the permutations between consecutive SAO layers.

Two rewrites, inside every ``nn.Sequential`` of the model (where the output of a layer goes to
the next module only, so both are safe):

* **Activation fusion.**  ``SAOLinear`` followed by ``nn.Tanh`` / ``nn.ReLU`` / ``nn.GELU()``
  (``approximate="none"``) becomes one ``FusedSAOLinear`` running
  ``torch.ops.sao_kernels.linear_act`` (tanh, ReLU and, without a gradient, GELU in the native
  kernels' epilogue; one autograd node; see ``ops/linear_act.py``), and the activation module becomes ``nn.Identity``.
* **Permutation folding.**  Between consecutive SAO layers i and i+1, layer i's ``out_index``
  (where its group-ordered results go) and layer i+1's ``in_index`` (where its groups read)
  compose into one permutation: layer i writes its output straight into layer i+1's group
  order (``out_index' = inverse(in_index_{i+1})[out_index_i]``, bias gathered to match), and
  layer i+1 reads it in place (no gather).  An elementwise activation between them commutes
  with the permutation.  ``fold="auto"`` folds where both maps are permutations (the fold
  removes one of the two); ``SAOLinear``'s square layers have an identity ``out_index``
  (the smaller dimension, or either when equal, uses contiguous groups: ``init.py``), so
  there the fold would only move the gather of layer i+1 into layer i's store: "auto"
  leaves them, "always" folds them anyway.

Nothing is copied: the fused modules hold the same ``values``, ``bias`` and index tensors
(optimisers keep their references) and the state_dict keeps its keys and values (the folded
map is computed from the stored ones at each call, so it never goes stale).  Left unfused:
layers with forward hooks or parametrizations, subclasses, modules used twice, GELU with
``approximate="tanh"``; ``strict=True`` raises instead, naming the layer and the reason.
On CUDA and without the native extension, ``linear_act`` runs the unfused ops (the torch
composite); the fold applies on every device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .functional import sao_linear, sao_linear_act
from .layers import SAOLinear

__all__ = ["FOLD_MODES", "FusedSAOLinear", "fuse_chains"]

FOLD_MODES = ("auto", "always", "never")


class FusedSAOLinear(SAOLinear):
    """An ``SAOLinear`` that also applies ``fused_activation`` ("tanh", "relu", "gelu" or None)
    and may exchange its activations in group order with its neighbours (made by
    :func:`fuse_chains`; same parameters and state_dict as the layer it replaces).

    ``input_grouped``: the input arrives in this layer's group order (the previous layer
    folded ``in_index`` into its output), so no gather.  ``fold_next`` (read-only): the SAO
    layer this one writes in group order for, or None."""

    fused_activation: Optional[str]
    input_grouped: bool

    @property
    def fold_next(self) -> Optional[SAOLinear]:
        return self.__dict__.get("_fold_next")

    def forward(self, x: Tensor) -> Tensor:
        in_index = None if self.input_grouped else self.in_index
        out_index, bias = self.out_index, self.bias
        nxt = self.__dict__.get("_fold_next")
        if nxt is not None:
            perm = nxt.in_index  # y'[:, k] = y[:, perm[k]]: the next layer's group order
            inv = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.shape[0], device=perm.device))
            out_index = inv.index_select(0, out_index)
            bias = None if bias is None else bias.index_select(0, perm)
        if self.fused_activation is None:
            return sao_linear(x, self.values, in_index, out_index, bias, self.block_size)
        return sao_linear_act(x, self.values, in_index, out_index, bias, self.block_size, self.fused_activation)

    def extra_repr(self) -> str:
        fold = ", input_grouped=True" if self.input_grouped else ""
        fold += ", output in the next layer's group order" if self.fold_next is not None else ""
        return f"{super().extra_repr()}, fused_activation={self.fused_activation!r}{fold}"


def _activation_name(module: nn.Module) -> tuple[Optional[str], str]:
    """(name for linear_act, or None; why not)."""
    if type(module) is nn.Tanh:
        return "tanh", ""
    if type(module) is nn.ReLU:
        return "relu", ""
    if type(module) is nn.GELU:
        if module.approximate == "none":
            return "gelu", ""
        return None, f"nn.GELU(approximate={module.approximate!r}) (fused: approximate='none' only)"
    return None, f"{type(module).__name__} is not a fusable activation (nn.Tanh, nn.ReLU, nn.GELU)"


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _why_not_layer(module: nn.Module, uses: dict) -> str:
    if type(module) is FusedSAOLinear:
        return "already fused"
    if type(module) is not SAOLinear:
        return f"{type(module).__name__} is not exactly SAOLinear (a subclass or a parametrized layer)"
    if _hooked(module):
        return "it has forward / backward hooks, which would see the fused output"
    if uses.get(id(module), 0) > 1:
        return "the module is used more than once in the model"
    return ""


def _as_fused(layer: SAOLinear, activation: Optional[str]) -> FusedSAOLinear:
    """A FusedSAOLinear sharing ``layer``'s parameters, buffers and attributes."""
    if type(layer) is FusedSAOLinear:
        if activation is not None:
            layer.fused_activation = activation
        return layer
    fused = FusedSAOLinear.__new__(FusedSAOLinear)
    fused.__dict__.update(layer.__dict__)
    fused.fused_activation = activation
    fused.input_grouped = False
    fused.__dict__["_fold_next"] = None
    return fused


def _is_identity(index: Tensor) -> bool:
    return bool(torch.equal(index.cpu(), torch.arange(index.shape[0])))


def fuse_chains(model: nn.Module, *, fold: str = "auto", strict: bool = False) -> nn.Module:
    """Fuse the SAO chains of ``model`` in place and return it (see the module docstring).

    Args:
        model: any nn.Module; the pass rewrites the ``nn.Sequential`` containers in it.
        fold: "auto" (fold where both maps are permutations), "always" or "never".
        strict: raise a ValueError for an ``SAOLinear`` followed by an activation that is left
            unfused, instead of leaving it.

    The fused model computes what the unfused one does (to the rounding of the dtype) and has
    the same state_dict; ``torch.compile`` works on it (the fused op traces as its composite).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_chains: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(fold, str) or fold not in FOLD_MODES:
        raise ValueError(f"fuse_chains: fold={fold!r} is not supported; allowed: {', '.join(map(repr, FOLD_MODES))}")
    if not isinstance(strict, bool):
        raise TypeError(f"fuse_chains: strict must be a bool, got {type(strict).__name__}")
    uses: dict = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    for seq_name, seq in list(model.named_modules()):
        if type(seq) is nn.Sequential:
            _fuse_sequential(seq_name, seq, uses, fold, strict)
    return model


def _fuse_sequential(seq_name: str, seq: nn.Sequential, uses: dict, fold: str, strict: bool) -> None:
    names = list(seq._modules)
    # 1. activation fusion
    for i in range(len(names) - 1):
        layer, act = seq._modules[names[i]], seq._modules[names[i + 1]]
        if not isinstance(layer, SAOLinear):
            continue
        kind, why = _activation_name(act)
        if kind is None and type(act) not in (nn.Tanh, nn.ReLU, nn.GELU):
            continue  # not an activation: not a chain
        why = why or _why_not_layer(layer, uses)
        if not why and (_hooked(act) or uses.get(id(act), 0) > 1):
            why = "the activation module has hooks or is used more than once"
        if why:
            if strict and why != "already fused":
                where = f"{seq_name}.{names[i]}" if seq_name else names[i]
                raise ValueError(f"fuse_chains: cannot fuse {where!r} with the activation after it: {why}")
            continue
        seq._modules[names[i]] = _as_fused(layer, kind)
        seq._modules[names[i + 1]] = nn.Identity()
    if fold == "never":
        return
    # 2. folding between consecutive SAO layers (identities between them skipped)
    layers = [(i, m) for i, m in enumerate(seq._modules.values()) if not isinstance(m, nn.Identity)]
    for (_, first), (j, second) in zip(layers, layers[1:]):
        if not isinstance(first, FusedSAOLinear) or not isinstance(second, SAOLinear):
            continue
        if first.fold_next is not None or first.out_features != second.in_features:
            continue
        if _why_not_layer(second, uses) not in ("", "already fused"):
            continue
        if fold == "auto" and (_is_identity(first.out_index) or _is_identity(second.in_index)):
            continue
        second = _as_fused(second, None)
        seq._modules[names[j]] = second
        second.input_grouped = True
        first.__dict__["_fold_next"] = second
