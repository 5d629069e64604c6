"""Layer- and model-level suites: SAO modules against their dense twins, interleaved.

* :func:`layer_rows`: an ``nn.Linear`` / ``nn.Conv2d`` and SAO layers of the same shape at
  several G, forward and forward + backward, all timed in the same rounds.
* :func:`model_rows`: a model with SAO layers against its dense twin (``densify``), forward
  and a training step (forward, backward, SGD update).
* :func:`small_width_suite`: issue 13's small-width cases: widths 128 and 512 at T = 128
  and 1024, and a depth-stacked tanh MLP (100 layers of width 128) training step; with
  ``contention=True`` everything is measured a second time while a busy-loop process is
  pinned on one core.

Rows share the sweep's timing columns (``results.TIMING_FIELDS``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .results import TIMING_FIELDS, fmt_ms, fmt_speedup, results_markdown, write_results
from .steps import module_steps, train_step
from .timing import TimingSettings, compare, interleave
from .twins import densify

CASE_FIELDS = (
    "case",
    "shape",
    "mode",
    "backend",
    "dtype",
    "width",
    "tokens",
    "depth",
    "groups",
    "contention",
) + TIMING_FIELDS
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
SMALL_WIDTHS = (128, 512)
SMALL_TOKENS = (128, 1024)
SMALL_GROUPS = (2, 4, 8)
MLP_DEPTH, MLP_WIDTH, MLP_TOKENS, MLP_GROUPS = 100, 128, 128, (4,)


def _rows_from_stats(stats, names: dict, base: dict, mode: str, settings: TimingSettings) -> list[dict]:
    rows = []
    for key, G in names.items():
        cmp = compare(stats["dense"], stats[key], ideal=float(G), flag_rel_spread=settings.flag_rel_spread)
        rows.append(
            dict(
                base,
                mode=mode,
                groups=G,
                **cmp.fields(),
                ideal_speedup=float(G),
                flag=cmp.flag,
                flag_reason=cmp.flag_reason,
            )
        )
    return rows


def layer_rows(
    dense: nn.Module,
    sao_layers: dict[int, nn.Module],
    x: torch.Tensor,
    settings: TimingSettings,
    *,
    base: dict,
    modes: Sequence[str] = ("fwd", "fwd_bwd"),
    generator: torch.Generator | None = None,
) -> list[dict]:
    """One row per (mode, G): ``sao_layers[G]`` vs ``dense`` on ``x``, interleaved per mode.

    Args:
        dense: the dense layer (input x -> output of the same shape as the SAO layers').
        sao_layers: G -> SAO layer.  base: fields copied into every row (case, shape, ...).
        modes: "fwd" (no grad) and / or "fwd_bwd" (input, weight and bias grads).
    """
    steps = {"dense": module_steps(dense, x, generator=generator)}
    steps.update({f"G={G}": module_steps(layer, x, generator=generator) for G, layer in sao_layers.items()})
    rows = []
    for mode in modes:
        i = ("fwd", "fwd_bwd").index(mode)
        stats = interleave({k: v[i] for k, v in steps.items()}, settings, device=x.device)
        rows += _rows_from_stats(stats, {f"G={G}": G for G in sao_layers}, base, mode, settings)
    return rows


def model_rows(
    dense: nn.Module,
    sao_models: dict[int, nn.Module],
    x: torch.Tensor,
    settings: TimingSettings,
    *,
    base: dict,
    modes: Sequence[str] = ("fwd", "train_step"),
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> list[dict]:
    """One row per (mode, G): a model with SAO layers vs its dense twin; "train_step" is
    forward, loss mean(out^2), backward and an optimiser step (default SGD, lr 1e-4; the
    optimiser's work is G x smaller for SAO too, and is part of what is measured)."""
    make_optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=1e-4))

    def step(model, mode):
        if mode == "fwd":
            return module_steps(model, x)[0]
        return train_step(model, x, make_optimizer(model.parameters()))

    rows = []
    for mode in modes:
        fns = {"dense": step(dense, mode), **{f"G={G}": step(m, mode) for G, m in sao_models.items()}}
        stats = interleave(fns, settings, device=x.device)
        rows += _rows_from_stats(stats, {f"G={G}": G for G in sao_models}, base, mode, settings)
    return rows


