"""Per-layer FLOP, parameter and latency report of a model with SAO layers.

FLOPs are read from ``torch.utils.flop_counter.FlopCounterMode`` (which sees the registered
sparse ops through their flop formulas), on the model as given and on a dense copy whose SAO
layers are replaced by ``nn.Linear`` / ``nn.Conv2d`` with the equivalent dense weights, so
the counts agree exactly with FlopCounterMode by construction.  Latency is measured per
layer, in the same process, on the input each layer saw during one forward: the layer and
its dense twin are timed interleaved (``sao_kernels.bench.timing``), forward and forward +
backward, each with min / median / IQR, a speed-up with its 95 % interval, and flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..bench.flop_count import flop_counter
from ..bench.machine import machine_label, machine_meta, recording_load
from ..bench.results import (
    FLAG_FIELDS,
    flag_cells,
    fmt_ms,
    fmt_speedup,
    json_file,
    meta_header,
    text_file,
    to_csv,
    write_outputs,
)
from ..bench.steps import forward_step, module_steps
from ..bench.timing import MEDIAN_OVER_MIN, TimingSettings, compare, comparison_columns, interleave
from ..bench.twins import densify
from ..layers import SAOConv2d, SAOLinear

MODES = ("fwd", "fwd_bwd")
ROW_FIELDS = (
    (
        "name",
        "type",
        "size",
        "in_shape",
        "out_shape",
        "sparsity",
        "groups",
        "params",
        "params_dense",
        "flops_fwd",
        "flops_fwd_dense",
        "flops_fwd_bwd",
        "flops_fwd_bwd_dense",
    )
    + tuple(column for m in MODES for column in comparison_columns(f"_{m}"))
    + FLAG_FIELDS
)
REPORT_FILES = ("report.json", "report.csv", "report.md", "report.png")

_LAYER_TYPES = (SAOLinear, SAOConv2d, nn.Linear, nn.Conv2d)


def layer_size(layer: nn.Module) -> str:
    """'in -> out' features (Linear) or 'in -> out channels, kh x kw' (Conv2d)."""
    if isinstance(layer, (SAOLinear, nn.Linear)):
        return f"{layer.in_features} -> {layer.out_features}"
    k = layer.kernel_size
    return f"{layer.in_channels} -> {layer.out_channels} ch, {k[0]}x{k[1]}"


@dataclasses.dataclass
class Report:
    """One row per Linear / Conv2d / SAO layer (see ``ROW_FIELDS``) plus totals and metadata."""

    rows: list[dict]
    totals: dict
    meta: dict

    def to_json(self) -> str:
        return json.dumps({"meta": self.meta, "totals": self.totals, "layers": self.rows}, indent=2) + "\n"

    def to_csv(self) -> str:
        return to_csv(self.rows, ROW_FIELDS)

    def to_markdown(self) -> str:
        m = self.meta
        timed = any(r.get("ms_fwd") is not None for r in self.rows)
        backward = any(r.get("ms_fwd_bwd") is not None for r in self.rows)
        counted_bwd = m.get("backward", True)  # fwd+bwd FLOPs counted (report(..., backward=False): not)
        flag_cell, flag_notes = flag_cells(self.rows)
        head = [
            "layer",
            "type",
            "size (in -> out)",
            "input activation",
            "output activation",
            "sparsity",
            "G",
            "params (dense)",
            "fwd MFLOP (dense)",
        ]
        if counted_bwd:
            head.append("fwd+bwd MFLOP (dense)")
        if timed:
            head += ["fwd ms (IQR)", "dense fwd ms (IQR)", "fwd speed-up [95% CI]"]
        if backward:
            head += ["fwd+bwd ms (IQR)", "dense fwd+bwd ms (IQR)", "fwd+bwd speed-up [95% CI]"]
        if timed:
            head += ["ideal", "flag"]
        lines = meta_header(m, f"Per-layer report of `{m['model']}`") + [
            "Sizes are the layers' features / channels (in -> out). Input / output activation are the shapes of "
            "the tensors each layer saw in one forward of the example input (batch and tokens included); FLOPs "
            "and latencies are for that input. "
            + (
                "fwd+bwd FLOPs and latencies include the input, weight and bias gradients (a first layer whose "
                "input needs no gradient has none)."
                if counted_bwd
                else "Forward only (backward=False): no fwd+bwd column."
            )
        ]
        if m.get("forward_only"):
            lines += ["", f"**Forward only**: {m['forward_only']}; no fwd+bwd FLOPs or latencies."]
        if timed:
            lines += [
                "",
                "Each layer was timed interleaved with its dense twin (same weights, nn.Linear / nn.Conv2d): "
                "ms = median (IQR) per call; speed-up = dense median / SAO median with its 95% paired "
                "bootstrap interval; ideal = G. Flags: noisy = spread above "
                f"{100 * m.get('flag_spread', 0.1):.0f}% of the median; suspect = above the ideal; "
                f"slow-median = a median above {MEDIAN_OVER_MIN:g}x its min (most rounds slowed by other "
                "processes or thread wake-up; try --threads 1). The total row sums the medians (no interval).",
            ]
        lines += [
            "",
            "| " + " | ".join(head) + " |",
            "| --- | --- | --- | --- | --- |"
            + " ---: |" * (len(head) - 5 - (1 if timed else 0))
            + (" --- |" if timed else ""),
        ]
        total = dict(
            self.totals, name="**total**", type="", size="", in_shape="", out_shape="", sparsity=None, groups=""
        )
        for r in self.rows + [total]:
            cells = [
                r["name"],
                r["type"],
                r["size"],
                _shape(r["in_shape"]),
                _shape(r["out_shape"]),
                "" if r.get("sparsity") is None else f"{r['sparsity']:.3g}",
                str(r.get("groups", "")),
                f"{r['params']:,} ({r['params_dense']:,})",
                f"{r['flops_fwd'] / 1e6:,.1f} ({r['flops_fwd_dense'] / 1e6:,.1f})",
            ]
            if counted_bwd:
                cells.append(f"{r['flops_fwd_bwd'] / 1e6:,.1f} ({r['flops_fwd_bwd_dense'] / 1e6:,.1f})")
            if timed:
                cells += [fmt_ms(r, "_fwd"), fmt_ms(r, "_fwd", "_dense"), fmt_speedup(r, "_fwd")]
            if backward:
                cells += [fmt_ms(r, "_fwd_bwd"), fmt_ms(r, "_fwd_bwd", "_dense"), fmt_speedup(r, "_fwd_bwd")]
            if timed:
                cells += [f"{r['ideal_speedup']:g}x" if "ideal_speedup" in r else "", flag_cell(r)]
            lines.append("| " + " | ".join(cells) + " |")
        if flag_notes:
            lines += ["", "Flags:", ""] + flag_notes
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> None:
        """report.png: the converted layers' and the whole model's speed-ups (log axis, 95 %
        intervals, ideal G) and the whole model's time, dense vs SAO (``bench.plots.plot_report``);
        without latency, the same with FLOPs."""
        from ..bench.plots import plot_report

        plot_report(self.rows, self.totals, self.meta, path)

    def save(self, out_dir: str | os.PathLike, *, keep_previous: bool = False) -> dict[str, pathlib.Path]:
        """Write report.json, report.csv, report.md and report.png into ``out_dir``, atomically
        (temporary files renamed over the old ones; nothing is replaced if one fails); with
        ``keep_previous`` an earlier report there is kept and this one numbered (report-2.*)."""
        written = write_outputs(
            out_dir,
            {
                "report.json": json_file({"meta": self.meta, "totals": self.totals, "layers": self.rows}),
                "report.csv": text_file(self.to_csv()),
                "report.md": text_file(self.to_markdown()),
                "report.png": self.plot,
            },
            owned=REPORT_FILES,
            keep_previous=keep_previous,
        )
        return {name.rsplit(".", 1)[1]: path for name, path in written.items()}


def _shape(s) -> str:
    return "x".join(map(str, s)) if s else ""


def _flops_by_module(model: nn.Module, inputs: Sequence[torch.Tensor], backward: bool) -> dict[str, int]:
    """Per-module FLOP totals from (the corrected) FlopCounterMode, by qualified name."""
    model.zero_grad(set_to_none=True)
    with flop_counter(display=False) as counter:
        out = model(*inputs)
        if backward:
            _backward(out)
    model.zero_grad(set_to_none=True)
    counts = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # FlopCounterMode names modules "<RootClass>.<qualified name>".
        name = key.split(".", 1)[1] if "." in key else ""
        counts[name] = sum(per_op.values())
    return counts


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors a backward starts from: the output itself, the tensors of a tuple / list,
    or of a mapping such as transformers' ModelOutput: its ``loss`` when it has one, else its
    ``logits``, else its first tensor (e.g. ``last_hidden_state``)."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, Mapping):
        for key in ("loss", "logits"):
            if torch.is_tensor(out.get(key)):
                return [out[key]]
        return [next(v for v in out.values() if torch.is_tensor(v))] if any(map(torch.is_tensor, out.values())) else []
    if isinstance(out, (tuple, list)):
        return [t for t in out if torch.is_tensor(t)]
    return []


def _backward(out) -> None:
    tensors = [t for t in output_tensors(out) if t.requires_grad]
    if not tensors:
        raise ValueError(
            "report: the model's output does not require grad, so fwd+bwd cannot be measured (outputs used: a "
            "tensor, the tensors of a tuple / list, or a ModelOutput's loss / logits / first tensor); pass "
            "backward=False for forward only"
        )
    # A scalar loss rather than backward(grad) on the outputs: FlopCounterMode's module
    # tracker only attributes the last module's backward when autograd enters through a
    # node downstream of it (checked on torch 2.13).
    sum((t * torch.randn_like(t)).sum() for t in tensors).backward()


def _layer_latency(
    layer: nn.Module,
    dense: nn.Module,
    x: torch.Tensor,
    input_grad: bool,
    ideal: float,
    settings: TimingSettings,
    backward: bool,
) -> dict:
    """Timing columns of one layer vs its dense twin (interleaved per mode), and its flags.
    fwd+bwd computes the input gradient only when the layer's input needed one in the model."""
    # a frozen layer whose input needs no gradient has no backward (fwd+bwd columns stay empty)
    backward = backward and (input_grad or any(p.requires_grad for p in layer.parameters()))
    if backward:
        sao_steps = module_steps(layer, x, generator=torch.Generator().manual_seed(0), input_grad=input_grad)
        dense_steps = module_steps(dense, x, generator=torch.Generator().manual_seed(0), input_grad=input_grad)
    else:
        sao_steps, dense_steps = (forward_step(layer, x),), (forward_step(dense, x),)
    out, codes, reasons = {}, [], []
    for i, mode in enumerate(MODES if backward else MODES[:1]):
        stats = interleave({"dense": dense_steps[i], "sao": sao_steps[i]}, settings, device=x.device)
        cmp = compare(stats["dense"], stats["sao"], ideal=ideal, flag_rel_spread=settings.flag_rel_spread)
        out.update(cmp.fields(f"_{mode}"))
        codes += [c for c in cmp.flag.split(",") if c and c not in codes]
        if cmp.flag_reason:
            reasons.append(f"{mode.replace('_', '+')}: {cmp.flag_reason}")
    out.update(ideal_speedup=ideal, flag=",".join(codes), flag_reason="; ".join(reasons))
    return out


