"""The one float64 reference of the three SAO products, and the test cases (shape order
(T, m, n, G, block_size) everywhere).  Independent of the package: the dense weight is built
entry by entry from the compact format."""

from __future__ import annotations

import torch

# Relative (to the reference's largest magnitude) error bounds, by input dtype.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def reference_weight(values: torch.Tensor, in_index, out_index) -> torch.Tensor:
    """Dense (m, n) float64 weight, block by block from the definition (no package code):
    W[out_index[g*a + i], in_index[g*c + k]] = values[g, i, k]."""
    G, a, c = values.shape
    W = torch.zeros(G * a, G * c, dtype=torch.float64)
    ii = torch.arange(G * c) if in_index is None else in_index.cpu()
    oi = torch.arange(G * a) if out_index is None else out_index.cpu()
    for g in range(G):
        W[oi[g * a : (g + 1) * a, None], ii[None, g * c : (g + 1) * c]] = values[g].detach().double().cpu()
    return W


def reference_grad_values(dW: torch.Tensor, in_index, out_index, G: int) -> torch.Tensor:
    """dW (m, n) restricted to the mask, gathered into (G, a, c) by explicit indexing."""
    m, n = dW.shape
    a, c = m // G, n // G
    ii = torch.arange(n) if in_index is None else in_index.cpu()
    oi = torch.arange(m) if out_index is None else out_index.cpu()
    return torch.stack([dW[oi[g * a : (g + 1) * a, None], ii[None, g * c : (g + 1) * c]] for g in range(G)])


def reference(x, values, in_index, out_index, b, dy):
    """(y, dX, dV, db) in float64 from the (possibly low-precision) inputs."""
    W = reference_weight(values, in_index, out_index)
    x64, dy64 = x.detach().double().cpu(), dy.detach().double().cpu()
    y = x64 @ W.T
    if b is not None:
        y = y + b.detach().double().cpu()
    dx = dy64 @ W
    dv = reference_grad_values(dy64.T @ x64, in_index, out_index, values.shape[0])
    return y, dx, dv, dy64.sum(0)


def permutation(size: int, block_size: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of range(size) made of aligned runs of block_size features."""
    if block_size == 1:
        return torch.randperm(size, generator=gen)
    tiles = torch.randperm(size // block_size, generator=gen)
    return (tiles[:, None] * block_size + torch.arange(block_size)).reshape(-1)


def make_case(T, m, n, G, block_size=1, *, in_perm=True, out_perm=True, bias=True, dtype=torch.float64, seed=0):
    """(x, values, in_index, out_index, bias, dy), rounded to ``dtype``; indices None when
    not permuted."""
    gen = torch.Generator().manual_seed(seed)
    a, c = m // G, n // G
    x = torch.randn(T, n, generator=gen, dtype=torch.float64)
    values = torch.randn(G, a, c, generator=gen, dtype=torch.float64) / c**0.5
    b = torch.randn(m, generator=gen, dtype=torch.float64) if bias else None
    dy = torch.randn(T, m, generator=gen, dtype=torch.float64)
    in_index = permutation(n, block_size, gen) if in_perm else None
    out_index = permutation(m, block_size, gen) if out_perm else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(x), cast(values), in_index, out_index, cast(b), cast(dy)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """|got - want| <= TOL[dtype] * max(1, max |want|), no NaN, right shape and dtype."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert not torch.isnan(got).any(), f"{name}: NaN (an unwritten element?)"
    if want.numel() == 0:
        return
    scale = max(float(want.abs().max()), 1.0)
    err = float((got.detach().double().cpu() - want).abs().max())
    assert err <= TOL[dtype] * scale, f"{name}: max error {err:.3e} > {TOL[dtype]:.1e} * {scale:.3g}"
