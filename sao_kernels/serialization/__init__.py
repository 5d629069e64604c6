"""Saving and loading sparse models: the state dict format of SAO layers, safetensors and
``.bin`` files, and the Hugging Face transformers round trip.

    checkpoint   what a checkpoint holds per SAO layer (the keys, LayerSpec) and Source: the
                 names / shapes / dtypes of a state dict's or of files' tensors (safetensors
                 headers, ``.bin`` memory-mapped), each tensor read on demand
    swap         which dense modules become which SAO layers (plan_swap, all checks first)
                 and the swap itself (apply_swap)
    state_dict   load_sparse_state_dict: a saved SAO model back into its dense model code
    hf           from_pretrained: the same inside transformers' ``from_pretrained``
    hf_config    the SAO block of a transformers config (``quantization_config``)

Saving needs nothing of this package: ``torch.save(model.state_dict())``,
``safetensors.torch.save_file`` and ``save_pretrained`` store an SAO layer's tensors as
they are.
"""

from .hf import from_pretrained
from .hf_config import QUANT_METHOD, sao_block
from .state_dict import SAO_KEYS, load_sparse_state_dict

__all__ = ["QUANT_METHOD", "SAO_KEYS", "from_pretrained", "load_sparse_state_dict", "sao_block"]
