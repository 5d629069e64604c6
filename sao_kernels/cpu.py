"""The CPU's instruction-set tier: what the native kernels use, and what oneDNN / ATen use.

Tiers, each including the ones before it (docs/cpu_tiers.md)::

    scalar < avx2 < avx512 < avx512_bf16 < amx

* ``amx``: Xeon Sapphire Rapids and later (AMX tiles; bf16 / fp16 GEMMs on VNNI-packed B).
* ``avx512_bf16``: AVX-512 with bf16 dot products, no AMX (AMD EPYC Zen 4, Cooper Lake).
* ``avx512``: AVX-512 without bf16 (Skylake-SP, Cascade Lake, Ice Lake).
* ``avx2``: AVX2 + FMA only (older Xeons, Zen 1-3, many laptops).

``SAO_KERNELS_CPU_ISA=<tier>`` caps what the native kernels use (read once, when they first
run; a bad value raises ValueError at ``import sao_kernels``).  oneDNN and ATen have their
own caps; :func:`tier_env` gives the variables that emulate a tier for all three (and MKL),
to be set before torch loads: ``python -m sao_kernels bench --cpu-tier avx2`` re-runs itself
in a subprocess with them.
"""

from __future__ import annotations

import functools
import os
import platform

TIERS = ("scalar", "avx2", "avx512", "avx512_bf16", "amx")
ENV_VAR = "SAO_KERNELS_CPU_ISA"

# The caps of the libraries under the native kernels, per tier (tier_env).  oneDNN:
# DNNL_MAX_CPU_ISA (its ISA names); ATen's vectorised kernels: ATEN_CPU_CAPABILITY (default,
# avx2, avx512); MKL (torch's float32 GEMM): MKL_ENABLE_INSTRUCTIONS (AVX512_E3 adds bf16,
# AVX512_E4 AMX).
_LIBRARY_CAPS = {
    "scalar": {"DNNL_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"DNNL_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx512_bf16": {
        "DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512_E3",
    },
    "amx": {
        "DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512_E4",
    },
}
LIBRARY_ENV_VARS = ("DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")

# /proc/cpuinfo flags each tier needs on top of the one below it (as cpu_tier.cpp checks them).
_FLAGS = {
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_bf16", "amx_tile"),
}


def _parse(value: str | None, what: str = ENV_VAR) -> str | None:
    text = (value or "").strip().lower()
    if not text:
        return None
    if text not in TIERS:
        raise ValueError(
            f"{what}={value!r} is not a CPU tier; allowed: {', '.join(map(repr, TIERS))} (or unset: no cap)"
        )
    return text


def cap() -> str | None:
    """The tier ``SAO_KERNELS_CPU_ISA`` caps the native kernels at (None: no cap).

    Raises:
        ValueError: the variable names no tier (the message lists the allowed values).
    """
    return _parse(os.environ.get(ENV_VAR))


def check_tier(tier: str, what: str = "tier") -> str:
    """``tier`` if it names a tier, else ValueError listing the allowed values."""
    parsed = _parse(tier, what) if isinstance(tier, str) else None
    if parsed is None:
        raise ValueError(f"{what}={tier!r} is not a CPU tier; allowed: {', '.join(map(repr, TIERS))}")
    return parsed


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _native() -> bool:
    from . import _extension

    return _extension.available()


def hardware_tier() -> str:
    """The highest tier this CPU offers (the native extension's detection when it is loaded,
    which also asks oneDNN whether AMX is usable; else /proc/cpuinfo's flags)."""
    if _native():
        import torch

        return str(torch.ops.sao_kernels._cpu_tier(True))
    flags, tier = _cpu_flags(), "scalar"
    for name in TIERS[1:]:
        if not all(f in flags for f in _FLAGS[name]):
            break
        tier = name
    return tier


def cpu_tier() -> str:
    """The tier the native kernels use: the hardware tier capped by ``SAO_KERNELS_CPU_ISA``
    (read from the extension itself when it is loaded, which read the variable once)."""
    if _native():
        import torch

        return str(torch.ops.sao_kernels._cpu_tier(False))
    hw, c = hardware_tier(), cap()
    return hw if c is None else TIERS[min(TIERS.index(hw), TIERS.index(c))]


def emulable_tiers() -> tuple[str, ...]:
    """The tiers from avx2 up to this CPU's (each can be emulated here with :func:`tier_env`)."""
    hw = TIERS.index(hardware_tier())
    return tuple(t for t in TIERS[1 : hw + 1])


def tier_env(tier: str) -> dict[str, str]:
    """The environment variables that emulate ``tier`` for the native kernels, oneDNN, ATen
    and MKL; set them before torch is imported (a subprocess)."""
    tier = check_tier(tier)
    return {ENV_VAR: tier, **_LIBRARY_CAPS[tier]}


def cpu_info() -> dict:
    """What runs on this CPU: the native kernels' tier (and the hardware's, the cap), the CPU
    model, and the ISA that ATen's kernels use with the oneDNN / ATen / MKL caps in force."""
    import torch

    return {
        "model": cpu_model(),
        "tier": cpu_tier(),
        "hardware_tier": hardware_tier(),
        "cap": cap(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        **{name.lower(): os.environ.get(name) or None for name in LIBRARY_ENV_VARS},
    }


cap()  # a bad SAO_KERNELS_CPU_ISA fails at import, naming the allowed values
