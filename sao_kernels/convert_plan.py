"""The conversion summary: one row per module ``sao_kernels.convert`` considered, what it
did with it (or would do, in a dry run) and why, as data and as a table."""

from __future__ import annotations

import dataclasses
import math
import weakref

from torch import nn

__all__ = ["ConversionRow", "ConversionSummary"]

STATUSES = ("converted", "dense", "excluded")


@dataclasses.dataclass(frozen=True)
class ConversionRow:
    """One candidate module.

    ``shape`` is the dense weight's (out, in) or (out, in, kh, kw) (transformers' Conv1D
    stores its weight transposed; this is its logical shape).  ``status``: "converted",
    "dense" (left dense, ``reason`` says why) or "excluded" (not selected by the call's
    filter_fn / target_modules / exclude_modules).  Parameters are the module's own
    (weight and bias; SAO: values and bias; the index buffers are not parameters); FLOPs are
    per token (per output position for a convolution): 2 * out * in * kh * kw for the dense
    weight, divided by G for the SAO layer, bias excluded, as ``FlopCounterMode`` counts.
    """

    path: str
    type: str
    shape: tuple[int, ...]
    status: str
    groups: int
    sparsity: float
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    reason: str = ""
    note: str = ""
    also_at: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def dense_flops(shape: tuple[int, ...] | None) -> int:
    """2 * out * in * kh * kw: multiply-adds of one token / output position, as FLOPs."""
    return 2 * math.prod(shape) if shape else 0


def _fmt_shape(shape: tuple[int, ...]) -> str:
    if not shape:
        return "?"
    s = f"{shape[0]}x{shape[1]}"
    return s + (f", {shape[2]}x{shape[3]}" if len(shape) == 4 else "")


def _n(x: int) -> str:
    return f"{x:,}"


@dataclasses.dataclass
class ConversionSummary:
    """What one ``convert`` call did (or, ``dry_run=True``, would do) to a model.

    Data: ``rows`` (:class:`ConversionRow`, one per candidate module, in module order),
    ``to_dicts()``, ``totals``.  Text: ``str(summary)`` (an aligned table) and
    ``to_markdown()``.  ``converted`` / ``dense`` / ``excluded`` list the rows by status.
    """

    rows: list[ConversionRow]
    model: str
    settings: str
    dry_run: bool
    model_params_before: int

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, path: str | int) -> ConversionRow:
        if isinstance(path, int):
            return self.rows[path]
        for row in self.rows:
            if row.path == path or path in row.also_at:
                return row
        raise KeyError(f"no candidate module at {path!r}; paths: {', '.join(r.path for r in self.rows)}")

    def _by(self, status: str) -> list[ConversionRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def converted(self) -> list[ConversionRow]:
        return self._by("converted")

    @property
    def dense(self) -> list[ConversionRow]:
        return self._by("dense")

    @property
    def excluded(self) -> list[ConversionRow]:
        return self._by("excluded")

    @property
    def totals(self) -> dict:
        """Sums over the candidate rows, and the whole model's parameters before / after."""
        t = {k: sum(getattr(r, k) for r in self.rows) for k in ("params_before", "params_after")}
        t.update({k: sum(getattr(r, k) for r in self.rows) for k in ("flops_before", "flops_after")})
        t["converted"] = len(self.converted)
        t["candidates"] = len(self.rows)
        t["model_params_before"] = self.model_params_before
        t["model_params_after"] = self.model_params_before - (t["params_before"] - t["params_after"])
        return t

    def to_dicts(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["module", "type", "shape (out x in)", "G", "sparsity", "params before -> after", "FLOPs/token", "note"]
        body = []
        for r in self.rows:
            why = r.reason if r.status != "converted" else r.note
            if r.status != "converted":
                why = f"{r.status}: {why}"
            if r.also_at:
                why += ("; " if why else "") + f"shared with {', '.join(r.also_at)}"
            body.append(
                [
                    r.path or "(root)",
                    r.type,
                    _fmt_shape(r.shape),
                    str(r.groups),
                    f"{r.sparsity:.3g}",
                    f"{_n(r.params_before)} -> {_n(r.params_after)}",
                    f"{_n(r.flops_before)} -> {_n(r.flops_after)}",
                    why,
                ]
            )
        t = self.totals
        body.append(
            [
                "total",
                f"{t['converted']}/{t['candidates']} converted",
                "",
                "",
                "",
                f"{_n(t['params_before'])} -> {_n(t['params_after'])}",
                f"{_n(t['flops_before'])} -> {_n(t['flops_after'])}",
                f"model parameters {_n(t['model_params_before'])} -> {_n(t['model_params_after'])}",
            ]
        )
        return head, body

    def _title(self) -> str:
        what = "would convert (dry run)" if self.dry_run else "converted"
        done = f"{what} {len(self.converted)} of {len(self)} modules"
        return f"sao_kernels.convert of {self.model} ({self.settings}): {done}"

    def __str__(self) -> str:
        head, body = self._cells()
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
        lines = [self._title()]
        for row in [head, *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
            if row is head:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        head, body = self._cells()
        lines = [f"**{self._title()}**", "", "| " + " | ".join(head) + " |"]
        lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"


# The summary of the last convert() of a model, keyed weakly by the returned root (and the
# model passed in), so that models are not kept alive or changed (no attribute is set).
_LAST: weakref.WeakKeyDictionary[nn.Module, ConversionSummary] = weakref.WeakKeyDictionary()


def remember(summary: ConversionSummary, *modules: nn.Module) -> None:
    for m in modules:
        _LAST[m] = summary


def last_summary(model: nn.Module) -> ConversionSummary | None:
    return _LAST.get(model)
