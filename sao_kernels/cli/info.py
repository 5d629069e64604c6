"""``python -m sao_kernels info``: what this installation runs with, for users and bug reports.

The version, torch, the native extension (loaded, or why not), the CPU model and the ISA
tier the native kernels use, the backends usable on each device and what ``auto`` picks,
Triton and its interpreter, and the environment variables that change any of it.  ``--json``
prints the same as one JSON object.  Nothing here raises on a broken setup: what cannot be
determined is reported as such.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys

import torch

# The variables that change what runs (each documented where it is read).
ENV_VARS = (
    "SAO_KERNELS_BACKEND",
    "SAO_KERNELS_NO_EXT",
    "SAO_KERNELS_CPU_ISA",
    "SAO_KERNELS_AUTOTUNE",
    "TRITON_INTERPRET",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
)
AUTO_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _backends(device: str) -> dict:
    """The backends usable on ``device`` and what the thread's request picks per dtype."""
    from ..dispatch import BACKENDS, select, usable

    dev = torch.device(device)
    picks = {}
    for dtype in AUTO_DTYPES:
        try:
            picks[str(dtype).removeprefix("torch.")] = select(dev, dtype)
        except (RuntimeError, TypeError, ValueError) as err:  # a forced backend that cannot run here
            picks[str(dtype).removeprefix("torch.")] = f"error: {err}"
    return {"usable": [b for b in BACKENDS if b != "auto" and usable(b, dev)], "picks": picks}


def collect() -> dict:
    """Everything ``info`` reports, as a JSON-ready dict."""
    from .. import __version__, _extension
    from ..cpu import cpu_info
    from ..dispatch import requested_backend, triton_available, triton_interpreting

    try:
        requested = requested_backend()
    except ValueError as err:
        requested = f"error: {err}"
    triton_version = None
    if triton_available():
        try:
            triton_version = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            triton_version = "unknown"
    loaded = _extension.available()
    cuda = torch.cuda.is_available()
    return {
        "sao_kernels": {"version": __version__, "path": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "threads": torch.get_num_threads(),
        },
        "native_extension": {
            "loaded": loaded,
            "reason": _extension.unavailable_reason(),
            "ops_library": _extension.LIBRARY,
            "ops_library_exists": os.path.exists(_extension.LIBRARY),
        },
        "cpu": cpu_info(),
        "backends": {"requested": requested, **{d: _backends(d) for d in _devices()}},
        "triton": {"version": triton_version, "interpret": triton_interpreting()},
        "environment": {name: os.environ.get(name) for name in ENV_VARS if os.environ.get(name) is not None},
    }


def format_text(info: dict) -> str:
    """The report as aligned lines (one screen)."""
    ext, cpu, t, tri = info["native_extension"], info["cpu"], info["torch"], info["triton"]
    native = (
        f"loaded ({ext['ops_library']})"
        if ext["loaded"]
        else f"NOT loaded: {ext['reason']}; CPU tensors run the torch composite. "
        "Build it with: pip install --no-build-isolation -e ."
    )
    gpus = ", ".join(t["gpus"]) if t["gpus"] else "no CUDA device"
    cap = f", capped by SAO_KERNELS_CPU_ISA={cpu['cap']}" if cpu["cap"] else ""
    lines = [
        ("sao_kernels", f"{info['sao_kernels']['version']} ({info['sao_kernels']['path']})"),
        ("python", f"{info['python']} on {info['platform']}"),
        ("torch", f"{t['version']} (CUDA {t['cuda'] or 'none'}: {gpus}); {t['threads']} threads"),
        ("native", native),
        ("cpu", cpu["model"]),
        ("cpu tier", f"{cpu['tier']} (hardware {cpu['hardware_tier']}{cap}); ATen: {cpu['aten_capability']}"),
        ("backend", f"requested {info['backends']['requested']}"),
    ]
    for device in ("cpu", "cuda"):
        if device in info["backends"]:
            b = info["backends"][device]
            by_pick: dict[str, list[str]] = {}
            for dtype, name in b["picks"].items():
                by_pick.setdefault(name, []).append(dtype)
            picks = "; ".join(f"{', '.join(dtypes)} -> {name}" for name, dtypes in by_pick.items())
            lines.append((f"  {device}", f"usable: {', '.join(b['usable'])}; picks {picks}"))
    triton = f"{tri['version']}" if tri["version"] else "not installed"
    lines.append(("triton", f"{triton}; TRITON_INTERPRET {'on' if tri['interpret'] else 'off'}"))
    env = info["environment"]
    lines.append(("environment", ", ".join(f"{k}={v}" for k, v in env.items()) or "(none of the variables set)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def run_info(args) -> int:
    """``python -m sao_kernels info [--json]``: print the report; exit 0."""
    info = collect()
    sys.stdout.write((json.dumps(info, indent=2) if args.json else format_text(info)) + "\n")
    return 0
