"""The grad-values launcher on every path (fused, token splits, permute-then-contiguous),
against a float64 reference; interpreter on CPU, compiled kernels on a GPU.  Outputs start
as NaN (SAO_KERNELS_POISON=1)."""

import pytest
import torch
from _triton_cases import DEVICE, TOL, grad_values_reference, rel_err, run_permutation, strided

from sao_kernels.ops.triton import _common
from sao_kernels.ops.triton.grad_values import grouped_grad_values, plan_grad_values

G, A, C = 3, 32, 16  # groups and block sides: m = 96 outputs, n = 48 inputs


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")


def _indices(run, gen, indexed):
    in_index = run_permutation(G * C, run, gen) if indexed in ("both", "in") else None
    out_index = run_permutation(G * A, run, gen) if indexed in ("both", "out") else None
    return in_index, out_index


@pytest.mark.parametrize("gather,splits", [("fused", 1), ("fused", 3), ("permute", None)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("run", [1, 8])
def test_paths_match_float64(gather, splits, dtype, run):
    gen = torch.Generator().manual_seed(run + 7 * (splits or 0) + len(gather))
    in_index, out_index = _indices(run, gen, "both")
    for T, layout in ((5, "row"), (70, "col")):
        x = torch.randn(T, G * C, generator=gen, dtype=torch.float64).to(dtype)
        dy = torch.randn(T, G * A, generator=gen, dtype=torch.float64).to(dtype)
        dv = grouped_grad_values(
            strided(dy, layout).to(DEVICE),
            strided(x, layout).to(DEVICE),
            in_index.to(DEVICE),
            out_index.to(DEVICE),
            G,
            in_run=run,
            out_run=run,
            gather=gather,
            splits=splits,
        )
        assert dv.dtype == dtype and dv.shape == (G, A, C)
        assert rel_err(dv, grad_values_reference(dy, x, in_index, out_index, G)) < TOL[dtype], T


@pytest.mark.parametrize("indexed", ["none", "in", "out"])
def test_identity_maps_and_slices(indexed):
    gen = torch.Generator().manual_seed(2)
    in_index, out_index = _indices(1, gen, indexed)
    x = torch.randn(33, G * C, generator=gen, dtype=torch.float64)
    dy = torch.randn(33, G * A, generator=gen, dtype=torch.float64)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    for gather in ("fused", "permute"):
        dv = grouped_grad_values(
            strided(dy, "slice").to(DEVICE),
            strided(x, "slice").to(DEVICE),
            to(in_index),
            to(out_index),
            G,
            gather=gather,
            splits=2,
        )
        assert rel_err(dv, grad_values_reference(dy, x, in_index, out_index, G)) < TOL[torch.float64]


def test_token_splits_are_deterministic_and_planned():
    gen = torch.Generator().manual_seed(8)
    in_index, out_index = _indices(1, gen, "both")
    x, dy = torch.randn(80, G * C, generator=gen), torch.randn(80, G * A, generator=gen)
    dv, steps = plan_grad_values(dy, x, in_index, out_index, G, device=_common.INTERPRETER, splits=3)
    assert [s.kernel.__name__ for s in steps] == ["grad_values_kernel", "split_reduce_kernel"]
    runs = [
        grouped_grad_values(dy.to(DEVICE), x.to(DEVICE), in_index.to(DEVICE), out_index.to(DEVICE), G, splits=3)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_empty_batch_gives_zeros():
    dv = grouped_grad_values(torch.zeros(0, G * A).to(DEVICE), torch.zeros(0, G * C).to(DEVICE), None, None, G)
    assert dv.shape == (G, A, C) and bool((dv == 0).all())
