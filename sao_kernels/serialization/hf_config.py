"""The SAO block of a transformers config: a converted model's ``config.json`` says that its
checkpoint holds SAO layers, so that transformers' plain ``from_pretrained`` fails clearly
instead of building dense layers with random weights.

The block is written where transformers looks for pre-quantised checkpoints,
``config.quantization_config = {"quant_method": "sao_kernels", ...}``.  While sao_kernels is
imported (with transformers), a quantizer registered under that name refuses the plain load
with a message naming ``sao_kernels.from_pretrained``, which reads the block and loads the
checkpoint as usual.  Without sao_kernels imported, transformers logs "Unknown quantization
type, got sao_kernels ... we will skip the quantization" (its own handling of unknown
methods) and loads dense layers.  Nothing here imports transformers: it is used only when
the caller already has it (a transformers model, ``sk.from_pretrained``).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["QUANT_METHOD", "mark_config", "sao_block"]

QUANT_METHOD = "sao_kernels"
_REGISTERED: list[bool] = []


def sao_block(config: Any) -> dict | None:
    """The config's SAO block, or None."""
    block = getattr(config, "quantization_config", None)
    if isinstance(block, dict) and block.get("quant_method") == QUANT_METHOD:
        return block
    if getattr(block, "quant_method", None) == QUANT_METHOD:
        return block.to_dict()
    return None


def _is_hf_config(config: Any) -> bool:
    mod = sys.modules.get("transformers")
    return mod is not None and isinstance(config, mod.PretrainedConfig)


def mark_config(model: Any, converted: int) -> None:
    """Write the SAO block into ``model.config`` (a transformers model with SAO layers);
    ``converted``: how many layers this call converted (added to a block already there)."""
    config = getattr(model, "config", None)
    if not _is_hf_config(config):
        return
    if getattr(config, "quantization_config", None) is not None and sao_block(config) is None:
        return  # a genuinely quantised model: its own block stays
    before = (sao_block(config) or {}).get("converted_layers", 0)
    config.quantization_config = {
        "quant_method": QUANT_METHOD,
        "format": "grouped_block (values, in_index, out_index per layer)",
        "converted_layers": before + converted,
        "load_with": f"sao_kernels.from_pretrained({type(model).__name__}, path)",
    }
    register_quantizer()


def register_quantizer() -> None:
    """Register the "sao_kernels" quantization method with transformers (once): a plain
    ``from_pretrained`` of a checkpoint carrying the SAO block raises a ValueError naming
    ``sao_kernels.from_pretrained``."""
    if _REGISTERED or "transformers" not in sys.modules:
        return
    from transformers.quantizers import HfQuantizer, register_quantization_config
    from transformers.quantizers import register_quantizer as register
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class SAOConfig(QuantizationConfigMixin):
        def __init__(self, **kwargs):
            self.quant_method = QUANT_METHOD
            for key, value in kwargs.items():
                setattr(self, key, value)

    class SAORefusingQuantizer(HfQuantizer):
        requires_calibration = False

        def validate_environment(self, *args, **kwargs):
            how = getattr(self.quantization_config, "load_with", "sao_kernels.from_pretrained(ModelClass, path)")
            raise ValueError(
                "This checkpoint holds sao_kernels SAO sparse layers (its config.json has quantization_config."
                "quant_method='sao_kernels'); transformers' from_pretrained would build dense layers with random "
                f"weights in their place. Load it with {how} (import sao_kernels as sk; sk.from_pretrained(...))."
            )

        def is_serializable(self, *args, **kwargs):
            return False

        @property
        def is_trainable(self):
            return False

    try:
        register_quantization_config(QUANT_METHOD)(SAOConfig)
        register(QUANT_METHOD)(SAORefusingQuantizer)
    except ValueError:  # already registered (e.g. a reloaded module)
        pass
    _REGISTERED.append(True)