def report(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    measure_latency: bool = True,
    repeats: int = 10,
    backward: bool = True,
    name: str | None = None,
    timing: TimingSettings | None = None,
) -> Report:
    """Per-layer FLOPs, parameters and latency of ``model`` vs its dense equivalent.

    Args:
        model: any module; its nn.Linear / nn.Conv2d / SAOLinear / SAOConv2d leaves get a row.
        example_inputs: a tensor or a tuple of tensors for ``model(*inputs)``.
        measure_latency: time each layer on the input it saw, interleaved with its dense twin.
        repeats: the least number of interleaved rounds per measurement (>= 3); more are run
            until the spread is small or the time budget is spent.
        backward: also count / time forward + backward (grads of inputs and weights).
        name: model name for the metadata (default: the class name).
        timing: full timing settings (overrides ``repeats``).
    """
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"report: model must be an nn.Module, got {type(model).__name__}")
    if timing is None:
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 3:
            raise ValueError(f"report: repeats must be an integer >= 3 (rounds per measurement), got {repeats!r}")
        timing = TimingSettings(
            min_run_time=0.1, max_run_time=max(0.5, 0.02 * repeats), min_rounds=repeats, max_rounds=max(1000, repeats)
        )
    device = inputs[0].device if inputs else torch.device("cpu")
    meta = machine_meta(device)  # threads, machine label and the load around the measuring: every report has them
    meta["machine"] = machine_label(meta)
    with recording_load(meta):
        rows, totals, backward, forward_only = _measure(model, inputs, measure_latency, backward, timing)
    meta.update(model=name or type(model).__name__, flag_spread=timing.flag_rel_spread, backward=backward)
    if forward_only:
        meta["forward_only"] = forward_only
    return Report(rows=rows, totals=totals, meta=meta)


