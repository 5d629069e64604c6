"""Which module types ``sao_kernels.convert`` can replace, and how: a small registry.

Built in: ``nn.Linear``, ``nn.Conv2d`` and transformers' ``Conv1D`` (GPT-2's projections: a
linear layer whose weight is stored (in, out); it becomes an ``SAOLinear``).  Users add their
own types with :func:`register_conversion`.  Types are matched exactly (a subclass is not its
base: it may read its dense weight in its own forward); Conv1D is matched by its qualified
name, so transformers is not imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .layers import SAOConv2d, SAOLinear
from .sizes import resolve_sizes

__all__ = ["SAOSettings", "register_conversion"]

# (out, in) for a linear-like module, (out, in, kh, kw) for a convolution
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SAOSettings:
    """What one ``convert`` call asks for, handed to every conversion function.

    ``linear`` / ``conv2d`` build the SAO layer with these settings on the device and dtype
    of ``like`` (a module: its first floating parameter), or on the meta device in a dry run
    (``device="meta"``: nothing is drawn).
    """

    sparsity: float | None = None
    degree: int | None = None
    groups: int | None = None
    activation: str = "tanh"
    linear_init: str = "sao"
    conv_init: str = "delta"
    block_size: int = 1
    gain: float = 1.0
    generator: torch.Generator | None = None
    device: torch.device | str | None = None
    keep_weights: bool = False  # convert(keep_weights=True): fit the topology to the trained weight
    orthogonalize: bool = False

    def _common(self, like: nn.Module) -> dict:
        ref = next((p for p in like.parameters() if p.is_floating_point()), None)
        device = self.device if self.device is not None else (ref.device if ref is not None else None)
        return {
            "sparsity": self.sparsity,
            "degree": self.degree,
            "groups": self.groups,
            "activation": self.activation,
            "block_size": self.block_size,
            "gain": self.gain,
            "generator": None if torch.device(device or "cpu").type == "meta" else self.generator,
            "device": device,
            "dtype": ref.dtype if ref is not None else None,
        }

    def _kept(self, like: nn.Module, weight: torch.Tensor | None, shape: tuple[int, ...], init: str) -> nn.Module:
        # keep_weights: the topology that retains the most of the trained weight (pretrained.py)
        from .pretrained import trained_layer

        weight = getattr(like, "weight", None) if weight is None else weight
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != shape:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(
                f"keep_weights=True needs the dense weight of shape {shape} (pass weight= to the settings' "
                f"builder when the module stores it otherwise), got {got}"
            )
        if weight.is_meta:
            raise ValueError("keep_weights=True: the weight is on the meta device, there are no weights to keep")
        sizes = resolve_sizes(
            shape[0],
            shape[1],
            sparsity=self.sparsity,
            degree=self.degree,
            groups=self.groups,
            activation=self.activation,
            block_size=self.block_size,
        )
        return trained_layer(
            like,
            weight=weight,
            groups=sizes.groups,
            block_size=self.block_size,
            activation=self.activation,
            init=init,
            gain=self.gain,
            orthogonalize=self.orthogonalize,
            generator=self.generator,
        )

    def linear(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        like: nn.Module,
        weight: torch.Tensor | None = None,
    ) -> SAOLinear:
        """An SAOLinear of these settings; ValueError when the shape cannot reach them.
        With ``keep_weights`` it holds the trained ``weight`` (out, in) (default
        ``like.weight``) on its best topology; its bias is left to the caller."""
        if self.keep_weights:
            return self._kept(like, weight, (out_features, in_features), self.linear_init)
        return SAOLinear(in_features, out_features, bias, init=self.linear_init, **self._common(like))

    def conv2d(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        like: nn.Module,
    ) -> SAOConv2d:
        """An SAOConv2d of these settings; ValueError when the shape cannot reach them
        (with ``keep_weights``: ``like.weight`` kept, as :meth:`linear`)."""
        if self.keep_weights:
            kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            return self._kept(like, None, (out_channels, in_channels, kh, kw), self.conv_init)
        return SAOConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            bias,
            padding_mode,
            init=self.conv_init,
            **self._common(like),
        )


@dataclasses.dataclass(frozen=True)
class Conversion:
    """How one module type becomes an SAO layer."""

    fn: Callable[[nn.Module, SAOSettings], nn.Module | None]
    shape: Callable[[nn.Module], Shape] | None  # for the summary and for loading checkpoints
    kind: str  # "linear" / "conv2d" (what the loader rebuilds in its place), or "" (unknown)


def _keep_bias(new: nn.Module, old: nn.Module) -> nn.Module:
    if old.bias is not None:
        new.bias = old.bias  # the same Parameter: value, requires_grad, hooks and ties kept
    return new


def _linear(module: nn.Linear, s: SAOSettings) -> SAOLinear:
    return _keep_bias(s.linear(module.in_features, module.out_features, module.bias is not None, like=module), module)


def _conv2d(module: nn.Conv2d, s: SAOSettings) -> SAOConv2d:
    m = module
    new = s.conv2d(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        m.bias is not None,
        m.padding_mode,
        like=m,
    )
    return _keep_bias(new, m)


def _conv1d(module: nn.Module, s: SAOSettings) -> SAOLinear:
    # transformers' Conv1D: y = x @ weight + bias with weight (nx, nf) = (in, out), i.e. a
    # Linear(nx, nf); its forward only needs the (..., nx) -> (..., nf) contract.
    new = s.linear(module.nx, module.nf, module.bias is not None, like=module, weight=module.weight.t())
    return _keep_bias(new, module)


_BY_TYPE: dict[type, Conversion] = {
    nn.Linear: Conversion(_linear, lambda m: (m.out_features, m.in_features), "linear"),
    nn.Conv2d: Conversion(_conv2d, lambda m: (m.out_channels, m.in_channels, *m.kernel_size), "conv2d"),
}
# matched by "module.qualname" so that the library they come from is not imported here
_BY_NAME: dict[str, Conversion] = {
    "transformers.pytorch_utils.Conv1D": Conversion(_conv1d, lambda m: (m.nf, m.nx), "linear"),
}


def lookup(module: nn.Module) -> Conversion | None:
    """The conversion registered for ``type(module)`` (exact type), or None."""
    cls = type(module)
    found = _BY_TYPE.get(cls)
    return found if found is not None else _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")


def register_conversion(
    module_type: type,
    fn: Callable[[nn.Module, SAOSettings], nn.Module | None],
    *,
    shape: Callable[[nn.Module], Shape] | None = None,
    kind: str = "",
) -> None:
    """Teach :func:`sao_kernels.convert` a module type.

    ``fn(module, settings)`` returns the module's replacement, usually built with
    ``settings.linear(in, out, bias, like=module)`` or ``settings.conv2d(...)`` (the SAO
    layer of the call's sparsity / groups / init on the module's device and dtype); it
    carries over what it wants to keep (e.g. ``new.bias = module.bias``), raises ValueError
    when the shape cannot reach the requested sparsity (convert leaves the module dense with
    that reason, or raises with ``skip_invalid=False``) and may return None to leave it dense.
    ``convert`` then carries hooks, ``requires_grad`` (from ``module.weight`` if it has one)
    and train/eval mode, as for the built-in types.

    ``shape(module)`` (optional) gives the dense shape, ``(out, in)`` or ``(out, in, kh, kw)``,
    for the summary's "before" columns of a module left dense; with ``kind="linear"`` or
    ``"conv2d"`` (the layer ``fn`` returns) :func:`sao_kernels.load_sparse_state_dict` and
    :func:`sao_kernels.from_pretrained` can also put a saved SAO layer where the model has
    this type.  Registering a type again replaces its entry; ``fn=None`` removes it.
    Matching is by exact type.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"register_conversion: module_type must be an nn.Module subclass, got {module_type!r}")
    if fn is None:
        _BY_TYPE.pop(module_type, None)
        return
    if not callable(fn):
        raise TypeError(f"register_conversion: fn must be a callable (module, settings) -> module, got {fn!r}")
    if shape is not None and not callable(shape):
        raise TypeError(
            f"register_conversion: shape must be a callable module -> (out, in, ...) or None, got {shape!r}"
        )
    if kind not in ("", "linear", "conv2d"):
        raise ValueError(f"register_conversion: kind must be '', 'linear' or 'conv2d', got {kind!r}")
    if kind and shape is None:
        raise ValueError("register_conversion: kind needs shape (the loader checks the stored layer against it)")
    _BY_TYPE[module_type] = Conversion(fn, shape, kind)


def dense_shape(module: nn.Module) -> Shape | None:
    """The registered dense shape of ``module`` (out, in[, kh, kw]), for subclasses of
    nn.Linear / nn.Conv2d their base's, else None."""
    conv = lookup(module)
    if conv is not None and conv.shape is not None:
        return tuple(conv.shape(module))
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    if isinstance(module, nn.Conv2d):
        return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    return None
