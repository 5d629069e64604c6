from ._base import SAOLayerBase
from .conv import SAOConv2d
from .linear import SAOLinear

__all__ = ["SAOConv2d", "SAOLayerBase", "SAOLinear"]