def _measure(model, inputs, measure_latency: bool, backward: bool, timing: TimingSettings):
    """(rows, totals, backward, forward_only reason) of :func:`report`."""
    dense = densify(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
    dense_layers = dict(dense.named_modules())

    seen: dict[str, tuple[torch.Tensor, bool, tuple]] = {}

    def capture(name):
        def hook(module, args, out) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, (args[0].detach(), args[0].requires_grad, tuple(out.shape)))

        return hook

    hooks = [m.register_forward_hook(capture(n)) for n, m in layers]
    try:
        with torch.enable_grad():  # so that each hook sees whether its input needs a gradient
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    forward_only = None
    if backward and not any(t.requires_grad for t in output_tensors(out)):
        # e.g. every parameter frozen: there is no backward to count or time
        forward_only = "the model's output does not require grad (are all its parameters frozen?)"
        backward = False
    del out

    fwd = _flops_by_module(model, inputs, backward=False)
    fwd_dense = _flops_by_module(dense, inputs, backward=False)
    both = _flops_by_module(model, inputs, backward=True) if backward else {}
    both_dense = _flops_by_module(dense, inputs, backward=True) if backward else {}

    rows = []
    for n, layer in layers:
        if n not in seen:
            continue  # not used by this forward
        x, input_grad, out_shape = seen[n]
        sao = isinstance(layer, (SAOLinear, SAOConv2d))
        dlayer = dense_layers[n]
        row = dict(
            name=n or type(layer).__name__,
            type=type(layer).__name__,
            size=layer_size(layer),
            in_shape=list(x.shape),
            out_shape=list(out_shape),
            sparsity=layer.sparsity if sao else 0.0,
            groups=layer.groups if sao else 1,
            params=sum(p.numel() for p in layer.parameters()),
            params_dense=sum(p.numel() for p in dlayer.parameters()),
            flops_fwd=fwd.get(n, 0),
            flops_fwd_dense=fwd_dense.get(n, 0),
            flops_fwd_bwd=both.get(n, 0) if backward else None,
            flops_fwd_bwd_dense=both_dense.get(n, 0) if backward else None,
        )
        if measure_latency:
            row.update(_layer_latency(layer, dlayer, x, input_grad, float(row["groups"]), timing, backward))
        rows.append(row)

    totals = {
        k: sum(r[k] for r in rows) if backward or "bwd" not in k else None
        for k in ("params", "params_dense", "flops_fwd", "flops_fwd_dense", "flops_fwd_bwd", "flops_fwd_bwd_dense")
    }
    for mode in MODES if measure_latency and rows else ():
        if all(r.get(f"ms_{mode}") is not None for r in rows):
            totals[f"ms_{mode}"] = sum(r[f"ms_{mode}"] for r in rows)
            totals[f"ms_{mode}_dense"] = sum(r[f"ms_{mode}_dense"] for r in rows)
            totals[f"speedup_{mode}"] = totals[f"ms_{mode}_dense"] / totals[f"ms_{mode}"]
    totals["model_flops_fwd"] = fwd.get("", 0)
    totals["model_flops_fwd_dense"] = fwd_dense.get("", 0)
    return rows, totals, backward, forward_only
