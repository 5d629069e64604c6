"""Cases and a float64 reference for the Triton launcher tests (independent of the package)."""

from __future__ import annotations

from typing import Optional

import torch

# Relative (to the reference's largest magnitude) error bounds, by input dtype.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_permutation(size: int, run: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of range(size) made of aligned runs of ``run`` consecutive features."""
    tiles = torch.randperm(size // run, generator=gen)
    return (tiles[:, None] * run + torch.arange(run)).reshape(-1)


def strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in another memory layout: "row" (as is), "col" (column-major), "slice"
    (every other column of a wider tensor)."""
    if layout == "col":
        return t.t().contiguous().t()
    if layout == "slice":
        wide = torch.full((t.shape[0], 2 * t.shape[1]), float("inf"), dtype=t.dtype, device=t.device)
        wide[:, ::2] = t
        return wide[:, ::2]
    return t


def weight(values: torch.Tensor, in_index: Optional[torch.Tensor], out_index: Optional[torch.Tensor]) -> torch.Tensor:
    """The dense (m, n) float64 weight: W[out_index[g*a + i], in_index[g*c + k]] = values[g, i, k]."""
    G, a, c = values.shape
    ii = torch.arange(G * c) if in_index is None else in_index.cpu()
    oi = torch.arange(G * a) if out_index is None else out_index.cpu()
    W = torch.zeros(G * a, G * c, dtype=torch.float64)
    for g in range(G):
        W[oi[g * a : (g + 1) * a, None], ii[None, g * c : (g + 1) * c]] = values[g].double().cpu()
    return W


def grad_values_reference(dy, x, in_index, out_index, G):
    dW = dy.double().cpu().t() @ x.double().cpu()
    m, n = dW.shape
    ii = torch.arange(n) if in_index is None else in_index.cpu()
    oi = torch.arange(m) if out_index is None else out_index.cpu()
    a, c = m // G, n // G
    return torch.stack([dW[oi[g * a : (g + 1) * a, None], ii[None, g * c : (g + 1) * c]] for g in range(G)])


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    got = got.double().cpu()
    assert not torch.isnan(got).any(), "unwritten (NaN) elements"
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
