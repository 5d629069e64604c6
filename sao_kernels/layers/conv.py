"""SAOConv2d: a drop-in nn.Conv2d whose (out, in) channel mask is SAO-structured."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import is_int
from ..format import GroupedBlockFormat
from ..functional import sao_conv2d
from ..sizes import check_dim
from ._base import SAOLayerBase, check_bias_flag, pack_structured

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _int_pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair of Python ints."""

    def ok(x: object) -> bool:
        return is_int(x) and x >= minimum

    pair = (value, value) if not isinstance(value, (tuple, list, torch.Size)) else tuple(value)
    if len(pair) != 2 or not all(ok(x) for x in pair):
        hint = ""
        if name == "stride" and isinstance(value, float):  # SAOConv2d(8, 8, 3, 0.5): the 4th argument
            hint = "; sparsity, degree and groups are keyword-only (a float here is probably a sparsity)"
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}{hint}")
    return int(pair[0]), int(pair[1])


class SAOConv2d(SAOLayerBase):
    """2-D convolution with an SAO channel mask: all k x k taps of a kept (out, in) pair
    are trainable; values are stored as (G, out/G, in/G, kh, kw).

    Runs as a gather of the input channels into group order plus a grouped convolution
    (``groups=G``), so the convolution does 1/G of the dense work.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
        padding_mode: as nn.Conv2d (int or tuple; padding also "same" / "valid").
        sparsity / degree / groups: exactly one, keyword-only (see
            ``sao_kernels.valid_sparsities``).
        activation: "linear", "tanh" or "relu" (looks-linear doubling).
        init: "delta" (SAO at the centre tap), "eco" (SAO-ECO), "rg-n" or "rg-u".
        block_size, gain, generator, device, dtype: as for SAOLinear (meta device and
            deferred initialisation included).

    Memory format: as far as layout goes, ``values`` is the grouped convolution's weight
    (out, in/G, kh, kw) split as (G, out/G, ...): ``model.to(memory_format=
    torch.channels_last)`` stores it channels-last (the state_dict keeps its 5-D shape, so
    checkpoints load either way), and a memory format nn.Conv2d rejects is rejected too.
    """

    DEFAULT_INIT = "delta"
    VALUE_DIMS = 5

    def __init__(
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
        sparsity: float | None = None,
        degree: int | None = None,
        groups: int | None = None,
        activation: str = "tanh",
        init: str = "delta",
        block_size: int = 1,
        gain: float = 1.0,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
        _blocks: GroupedBlockFormat | None = None,
        _bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_dim("in_channels", in_channels)
        self.out_channels = check_dim("out_channels", out_channels)
        self.kernel_size = _int_pair("kernel_size", kernel_size, 1)
        self.stride = _int_pair("stride", stride, 1)
        self.dilation = _int_pair("dilation", dilation, 1)
        self._set_padding(padding, padding_mode)
        bias = check_bias_flag("SAOConv2d", bias)
        self._build(
            bias,
            sparsity=sparsity,
            degree=degree,
            groups=groups,
            block_size=block_size,
            activation=activation,
            init=init,
            gain=gain,
            generator=generator,
            device=device,
            dtype=dtype,
            blocks=_blocks,
            bias_tensor=_bias,
        )

    def _shape(self) -> tuple[int, int, tuple[int, int]]:
        return self.out_channels, self.in_channels, self.kernel_size

    def _default_init(self, kernel: tuple[int, int] | None) -> str:
        # "delta" needs a centre tap; ECO is defined for every kernel size.
        return "delta" if kernel is None or all(k % 2 for k in kernel) else "eco"

    def _set_padding(self, padding, padding_mode: str) -> None:
        if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
            allowed = ", ".join(map(repr, PADDING_MODES))
            raise ValueError(f"padding_mode={padding_mode!r} is not supported; allowed: {allowed}")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding={padding!r} is not supported; allowed: 'same', 'valid', an int or a pair")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
            pads = [0, 0, 0, 0]
            if padding == "same":
                for d, k, i in zip(self.dilation, self.kernel_size, range(1, -1, -1), strict=True):
                    total = d * (k - 1)
                    pads[2 * i] = total // 2
                    pads[2 * i + 1] = total - total // 2
        else:
            self.padding = _int_pair("padding", padding, 0)
            pads = [p for p in reversed(self.padding) for _ in range(2)]
        self._reversed_padding_repeated_twice = tuple(pads)

    def _apply(self, fn, recurse: bool = True):
        # ``values`` (G, a, c, kh, kw) goes through ``fn`` as the grouped convolution's 4-D
        # weight (G*a, c, kh, kw), so that Module.to(memory_format=torch.channels_last)
        # (which converts every 4-D and 5-D tensor) lays it out channels-last as it does an
        # nn.Conv2d weight, instead of failing on a 5-D tensor.  Tensor subclasses (DTensor,
        # FakeTensor, ...) go through ``fn`` unchanged.
        def as_conv_weight(t):
            if t.dim() == 5 and type(t) in (Tensor, nn.Parameter):
                G, a = t.shape[:2]
                out = fn(t.detach().flatten(0, 1))
                return out.unflatten(0, (G, a)) if isinstance(out, Tensor) and out.dim() == 4 else out
            return fn(t)

        return super()._apply(as_conv_weight, recurse)

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        return sao_conv2d(
            x,
            self.values,
            self.in_index,
            self.out_index,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            block_size=self.block_size,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", sparsity={self.sparsity:.4g}, groups={self.groups}, block_size={self.block_size}"

    @classmethod
    def from_blocks(
        cls,
        blocks: GroupedBlockFormat,
        bias: Tensor | None = None,
        *,
        stride=1,
        padding=0,
        dilation=1,
        padding_mode: str = "zeros",
        activation: str = "tanh",
        init: str | None = None,
        gain: float = 1.0,
    ) -> SAOConv2d:
        """A layer holding ``blocks`` (values (G, m/G, n/G, kh, kw) and both indices, used as
        they are: no copy), ``bias`` ((m,) or None, same dtype and device) and the given
        convolution geometry.

        ``activation`` / ``init`` / ``gain`` are what :meth:`reset_parameters` will draw
        with (``init`` None: "delta" for odd kernels, else "eco").
        """
        cls._check_blocks(blocks, bias)
        return cls(
            blocks.in_features,
            blocks.out_features,
            blocks.kernel_size,
            stride,
            padding,
            dilation,
            bias is not None,
            padding_mode,
            activation=activation,
            init=init,
            gain=gain,
            _blocks=blocks,
            _bias=bias,
        )

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: Tensor | None = None) -> SAOConv2d:
        """Pack an nn.Conv2d whose weight has an SAO channel mask (detected from its
        non-zero kernels when ``mask`` is None; a torch.nn.utils.prune pair is read from
        ``weight_orig`` / ``weight_mask``).  Grouped (groups > 1) convolutions are refused.
        The values and bias are copies; ``requires_grad`` is kept."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_dense expects an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"from_dense needs a conv with groups=1, got groups={conv.groups}")
        weight = conv.weight
        if mask is None and hasattr(conv, "weight_mask") and hasattr(conv, "weight_orig"):
            weight, mask = conv.weight_orig, conv.weight_mask
        blocks = pack_structured("SAOConv2d", weight.detach(), mask)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        layer = cls.from_blocks(
            blocks,
            bias,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            padding_mode=conv.padding_mode,
            activation="linear",
        )
        layer.values.requires_grad_(weight.requires_grad)
        if bias is not None:
            layer.bias.requires_grad_(conv.bias.requires_grad)
        return layer
