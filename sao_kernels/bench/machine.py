"""Machine metadata for results files, the load around a run, and the contention case.

:func:`machine_meta` is the one place that says what a result was measured on: CPU / GPU
name, cores, threads, library versions, date.  :func:`recording_load` adds the load average
before and after the run and :func:`cross_core_probe` what moving data between two cores
costs then; :func:`busy_core` starts a busy-loop process pinned on one core
(issue 13's contention case: another process competing for one of the cores while timing).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    from ..cpu import cpu_model

    return cpu_model()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _optional(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - metadata must never stop a run
        return None


def _native_build() -> str | None:
    """The native extension's build line, when it is loaded (op namespace of today or of
    the pre-rework layout)."""
    if os.environ.get("SAO_KERNELS_NO_EXT", "0") == "1":
        return None
    importlib.import_module("sao_kernels._C")
    for namespace, op in (("sao_kernels", "_native_build_info"), ("sao_kernels_native", "build_info")):
        try:
            return str(getattr(getattr(torch.ops, namespace), op)())
        except (AttributeError, RuntimeError):
            continue
    return None


def _cpu_tiers() -> dict:
    from ..cpu import cpu_info

    return cpu_info()


def machine_meta(device: torch.device | str = "cpu") -> dict:
    """Device, CPU / GPU name, cores, threads, versions and date (UTC), for results files."""
    package = sys.modules.get(__name__.split(".")[0])  # already imported: this module is inside it
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_tiers": _optional(_cpu_tiers) if device.type == "cpu" else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(usable_cores()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "sao_kernels": getattr(package, "__version__", None),
        "native_build": _optional(_native_build),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }


def machine_label(meta: dict) -> str:
    """A short file-name-safe machine name, e.g. ``amd-epyc-7b13-2c`` or ``nvidia-h100-80gb-hbm3``."""
    name = meta.get("gpu") or meta.get("cpu") or "unknown"
    name = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\b\d+-core\b", " ", name, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = "-".join(slug.split("-")[:4]) or "unknown"
    if not meta.get("gpu"):
        slug += f"-{meta.get('usable_cores') or meta.get('cpu_count')}c"
    return slug


def results_stem(prefix: str, meta: dict) -> str:
    """``<prefix>_<machine>_<date>``: the name of a results file in benchmarks/results/."""
    return f"{prefix}_{meta.get('machine') or machine_label(meta)}_{meta['date'][:10]}"


# Shared over private at or above this: data moved between the two cores through something slower
# than a shared L3.  Measured on the project's 2-vCPU AMD EPYC VM (2026-12-07), 4 MiB: 1.3-1.5
# most of the time, 4.1-5.4 in the periods when the bf16 products' two-thread timings fell from
# ~0.93 to ~0.81 of torch.bmm (docs/benchmarks.md, "Two modes of a two-core VM").
CROSS_CORE_SLOW = 2.5


def cross_core_probe(mib: int = 4, rounds: int = 20) -> dict | None:
    """What data written by one core costs another to read, on the first two usable cores.

    Two threads, each pinned to one core, write half of a ``mib`` MiB buffer each and then
    read all of it ("shared": half the reads are of lines the other core wrote), against the
    same work on a private buffer per thread ("private").  Returns the medians (ms per round,
    the slower thread's; the best of two repeats) and ``ratio`` = shared / private: about 1.3-1.5
    where both cores share an L3, several times that where the lines cross between chiplets or
    sockets (as a VM's vCPUs may, from one minute to the next).  Kernels that pack an operand in
    one parallel pass and read it from every thread in the next pay that price; torch.bmm, whose
    threads work on their own blocks, hardly does.  None with fewer than two usable cores or
    where threads cannot be pinned.  numpy's copies and sums release the GIL, so the threads
    run at once."""
    import threading

    import numpy as np

    cores = usable_cores()
    if len(cores) < 2 or not hasattr(os, "sched_setaffinity") or not hasattr(threading, "get_native_id"):
        return None
    n = (mib << 20) // 8
    shared, src = np.zeros(n), np.arange(n, dtype=np.float64)
    private = [np.zeros(n), np.zeros(n)]
    barrier = threading.Barrier(2)
    best: dict[str, float] = {}

    def worker(i: int, mode: str, out: list) -> None:
        try:
            os.sched_setaffinity(threading.get_native_id(), {cores[i]})
            half = slice(i * n // 2, (i + 1) * n // 2)
            buf = shared if mode == "shared" else private[i]
            times = []
            for _ in range(rounds):
                barrier.wait()
                t0 = time.perf_counter()
                np.copyto(buf[half], src[half])
                barrier.wait()  # both halves written before anyone reads
                buf.sum()
                barrier.wait()
                times.append(time.perf_counter() - t0)
            out[i] = float(np.median(times))
        except Exception:  # noqa: BLE001 - a probe must never stop a run
            barrier.abort()

    for mode in ("shared", "private") * 2:
        out: list = [None, None]
        threads = [threading.Thread(target=worker, args=(i, mode, out)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if None in out:
            return None
        barrier.reset()
        best[mode] = min(best.get(mode, float("inf")), max(out) * 1e3)
    shared_ms, private_ms = round(best["shared"], 4), round(best["private"], 4)
    # the ratio of the recorded times, so that a results file's three numbers agree (at 1 MiB the
    # times are ~0.05 ms, and the unrounded ratio could differ from them in its second decimal)
    return {
        "cores": cores[:2],
        "mib": mib,
        "shared_ms": shared_ms,
        "private_ms": private_ms,
        "ratio": round(shared_ms / private_ms, 2),
    }


@contextlib.contextmanager
def recording_load(meta: dict) -> Iterator[dict]:
    """Store ``load_before`` / ``load_after`` (1, 5, 15 min load averages) and
    ``cross_core_before`` / ``cross_core_after`` (:func:`cross_core_probe`) in ``meta``."""
    meta["load_before"] = load_average()
    meta["cross_core_before"] = _optional(cross_core_probe)
    try:
        yield meta
    finally:
        meta["load_after"] = load_average()
        meta["cross_core_after"] = _optional(cross_core_probe)


def busy_load_note(meta: dict) -> str | None:
    """A sentence when other processes were competing for the CPU, else None: the 1-minute
    load before the run above half the usable cores, or after it above that plus the run's
    own threads (which were runnable for most of the last minute themselves)."""
    cores = meta.get("usable_cores") or meta.get("cpu_count") or 1
    if meta.get("contention"):
        return None  # the run loaded the machine on purpose
    own = meta.get("threads") or 0
    before, after = (meta[k][0] if meta.get(k) else None for k in ("load_before", "load_after"))
    others = [lo for lo in (before, None if after is None else after - own) if lo is not None]
    if others and max(others) > 0.5 * cores:
        seen = ", ".join("n/a" if x is None else f"{x:.2f}" for x in (before, after))
        return (
            f"The machine was busy: 1-minute load average {seen} (before, after) on {cores} usable cores, "
            f"of which the run's own {own} thread(s) account for at most {own} after it; expect wide spreads."
        )
    return None


def cross_core_ratios(ratios: list[float | None], digits: int = 1, unit: str = "") -> str:
    """``"1.5 / 4.6"``: probe ratios before / after something (each followed by ``unit``),
    ``n/a`` where none ran."""
    return " / ".join("n/a" if r is None else f"{r:.{digits}f}{unit}" for r in ratios)


def cross_core_note(meta: dict) -> str | None:
    """A sentence when :func:`cross_core_probe` found moving data between the cores slow before
    or after the run (ratio >= CROSS_CORE_SLOW), else None."""
    probes = [meta.get(k) for k in ("cross_core_before", "cross_core_after")]
    if not any(p and p["ratio"] >= CROSS_CORE_SLOW for p in probes):
        return None
    mib = (probes[0] or probes[1])["mib"]
    ratios = cross_core_ratios([p and p["ratio"] for p in probes])
    return (
        f"Reading data the other core had just written took {ratios}x (before / after the run) as "
        f"long as reading its own (cross-core probe, {mib} MiB; 1.3-1.5x where the two cores share an L3): "
        "multi-threaded rows of kernels whose threads read what other threads packed read low."
    )


_BUSY_LOOP = "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True:\n    pass\n"


@contextlib.contextmanager
def busy_core(core: int | None = None) -> Iterator[dict]:
    """Run a busy-loop process pinned on ``core`` (default: the last usable core) while the
    block runs; yields {"core", "pid"}.  The process is killed (by its pid) on exit.

    Raises:
        ValueError: ``core`` is not one this process may use.
        RuntimeError: the OS cannot pin a process to a core (no ``sched_setaffinity``).
    """
    cores = usable_cores()
    if core is None:
        core = cores[-1]
    if core not in cores:
        raise ValueError(f"busy_core: core={core!r} is not usable here; usable cores: {cores}")
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("busy_core: this OS cannot pin a process to a core (no os.sched_setaffinity)")
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        os.sched_setaffinity(proc.pid, {core})
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"busy_core: the busy-loop process exited early (rc {proc.poll()})")
        yield {"core": core, "pid": proc.pid}
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
