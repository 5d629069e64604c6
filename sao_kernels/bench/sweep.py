"""The microbenchmark sweep behind ``python -m sao_kernels bench``.

For every (op, dtype, T, width) the sweep builds the inputs once and times the dense
product and every (G, block_size, backend) candidate interleaved in the same rounds (see
``timing``); each candidate becomes one row with its speed-up over dense.  Candidates that
cannot run raise :class:`SkipCandidate` with the reason; the sweep collects them in
``SweepResult.skipped`` and raises :class:`NothingMeasured` when nothing could be measured.

Backends (the ``backend`` field; the ideal speed-up is G for all but masked_dense):
  torch         the structured torch composite (gather + batched GEMM)
  triton        the fused-gather Triton kernels (CUDA)
  native        the C++ CPU kernels of csrc/ (``sao_kernels._C``)
  masked_dense  the paper's way: scatter the blocks into an (m, n) weight, dense matmul
                (saves no work: its ideal is 1)
  bsr           torch BSR of the group-ordered block diagonal plus the two permutations
                (forward only: torch's BSR kernels have no backward)
  grouped_mm    ``torch._grouped_mm`` on an explicit permuted copy (bf16, forward; CUDA, and CPU
                where torch has it: the GPU rehearsal runs it there)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import torch

from .candidates import (
    SkipCandidate,
    conv_candidate,
    dense_linear,
    linear_candidate,
    module_op,
    static_skip_reason,
    warm_up,
)
from .results import TIMING_FIELDS
from .timing import TimingSettings, compare, interleave, median_ms

OPS = ("linear_fwd", "linear_fwd_bwd", "linear_grad_input", "linear_grad_values", "conv2d_fwd", "conv2d_fwd_bwd")
SAO_BACKENDS = ("torch", "triton", "native")
BASELINES = ("masked_dense", "bsr", "grouped_mm")
BACKENDS = SAO_BACKENDS + BASELINES
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

ROW_FIELDS = (
    "op",
    "backend",
    "device",
    "dtype",
    "tokens",
    "in_features",
    "out_features",
    "groups",
    "block_size",
    "contention",
    *TIMING_FIELDS,
    "floor_ms",
    "roofline_fraction",
    "batch",
    "height",
    "width",
    "kernel_size",
)


class NothingMeasured(Exception):
    """The selection measured nothing; ``skipped`` lists what was skipped and why."""

    def __init__(self, skipped: list[dict]):
        self.skipped = skipped
        super().__init__(
            f"nothing was measured: all {len(skipped)} selected combinations were skipped"
            if skipped
            else "nothing was measured: the selection is empty"
        )


@dataclasses.dataclass
class SweepResult:
    rows: list[dict]
    skipped: list[dict]


# ---------------------------------------------------------------------------- config
@dataclasses.dataclass
class SweepConfig:
    """What ``run_sweep`` measures.  ``features`` are square layers (m = n).  Timing:
    see ``timing.TimingSettings`` (target_spread = its target_rel_iqr, flag_spread = its
    flag_rel_spread).  ``contention`` adds a second pass with a busy-loop process pinned on
    ``contention_core`` (default: the last usable core)."""

    device: str = "cpu"
    ops: tuple[str, ...] = OPS
    tokens: tuple[int, ...] = (512,)
    features: tuple[int, ...] = (2048,)
    groups: tuple[int, ...] = (1, 2, 4, 8, 16)
    dtypes: tuple[str, ...] = ("float32",)
    block_sizes: tuple[int, ...] = (1,)
    backends: tuple[str, ...] = ("torch", "masked_dense", "bsr")
    conv_batch: int = 8
    conv_channels: int = 128
    conv_size: int = 16
    conv_kernel: int = 3
    min_run_time: float = 0.2
    max_run_time: float | None = None
    target_spread: float = 0.05
    flag_spread: float = 0.10
    contention: bool = False
    contention_core: int | None = None
    roofline: bool | None = None  # floor_ms / roofline_fraction columns (None: on CUDA)

    def __post_init__(self) -> None:
        if self.roofline is None:
            self.roofline = self.device == "cuda"

    def timing(self) -> TimingSettings:
        return TimingSettings(
            min_run_time=self.min_run_time,
            max_run_time=self.max_run_time,
            target_rel_iqr=self.target_spread,
            flag_rel_spread=self.flag_spread,
        )


def default_config(device: str) -> SweepConfig:
    """Defaults per device: a few minutes on a 2-core CPU; the full sweep on CUDA."""
    if device == "cuda":
        return SweepConfig(
            device="cuda",
            tokens=(16, 128, 2048, 8192),
            features=(1024, 4096, 8192),
            groups=(1, 2, 4, 8, 16, 32),
            dtypes=("bfloat16", "float32"),
            block_sizes=(1, 64),
            backends=("triton", "torch", "masked_dense", "bsr", "grouped_mm"),
            conv_batch=32,
            conv_channels=256,
            conv_size=32,
            min_run_time=0.1,
        )
    from .. import ops  # the extension decides whether the default CPU path can be timed

    # native first: it is what SAOLinear runs on CPU by default (dispatch.AUTO); the composite
    # stays as the fallback's row
    native = ("native",) if ops.NATIVE else ()
    return SweepConfig(backends=(*native, "torch", "masked_dense", "bsr"))


def validate_config(cfg: SweepConfig) -> None:
    """Raise ValueError naming the field and the allowed values."""

    def bad(field, value, allowed):
        raise ValueError(f"{field}: {value!r} is not allowed; allowed: {allowed}")

    if cfg.device not in ("cpu", "cuda"):
        bad("device", cfg.device, "'cpu', 'cuda'")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    for field, allowed in (("ops", OPS), ("backends", BACKENDS), ("dtypes", tuple(DTYPES))):
        values = getattr(cfg, field)
        if not values:
            bad(field, values, "a non-empty selection of " + ", ".join(allowed))
        for v in values:
            if v not in allowed:
                bad(field, v, ", ".join(allowed))
    for name in ("tokens", "features", "groups", "block_sizes"):
        values = getattr(cfg, name)
        if not values:
            bad(name, values, "a non-empty list of positive integers")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, v, "positive integers")
    for name in ("conv_batch", "conv_channels", "conv_size", "conv_kernel"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad(name, v, "a positive integer")
    cfg.timing()  # raises ValueError naming min_run_time / max_run_time / ...


# ---------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Job:
    """Inputs built once, timed against one dense product: an (op, dtype, T, width)."""

    op: str
    dtype: str
    tokens: int | None  # None for conv (T = batch * H * W)
    width: int

    def label(self) -> str:
        shape = f"T={self.tokens} {self.width}x{self.width}" if self.tokens else f"{self.width} channels"
        return f"{self.op} {self.dtype} {shape}"


def plan(cfg: SweepConfig) -> tuple[list[tuple[Job, list[tuple[int, int, str]]]], list[dict]]:
    """The jobs with their (G, block_size, backend) candidates, and what is left out before
    running anything (``static``: group counts that do not divide a width, backends that can
    never run an op on this device): those are never scheduled."""
    from ..sizes import resolve_sizes

    jobs, skipped = [], []
    for dtype in cfg.dtypes:
        for op in cfg.ops:
            shapes = (
                [(T, f) for T in cfg.tokens for f in cfg.features]
                if op.startswith("linear")
                else [(None, cfg.conv_channels)]
            )
            for T, f in shapes:
                job, cands = Job(op, dtype, T, f), []
                for G in cfg.groups:
                    for b in cfg.block_sizes:
                        try:
                            resolve_sizes(f, f, groups=G, block_size=b)
                        except ValueError as err:
                            why = f"G={G}, block_size={b} on width {f}: {err}"
                            skipped.append(_skip(job, G, b, "*", why, static=True))
                            continue
                        for backend in cfg.backends:
                            reason = static_skip_reason(op, backend, cfg.device)
                            if reason:  # never scheduled: listed once, as left out
                                skipped.append(_skip(job, G, b, backend, reason, static=True))
                            else:
                                cands.append((G, b, backend))
                if cands:
                    jobs.append((job, cands))
    return jobs, skipped


def _skip(job: Job, G: int, b: int, backend: str, reason: str, static: bool = False) -> dict:
    """A skipped combination; ``static``: known before timing (never scheduled), else it
    failed its warm-up call."""
    return dict(
        what=f"{job.label()} G={G} b={b} {backend}",
        reason=reason,
        op=job.op,
        dtype=job.dtype,
        tokens=job.tokens,
        width=job.width,
        groups=G,
        block_size=b,
        backend=backend,
        static=static,
    )


# --------------------------------------------------------------------------- roofline
_PEAKS: dict[tuple[str, torch.dtype], tuple[float, float]] = {}


def measured_peaks(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """(flop/s of a large dense matmul in ``dtype``, bytes/s of a large copy) on ``device``
    (8192^2 and 256 MiB on a GPU; 512^2 and 16 MiB on a CPU, where larger ones take seconds)."""
    key = (str(device), dtype)
    if key not in _PEAKS:
        cuda = device.type == "cuda"
        n = 8192 if cuda else 512
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        flops = 2 * n**3 / (median_ms(lambda: a @ b, device=device) * 1e-3)
        src = torch.empty((256 if cuda else 16) * 2**20, device=device, dtype=torch.uint8)
        dst = torch.empty_like(src)
        bw = 2 * src.numel() / (median_ms(lambda: dst.copy_(src), device=device) * 1e-3)
        _PEAKS[key] = (flops, bw)
    return _PEAKS[key]


def linear_cost(op: str, T: int, m: int, n: int, G: int, itemsize: int) -> tuple[float, float]:
    """(flops, minimal bytes) of one SAO linear product: each operand read or written once."""
    f = 2.0 * T * m * n / G
    x, y, v = T * n * itemsize, T * m * itemsize, m * n / G * itemsize
    per = {"linear_fwd": (f, x + v + y), "linear_grad_input": (f, y + v + x), "linear_grad_values": (f, y + x + v)}
    if op == "linear_fwd_bwd":
        return tuple(sum(c) for c in zip(*per.values()))
    return per[op]


# ------------------------------------------------------------------------- the sweep
def _job_inputs(job: Job, cfg: SweepConfig, gen: torch.Generator, device: torch.device):
    """(dense callable, shape fields, candidate factory (G, b, backend) -> callable)."""
    from ..init import sao_blocks
    from ..layers import SAOConv2d

    dtype, f = DTYPES[job.dtype], job.width
    if job.op.startswith("linear"):
        T = job.tokens
        x = torch.randn(T, f, generator=gen).to(device, dtype)
        dy = torch.randn(T, f, generator=gen).to(device, dtype)
        bias = torch.randn(f, generator=gen).to(device, dtype)
        w = (torch.randn(f, f, generator=gen) / math.sqrt(f)).to(device, dtype)

        def make(G, b, backend):
            blocks = sao_blocks(
                f, f, groups=G, block_size=b, smaller_groups="contiguous", generator=gen, device=device, dtype=dtype
            )
            return linear_candidate(job.op, backend, x, dy, blocks, bias)

        return dense_linear(job.op, x, dy, w, bias), dict(tokens=T, in_features=f, out_features=f), make
    B, H, k = cfg.conv_batch, cfg.conv_size, cfg.conv_kernel
    x = torch.randn(B, f, H, H, generator=gen).to(device, dtype)
    conv = torch.nn.Conv2d(f, f, k, padding=k // 2, device=device, dtype=dtype)
    with torch.no_grad():
        dy = torch.randn(conv(x).shape, generator=gen).to(device, dtype)

    def make(G, b, backend):
        layer = SAOConv2d(f, f, k, padding=k // 2, groups=G, block_size=b, generator=gen, device=device, dtype=dtype)
        return conv_candidate(job.op, backend, x, dy, layer)

    shape = dict(tokens=B * H * H, in_features=f, out_features=f, batch=B, height=H, width=H, kernel_size=k)
    return module_op(job.op, conv, x, dy, conv.parameters()), shape, make


def _measure_job(job, cands, cfg, gen, device, timing, skipped, contention: bool) -> list[dict]:
    dense_fn, shape, make = _job_inputs(job, cfg, gen, device)
    fns = {}
    for G, b, backend in cands:
        try:
            fn = make(G, b, backend)
            warm_up(fn)
        except SkipCandidate as err:
            skipped.append(_skip(job, G, b, backend, str(err)))
            continue
        fns[(G, b, backend)] = fn
    if not fns:
        return []
    stats = interleave(
        {"dense": dense_fn, **{f"{G}/{b}/{be}": fn for (G, b, be), fn in fns.items()}}, timing, device=device
    )
    rows = []
    for G, b, backend in fns:
        ideal = 1.0 if backend == "masked_dense" else float(G)
        cmp = compare(stats["dense"], stats[f"{G}/{b}/{backend}"], ideal=ideal, flag_rel_spread=timing.flag_rel_spread)
        row = dict(
            op=job.op,
            backend=backend,
            device=device.type,
            dtype=job.dtype,
            groups=G,
            block_size=b,
            contention=contention,
            **shape,
            **cmp.fields(),
            ideal_speedup=ideal,
            flag=cmp.flag,
            flag_reason=cmp.flag_reason,
        )
        if cfg.roofline and job.op.startswith("linear"):
            flops, nbytes = linear_cost(job.op, job.tokens, job.width, job.width, G, DTYPES[job.dtype].itemsize)
            peak, bw = measured_peaks(device, DTYPES[job.dtype])
            row["floor_ms"] = max(flops / peak, nbytes / bw) * 1e3
            row["roofline_fraction"] = row["floor_ms"] / row["ms"]
        rows.append(row)
    return rows


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepResult:
    """Measure every (op, shape, dtype, G, block_size, backend) of ``cfg``.

    Raises:
        ValueError: an invalid config (naming the field); ``memory.MemoryLimitError`` when
            the sweep would need more memory than ``memory.MEMORY_FRACTION`` of what is free.
        NothingMeasured: every candidate was skipped (its ``skipped`` says why); raised
            before any timing when the plan is already empty.
    """
    from .machine import busy_core
    from .memory import check_fits, sweep_bytes

    validate_config(cfg)
    timing = cfg.timing()
    device = torch.device(cfg.device)
    jobs, skipped = plan(cfg)
    check_fits(sweep_bytes(cfg, jobs), "this sweep")  # before anything is allocated
    if not jobs:
        raise NothingMeasured(skipped)
    passes = (False, True) if cfg.contention else (False,)
    bar = None
    if progress:
        from .extras import progress_bar

        bar = progress_bar(total=len(jobs) * len(passes), desc="sao_kernels bench", unit="config")
    rows: list[dict] = []
    try:
        for contention in passes:
            gen = torch.Generator().manual_seed(0)
            with busy_core(cfg.contention_core) if contention else contextlib.nullcontext(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
                for job, cands in jobs:
                    if bar is not None:
                        bar.set_postfix_str(job.label() + (" (contention)" if contention else ""))
                    pass_skips = [] if contention else skipped  # report each skip once
                    rows += _measure_job(job, cands, cfg, gen, device, timing, pass_skips, contention)
                    if bar is not None:
                        bar.update(1)  # after the configuration was measured
    finally:
        if bar is not None:
            bar.close()
    if not rows:
        raise NothingMeasured(skipped)
    return SweepResult(rows, skipped)


# ---------------------------------------------------------------------------- output
SWEEP_FILES = ("results.json", "results.csv", "results.md", "speedup.png")


def sweep_markdown(result: SweepResult, meta: dict, flag_spread: float = 0.10) -> str:
    from .results import fmt_ms, fmt_speedup, results_markdown

    cols = [
        ("op", lambda r: r["op"], False),
        ("backend", lambda r: r["backend"], False),
        ("dtype", lambda r: r["dtype"], False),
        ("T", lambda r: str(r["tokens"]), True),
        ("m x n", lambda r: f"{r['out_features']}x{r['in_features']}", False),
        ("G", lambda r: str(r["groups"]), True),
        ("b", lambda r: str(r["block_size"]), True),
    ]
    if any(r.get("contention") for r in result.rows):
        cols.append(("contention", lambda r: "yes" if r.get("contention") else "", False))
    cols += [
        ("SAO ms (IQR)", fmt_ms, True),
        ("dense ms (IQR)", lambda r: fmt_ms(r, side="_dense"), True),
        ("speed-up [95% CI]", fmt_speedup, True),
        ("ideal", lambda r: f"{r['ideal_speedup']:g}x", True),
        ("rounds", lambda r: str(r["rounds"]), True),
    ]
    notes = ["masked_dense saves no work (its ideal is 1x); bsr and grouped_mm are forward-only."]
    if any(r["backend"] == "triton" and r["device"] == "cpu" for r in result.rows):
        notes.append(
            "triton rows on the CPU ran in Triton's interpreter (TRITON_INTERPRET=1): a rehearsal of the "
            "GPU run, not a timing of the kernels."
        )
    if any("floor_ms" in r for r in result.rows):
        cols += [
            ("floor ms", lambda r: f"{r['floor_ms']:.3f}" if "floor_ms" in r else "", True),
            ("roofline", lambda r: f"{100 * r['roofline_fraction']:.0f}%" if "floor_ms" in r else "", True),
        ]
        notes.append(
            "floor = max(flops / peak, bytes / bandwidth) with the peak and bandwidth measured on this "
            "device at the start of the run; roofline = floor ms / ms."
        )
    return results_markdown(
        result.rows,
        meta,
        what="SAO microbenchmarks",
        columns=cols,
        skipped=result.skipped,
        flag_spread=flag_spread,
        notes=notes,
    )


def write_sweep_results(
    result: SweepResult, meta: dict, out_dir, *, flag_spread: float = 0.10, keep_previous: bool = False
) -> dict:
    """results.{json,csv,md} and speedup.png, written atomically into ``out_dir`` (numbered
    beside an earlier run's with ``keep_previous``: ``results.write_outputs``)."""
    from .plots import plot_speedup
    from .results import write_results

    title = f"sao_kernels bench on {meta.get('gpu') or meta.get('cpu')} ({meta['date'][:10]})"
    plot = ("speedup.png", lambda path: plot_speedup(result.rows, path, title=title, panel_order=OPS))
    return write_results(
        out_dir,
        result.rows,
        meta,
        stem="results",
        fields=ROW_FIELDS,
        markdown=sweep_markdown(result, meta, flag_spread),
        skipped=result.skipped,
        plot=plot,
        owned_plot="speedup.png",
        keep_previous=keep_previous,
    )
