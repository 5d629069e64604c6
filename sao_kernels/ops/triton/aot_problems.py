"""The problems ``aot`` compiles: grids of op calls, planned by the launchers themselves.

Each :class:`Problem` is planned on meta tensors by ``plan_gather_matmul`` / ``plan_grad_values``
for a ``Device(arch, sm_count)``, so the compiled configurations are exactly those the
launchers choose (:func:`plan`); with ``autotune`` the autotuner's own candidate list is used
(:func:`step_variants`).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

ARCHES = {80: 108, 90: 132}  # compute capability -> SM count (A100 SXM, H100 SXM)
_DTYPES = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One call of an op, as the launchers see it: shapes (T, m, n, G), block size b, dtype
    ("tf32" = float32 with tf32 allowed), which index maps are permutations, a bias, the
    activations' layout ("row": row-major; "col": column-major, strides (1, T))."""

    op: str  # "linear" | "grad_input" | "grad_values"
    T: int
    m: int
    n: int
    G: int
    b: int
    dtype: str
    indexed: str = "both"  # "both" | "in" | "out" | "none"
    bias: bool = True
    layout: str = "row"

    @property
    def label(self) -> str:
        return (
            f"{self.op} T={self.T} {self.m}x{self.n} G={self.G} b={self.b} {self.dtype} idx={self.indexed}"
            f"{' bias' if self.bias and self.op == 'linear' else ''}{' col-major' if self.layout == 'col' else ''}"
        )


def _grid(ops, Ts, sizes, Gs, bs, dtypes, indexed=("both",), layouts=("row",)) -> list[Problem]:
    out = []
    for op, T, (m, n), G, b, dt, ix, lay in itertools.product(ops, Ts, sizes, Gs, bs, dtypes, indexed, layouts):
        if m % G or n % G or (m // G) % b or (n // G) % b:
            continue
        out.append(Problem(op, T, m, n, G, b, dt, ix, True, lay))
    return out


OPS = ("linear", "grad_input", "grad_values")


def problem_grid(name: str) -> list[Problem]:
    """``ci``: a representative subset (minutes on 2 cores); ``full``: the issue's matrix, T in
    {1, 16, 128, 2048, 8192}, square and rectangular layers of 1024-8192 features, G 2-16, every
    dtype and precision, b in {1, 8, 16}, block sides that are not multiples of 16 (3200 / 16,
    1000 / 5, 3000 / 5), every index combination, column-major activations, and int64-offset
    problems (planned on meta tensors: no memory is touched)."""
    if name == "ci":
        probs = _grid(OPS, (1, 8192), ((4096, 4096),), (16,), (1, 16), ("bfloat16", "float32", "tf32"))
        probs += _grid(OPS, (128,), ((4096, 4096),), (4,), (8,), ("bfloat16",))
        probs += _grid(("linear",), (8192,), ((4096, 4096),), (16,), (16,), ("bfloat16",), ("none",))
        probs += _grid(("linear", "grad_values"), (600_000,), ((4096, 4096),), (16,), (16,), ("bfloat16",))
        return probs
    if name == "full":
        probs = _grid(
            OPS,
            (1, 16, 128, 2048, 8192),
            ((1024, 1024), (4096, 4096), (8192, 8192), (4096, 1024), (1024, 4096)),
            (2, 4, 8, 16),
            (1, 16),
            ("bfloat16", "float16", "float32", "tf32"),
        )
        probs += _grid(OPS, (16, 2048), ((4096, 4096), (3200, 3200)), (4, 16), (8,), ("bfloat16", "float32"))
        probs += _grid(OPS, (16, 2048), ((1000, 3000), (3000, 1000)), (5,), (1, 8), ("bfloat16", "float32"))
        probs += _grid(
            OPS, (128, 8192), ((4096, 4096),), (16,), (1, 16), ("bfloat16", "float32"), ("in", "out", "none")
        )
        probs += _grid(OPS, (8192,), ((4096, 4096),), (16,), (1, 16), ("bfloat16", "tf32"), ("both",), ("col",))
        probs += _grid(OPS, (1, 128, 8192), ((4096, 4096),), (4,), (1, 16), ("float64",))
        probs += _grid(OPS, (600_000,), ((4096, 4096),), (16,), (1, 16), ("bfloat16",))  # int64 offsets
        return probs
    raise ValueError(f"unknown grid {name!r}; allowed: 'ci', 'full'")


def autotune_grid(name: str) -> list[tuple[Problem, tuple[int, ...]]]:
    """Problems whose autotune candidates are compiled too, with the arches to compile them for
    (``ci``: the 16-bit candidate lists on sm_90; ``full``: every dtype's lists on both)."""
    if name == "ci":
        return [(Problem(op, 8192, 4096, 4096, 16, 16, "bfloat16"), (90,)) for op in ("linear", "grad_values")]
    probs = _grid(OPS, (128, 8192), ((4096, 4096),), (16,), (1, 16), ("bfloat16", "float16", "float32", "tf32"))
    return [(p, (80, 90)) for p in probs]


def plan(problem: Problem, arch: int, autotune: bool = False) -> list:
    """The launch steps the launchers would run for ``problem`` on sm_<arch> (meta tensors)."""
    from ._common import Device
    from .gather_matmul import plan_gather_matmul
    from .grad_values import plan_grad_values

    p = problem
    dtype = _DTYPES[p.dtype]
    precision = "tf32" if p.dtype == "tf32" else "ieee"
    device = Device(arch, ARCHES[arch])

    def act(width):
        if p.layout == "col":
            return torch.empty(width, p.T, dtype=dtype, device="meta").t()
        return torch.empty(p.T, width, dtype=dtype, device="meta")

    def index(size, which):
        return torch.empty(size, dtype=torch.int64, device="meta") if p.indexed in ("both", which) else None

    in_index, out_index = index(p.n, "in"), index(p.m, "out")
    in_run, out_run = (p.b if in_index is not None else 1), (p.b if out_index is not None else 1)
    values = torch.empty(p.G, p.m // p.G, p.n // p.G, dtype=dtype, device="meta")
    if p.op == "linear":
        bias = torch.empty(p.m, dtype=dtype, device="meta") if p.bias else None
        _, steps = plan_gather_matmul(
            act(p.n),
            in_index,
            values,
            out_index,
            bias,
            lhs_run=in_run,
            out_run=out_run,
            device=device,
            precision=precision,
            autotune=autotune,
        )
    elif p.op == "grad_input":
        _, steps = plan_gather_matmul(
            act(p.m),
            out_index,
            values.transpose(1, 2),
            in_index,
            None,
            lhs_run=out_run,
            out_run=in_run,
            device=device,
            precision=precision,
            autotune=autotune,
        )
    else:
        _, steps = plan_grad_values(
            act(p.m),
            act(p.n),
            in_index,
            out_index,
            p.G,
            in_run=in_run,
            out_run=out_run,
            device=device,
            precision=precision,
            autotune=autotune,
        )
    return steps


def step_variants(step) -> list:
    """The tiles a step may run with: its heuristic tiles, or every autotune candidate."""
    from .tiles import Tiles

    if step.tuned is None:
        return [("default", step.tiles)]
    return [("autotune", Tiles(tuple(c.kwargs.items()), c.num_warps, c.num_stages)) for c in step.tuned.configs]
