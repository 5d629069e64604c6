"""sao_kernels: Sparsity-Aware Orthogonal (SAO) sparse layers that are genuinely fast.

SAO (Esguerra et al., IEEE Access 11, 2023, doi 10.1109/ACCESS.2023.3295344) gives each
layer a permuted block-diagonal topology with orthogonal blocks.  This package builds it
exactly as the paper does, stores it in a compact grouped block format and runs it as
registered torch ops (``torch.ops.sao_kernels.*``) that do 1/G of the dense work.
"""

from importlib import metadata as _metadata

from . import (
    cpu,  # first: a bad SAO_KERNELS_CPU_ISA fails here, before anything loads
    diagnostics,
    format,
    init,
    ops,
    parametrizations,
    pruning,
    sizes,
)
from ._extension import NativeExtensionWarning
from .chains import FusedSAOLinear, fuse_chains
from .conversion import ReinitializedWarning, conversion_summary, convert
from .convert_plan import ConversionRow, ConversionSummary
from .convert_registry import SAOSettings, register_conversion
from .cpu import cpu_info, cpu_tier
from .dispatch import backend
from .format import GroupedBlockFormat
from .functional import sao_conv2d, sao_linear, sao_linear_act
from .init import DisconnectedTilesWarning, sao_blocks
from .layers import SAOConv2d, SAOLinear
from .parametrizations import orthogonal_blocks
from .serialization import from_pretrained, load_sparse_state_dict
from .sizes import resolve_sizes, valid_groups, valid_sparsities
from .weight_cache import frozen_weights, weight_cache_stats


def __getattr__(name: str):
    """``sk.report`` / ``sk.Report`` live in the tooling (sao_kernels.cli.layer_report, which
    pulls in the benchmark harness): imported on first use, so ``import sao_kernels`` loads the
    runtime only."""
    if name in ("report", "Report"):
        from .cli import layer_report

        return getattr(layer_report, name)
    raise AttributeError(f"module 'sao_kernels' has no attribute {name!r}")


try:  # the one version number is pyproject.toml's, read from the installed metadata
    __version__ = _metadata.version("sao_kernels")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DisconnectedTilesWarning",
    "GroupedBlockFormat",
    "NativeExtensionWarning",
    "ConversionRow",
    "ConversionSummary",
    "ReinitializedWarning",
    "SAOSettings",
    "Report",
    "diagnostics",
    "report",
    "SAOConv2d",
    "SAOLinear",
    "backend",
    "conversion_summary",
    "cpu",
    "cpu_info",
    "cpu_tier",
    "convert",
    "register_conversion",
    "from_pretrained",
    "load_sparse_state_dict",
    "format",
    "init",
    "pruning",
    "ops",
    "orthogonal_blocks",
    "parametrizations",
    "sao_blocks",
    "sao_conv2d",
    "sao_linear",
    "sao_linear_act",
    "FusedSAOLinear",
    "fuse_chains",
    "sizes",
    "resolve_sizes",
    "valid_groups",
    "valid_sparsities",
    "frozen_weights",
    "weight_cache_stats",
    "__version__",
]

# A process that already has transformers gets the "sao_kernels" quantization method now, so
# that transformers' plain from_pretrained refuses SAO checkpoints clearly (see serialization.hf_config).
from .serialization.hf_config import register_quantizer as _register_quantizer  # noqa: E402

_register_quantizer()