def linear_layers(
    width: int, groups: Sequence[int], dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"
) -> tuple[nn.Linear, dict[int, nn.Module]]:
    """nn.Linear(width, width) and SAOLinear(width, width, groups=G) for each G."""
    from ..layers import SAOLinear

    dense = nn.Linear(width, width, device=device, dtype=dtype)
    return dense, {G: SAOLinear(width, width, groups=G, generator=gen, device=device, dtype=dtype) for G in groups}


def conv_layers(
    channels: int, kernel: int, groups: Sequence[int], dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"
) -> tuple[nn.Conv2d, dict[int, nn.Module]]:
    """nn.Conv2d(c, c, k, padding=k // 2) and SAOConv2d of the same shape for each G."""
    from ..layers import SAOConv2d

    dense = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, device=device, dtype=dtype)
    return dense, {
        G: SAOConv2d(
            channels, channels, kernel, padding=kernel // 2, groups=G, generator=gen, device=device, dtype=dtype
        )
        for G in groups
    }


def tanh_mlp(
    depth: int, width: int, groups: Sequence[int], dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"
) -> tuple[nn.Module, dict[int, nn.Module]]:
    """A ``depth``-layer tanh MLP of width ``width`` per G (every Linear converted to SAO)
    and the dense twin of the first one (the same function with dense weights)."""
    from ..cli.demo_models import mlp
    from ..conversion import convert

    saos = {}
    for G in groups:
        model, _ = mlp(width=width, depth=depth, tokens=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values are re-initialised by SAO": intended here
            saos[G] = convert(model.to(device=device, dtype=dtype), groups=G, generator=gen)
    return densify(saos[groups[0]]), saos


def small_width_suite(
    settings: TimingSettings,
    *,
    widths: Sequence[int] = SMALL_WIDTHS,
    tokens: Sequence[int] = SMALL_TOKENS,
    groups: Sequence[int] = SMALL_GROUPS,
    dtypes: Sequence[str] = ("float32",),
    depth: int = MLP_DEPTH,
    depth_width: int = MLP_WIDTH,
    depth_tokens: int = MLP_TOKENS,
    depth_groups: Sequence[int] = MLP_GROUPS,
    contention: bool = False,
    contention_core: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Issue 13's small-width cases (layer rows, then the MLP rows), once quietly and, with
    ``contention``, again with a busy-loop process pinned on one core.  ``depth=0`` leaves
    the MLP out.  ``progress(label)`` is called after each measured group.

    Returns:
        (rows, skipped): a G that does not divide a width is skipped with the reason.

    Raises:
        NothingMeasured: when every (width, G) is skipped (before any timing).
    """
    from ..sizes import resolve_sizes
    from .machine import busy_core
    from .sweep import NothingMeasured

    skipped: list[dict] = []

    def valid(width: int, gs: Sequence[int], what: str) -> list[int]:
        ok = []
        for G in gs:
            try:
                resolve_sizes(width, width, groups=G)
                ok.append(G)
            except ValueError as err:
                skipped.append(dict(what=f"{what} G={G}", reason=f"G={G} on width {width}: {err}"))
        return ok

    layer_groups = {w: valid(w, groups, f"linear {w}x{w}") for w in widths}
    mlp_groups = valid(depth_width, depth_groups, f"mlp{depth} width {depth_width}") if depth else []
    if not any(layer_groups.values()) and not mlp_groups:
        raise NothingMeasured(skipped)
    rows: list[dict] = []
    for busy in (False, True) if contention else (False,):
        with busy_core(contention_core) if busy else contextlib.nullcontext():
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                for w in widths:
                    for T in tokens:
                        if layer_groups[w]:
                            gen = torch.Generator().manual_seed(0)
                            dense, saos = linear_layers(w, layer_groups[w], dtype, gen)
                            x = torch.randn(T, w, generator=gen).to(dtype)
                            base = dict(
                                case="linear",
                                shape=f"{w}x{w}, T={T}",
                                backend="auto",
                                dtype=dtype_name,
                                width=w,
                                tokens=T,
                                depth=1,
                                contention=busy,
                            )
                            rows += layer_rows(dense, saos, x, settings, base=base, generator=gen)
                        if progress:
                            progress(f"linear {w} T={T} {dtype_name}" + (" (contention)" if busy else ""))
                if depth:
                    if mlp_groups:
                        gen = torch.Generator().manual_seed(0)
                        dense, saos = tanh_mlp(depth, depth_width, mlp_groups, dtype, gen)
                        x = torch.randn(depth_tokens, depth_width, generator=gen).to(dtype)
                        base = dict(
                            case=f"mlp{depth}",
                            shape=f"{depth} x ({depth_width}x{depth_width} + tanh), T={depth_tokens}",
                            backend="auto",
                            dtype=dtype_name,
                            width=depth_width,
                            tokens=depth_tokens,
                            depth=depth,
                            contention=busy,
                        )
                        rows += model_rows(dense, saos, x, settings, base=base)
                    if progress:
                        progress(f"mlp{depth} {dtype_name}" + (" (contention)" if busy else ""))
    return rows, skipped


def suite_progress_total(widths, tokens, dtypes, depth: int, contention: bool) -> int:
    """How many ``progress`` calls :func:`small_width_suite` makes."""
    return len(dtypes) * (len(widths) * len(tokens) + (1 if depth else 0)) * (2 if contention else 1)


CASE_COLUMNS = [
    ("case", lambda r: r["case"], False),
    ("shape", lambda r: r["shape"], False),
    ("mode", lambda r: r["mode"], False),
    ("backend", lambda r: r["backend"], False),
    ("dtype", lambda r: r["dtype"], False),
    ("G", lambda r: str(r["groups"]), True),
    ("contention", lambda r: "yes" if r.get("contention") else "", False),
    ("SAO ms (IQR)", fmt_ms, True),
    ("dense ms (IQR)", lambda r: fmt_ms(r, side="_dense"), True),
    ("speed-up [95% CI]", fmt_speedup, True),
    ("ideal", lambda r: f"{r['ideal_speedup']:g}x", True),
    ("rounds", lambda r: str(r["rounds"]), True),
]


def write_case_results(
    rows: Sequence[dict],
    meta: dict,
    out_dir,
    *,
    stem: str,
    what: str,
    settings: TimingSettings,
    formats: Sequence[str] = ("json", "csv", "md"),
    plot_name: str | None = None,
    notes: Sequence[str] = (),
    skipped: Sequence[dict] = (),
    extra_columns: Sequence = (),
    fields: Sequence[str] = CASE_FIELDS,
    keep_previous: bool = False,
) -> dict:
    """``{stem}.{json,csv,md}`` (the chosen formats) and optionally a speed-up plot, atomically."""
    from .plots import plot_speedup

    md = results_markdown(
        rows,
        meta,
        what=what,
        columns=CASE_COLUMNS + list(extra_columns),
        flag_spread=settings.flag_rel_spread,
        skipped=skipped,
        notes=list(notes)
        + [
            "mode: fwd = forward under no_grad; fwd_bwd = forward + backward "
            "(input, weight, bias grads); train_step = forward, loss, backward, "
            "SGD update. ideal = G (only the matmuls are sparse, so model rows "
            "stay below it)."
        ],
    )
    plot = None
    if plot_name:
        title = f"{what} on {meta.get('gpu') or meta.get('cpu')} ({meta['date'][:10]})"
        plot = (
            plot_name,
            lambda path: plot_speedup(
                rows,
                path,
                title=title,
                panel_key=("case", "shape", "mode"),
                color_key="contention",
                style_keys=("dtype",),
            ),
        )
    return write_results(
        out_dir,
        rows,
        meta,
        stem=stem,
        fields=fields,
        markdown=md,
        formats=formats,
        skipped=skipped,
        plot=plot,
        owned_plot=plot_name,
        keep_previous=keep_previous,
    )
