"""How much memory a benchmark selection needs, checked before anything is allocated.

``python -m sao_kernels bench --tokens 99999999999`` used to end in the allocator's traceback
(800 TB requested); the CLI now estimates the peak of the whole selection up front and exits
2 with the estimate and the limit.  The estimate is an upper bound of what the sweep keeps
alive at once: the jobs run one after another, so the peak is that of the largest job, which
holds its inputs, the dense baseline, every candidate (weights, and after its first
forward + backward the gradients of its input and weights) and the temporaries of one call.

The limit is ``MEMORY_FRACTION`` of what is free: ``MemAvailable`` of /proc/meminfo (else
``os.sysconf``'s available pages) for the host, ``torch.cuda.mem_get_info`` for a GPU.
"""

from __future__ import annotations

import os

import torch

MEMORY_FRACTION = 0.75
# What the allocator and the libraries add to the live tensors (freed blocks kept for reuse,
# GEMM packing buffers, sparse-format conversions): the resident peak measured on the
# shapes of tests/cli/test_cli_limits.py was 0.7 - 1.3 x the tensors counted here (2026-12-06).
SLACK = 2.0
# The bootstrap of one speed-up interval (timing.speedup): resamples x rounds indices and
# resampled times, and np.median's copies; 45 MiB measured at 2000 x 1000 (24 B each).
BOOTSTRAP_BYTES_PER_SAMPLE = 48
INDEX_BYTES = 8  # int64 index maps
GiB = 2**30


class MemoryLimitError(ValueError):
    """The selection would not fit; the message gives the estimate and the limit."""


def available_bytes(device: str = "cpu") -> tuple[int, str] | None:
    """(bytes free on ``device``, where that number comes from), or None if unknown."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free, "free GPU memory (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available pages (os.sysconf)"
    except (ValueError, OSError, AttributeError):
        return None


def linear_job_bytes(op: str, T: int, f: int, itemsize: int, cands: list[tuple[int, int, str]]) -> tuple[int, int]:
    """(device bytes, host bytes) of one linear sweep job: (T, f) inputs on an f x f layer
    with the (G, block_size, backend) candidates ``cands``."""
    act, weight = T * f * itemsize, f * f * itemsize
    bwd = op == "linear_fwd_bwd"
    total = 2 * act + weight + f * itemsize  # x, dy, the dense weight, the bias
    total += (act + weight) if bwd else 0  # the dense baseline's input and weight grads
    for G, _, backend in cands:
        total += weight // G + 2 * f * INDEX_BYTES  # the candidate's blocks and index maps
        if backend == "bsr":
            total += weight // G + 2 * f * INDEX_BYTES  # its BSR copy
        if bwd:
            total += act + weight // G  # its input and values grads (kept until the next call)
    # one call's temporaries: the composite's gathered input and its contiguous copy, grouped and
    # scattered outputs, the bias add, the dense output; a masked dense weight and its grad
    total += 6 * act + 2 * weight
    return total, max(T, f) * f * 4  # inputs are drawn in float32 on the host


def conv_job_bytes(op: str, B: int, c: int, H: int, k: int, itemsize: int, cands: list) -> tuple[int, int]:
    """(device bytes, host bytes) of one conv sweep job (B, c, H, H) with a c -> c k x k conv."""
    act, weight = B * c * H * H * itemsize, c * c * k * k * itemsize
    bwd = op.endswith("_bwd")
    total = 2 * act + weight + (act + weight if bwd else 0)
    for G, _, _ in cands:
        total += weight // G + 2 * c * INDEX_BYTES + ((act + weight // G) if bwd else 0)
    total += 4 * act + act * k * k + 2 * weight  # one call: output, im2col buffer, gathered input, masked weight
    return total, B * c * H * H * 4


def sweep_bytes(cfg, jobs) -> dict[str, int]:
    """Peak bytes per device type ('cpu' for the host) of ``run_sweep(cfg)`` whose plan is
    ``jobs`` (``sweep.plan(cfg)[0]``)."""
    device = host = 0
    for job, cands in jobs:
        s = getattr(torch, job.dtype).itemsize
        if job.op.startswith("linear"):
            d, h = linear_job_bytes(job.op, job.tokens, job.width, s, cands)
            if cfg.roofline:  # the peak probes run while the job's tensors are alive
                n = 8192 if cfg.device == "cuda" else 512
                d += 3 * n * n * s + 2 * (256 if cfg.device == "cuda" else 16) * 2**20
        else:
            d, h = conv_job_bytes(job.op, cfg.conv_batch, job.width, cfg.conv_size, cfg.conv_kernel, s, cands)
        device, host = max(device, d), max(host, h)
    host += timing_bytes(cfg.timing().max_rounds)
    if cfg.device == "cpu":
        return {"cpu": int(SLACK * (device + host))}
    return {cfg.device: int(SLACK * device), "cpu": int(SLACK * host)}


def timing_bytes(max_rounds: int) -> int:
    """Host bytes of the speed-up intervals of one comparison (computed one at a time)."""
    from .timing import BOOTSTRAP_RESAMPLES

    return BOOTSTRAP_BYTES_PER_SAMPLE * BOOTSTRAP_RESAMPLES * max_rounds


def small_width_bytes(
    widths, tokens, groups, dtypes, depth: int, depth_width: int, depth_tokens: int, depth_groups, max_rounds: int
):
    """Peak host bytes of ``cases.small_width_suite`` with these settings (``max_rounds``: of
    its timing settings)."""
    peak = 0
    for dtype in dtypes:
        s = getattr(torch, dtype).itemsize
        for w in widths:
            for T in tokens:
                weight, act = w * w * s, T * w * s
                # every layer (dense and one per G): weights, grads, its grad_out, input grad
                layers = (1 + len(groups)) * (2 * weight + 2 * act) + sum(2 * weight // G for G in groups)
                peak = max(peak, layers + act + 4 * act + 2 * weight)
        if depth:
            weight, act = depth_width * depth_width * s, depth_tokens * depth_width * s
            models = depth * (2 * weight + sum(2 * weight // G for G in depth_groups) * 2)
            peak = max(peak, models + 3 * depth * act + act)  # saved activations of one step
    return {"cpu": int(SLACK * (peak + timing_bytes(max_rounds)))}


def _gib(nbytes: int) -> str:
    if nbytes >= GiB / 10:
        return f"{nbytes / GiB:,.1f} GiB"
    return f"{nbytes / 2**20:,.1f} MiB" if nbytes >= 2**20 / 10 else f"{nbytes:,} B"


def check_fits(needed: dict[str, int], what: str, fraction: float = MEMORY_FRACTION) -> None:
    """Raise :class:`MemoryLimitError` when ``needed`` (bytes per device type) exceeds
    ``fraction`` of what is available there."""
    for device, nbytes in needed.items():
        avail = available_bytes(device)
        if avail is None:
            continue
        free, source = avail
        limit = int(fraction * free)
        if nbytes > limit:
            where = "host" if device == "cpu" else device
            raise MemoryLimitError(
                f"{what} needs about {_gib(nbytes)} of {where} memory, more than the limit of "
                f"{_gib(limit)} ({100 * fraction:.0f}% of the {_gib(free)} {source}); "
                "choose fewer or smaller --tokens / --features / --groups / conv sizes"
            )
