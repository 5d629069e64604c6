"""The forward / grad-input launcher on every path, against a float64 reference.

Runs the Triton kernels in the interpreter on CPU tensors (TRITON_INTERPRET=1 from
tests/conftest.py), or compiled on a GPU.  Paths are forced (the cost model and the split
heuristic would pick the fused path for these tiny shapes): fused, split-K, permute-then-
contiguous, both.  Outputs start as NaN (SAO_KERNELS_POISON=1), so an unwritten element fails.
"""

import pytest
import torch
from _triton_cases import DEVICE, TOL, rel_err, run_permutation, strided, weight

from sao_kernels.ops.triton import _common, _index, gather_matmul
from sao_kernels.ops.triton.gather_matmul import grouped_gather_matmul, plan_gather_matmul

G, A, C = 3, 32, 48  # groups and block sides: m = 96 outputs, n = 144 inputs
PATHS = [("fused", None), ("fused", 3), ("permute", None), ("permute", 2)]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")


def _case(dtype, run, seed, indexed="both"):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(G, A, C, generator=gen, dtype=torch.float64).to(dtype)
    in_index = run_permutation(G * C, run, gen) if indexed in ("both", "in") else None
    out_index = run_permutation(G * A, run, gen) if indexed in ("both", "out") else None
    return gen, values, in_index, out_index


def _launch_both(x, dy, values, in_index, out_index, bias, run, gather, split_k):
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    ii, oi = to(in_index), to(out_index)
    kw = dict(
        lhs_run=run if ii is not None else 1, out_run=run if oi is not None else 1, gather=gather, split_k=split_k
    )
    y = grouped_gather_matmul(x, ii, to(values), oi, bias, **kw)
    kw["lhs_run"], kw["out_run"] = kw["out_run"], kw["lhs_run"]
    dx = grouped_gather_matmul(dy, oi, to(values).transpose(1, 2), ii, None, **kw)
    return y, dx


@pytest.mark.parametrize("gather,split_k", PATHS, ids=lambda p: str(p))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("run", [1, 8])
def test_paths_match_float64(gather, split_k, dtype, run):
    gen, values, in_index, out_index = _case(dtype, run, seed=run + 10 * len(gather) + (split_k or 0))
    W = weight(values, in_index, out_index)
    for T, layout in ((1, "row"), (40, "col")):  # column-major at T = 40: T_ALIGN = 8
        x = torch.randn(T, G * C, generator=gen, dtype=torch.float64).to(dtype)
        dy = torch.randn(T, G * A, generator=gen, dtype=torch.float64).to(dtype)
        bias = torch.randn(2 * G * A, generator=gen, dtype=torch.float64).to(dtype)[::2]  # strided bias
        y, dx = _launch_both(
            strided(x, layout).to(DEVICE),
            strided(dy, layout).to(DEVICE),
            values,
            in_index,
            out_index,
            bias.to(DEVICE),
            run,
            gather,
            split_k,
        )
        assert y.dtype == dtype and dx.dtype == dtype
        assert rel_err(y, x.double() @ W.t() + bias.double()) < TOL[dtype], (T, "forward")
        assert rel_err(dx, dy.double() @ W) < TOL[dtype], (T, "grad-input")


@pytest.mark.parametrize("indexed", ["none", "in", "out"])
@pytest.mark.parametrize("gather,split_k", [("permute", None), ("fused", 2)], ids=str)
def test_identity_maps_and_slices(indexed, gather, split_k):
    """None index maps (contiguous groups) on every path, activations that are column slices."""
    gen, values, in_index, out_index = _case(torch.float64, 1, seed=5, indexed=indexed)
    W = weight(values, in_index, out_index)
    x = torch.randn(19, G * C, generator=gen, dtype=torch.float64)
    dy = torch.randn(19, G * A, generator=gen, dtype=torch.float64)
    y, dx = _launch_both(
        strided(x, "slice").to(DEVICE),
        strided(dy, "slice").to(DEVICE),
        values,
        in_index,
        out_index,
        None,
        1,
        gather,
        split_k,
    )
    assert rel_err(y, x @ W.t()) < TOL[torch.float64]
    assert rel_err(dx, dy @ W) < TOL[torch.float64]


def test_runs_longer_than_a_k_block():
    """b = 32 runs with 16-wide K blocks of a 4-way K split: masks and hints per K block."""
    gen = torch.Generator().manual_seed(6)
    values = torch.randn(2, 32, 64, generator=gen)
    in_index, out_index = run_permutation(128, 32, gen), run_permutation(64, 32, gen)
    x = torch.randn(5, 128, generator=gen)
    steps = plan_gather_matmul(
        x, in_index, values, out_index, None, lhs_run=32, out_run=32, device=_common.INTERPRETER, split_k=4
    )[1]
    assert steps[0].tiles["BLOCK_K"] == 16 and steps[0].args["K_PER_SPLIT"] == 16
    y = grouped_gather_matmul(
        x.to(DEVICE),
        in_index.to(DEVICE),
        values.to(DEVICE),
        out_index.to(DEVICE),
        None,
        lhs_run=32,
        out_run=32,
        split_k=4,
    )
    assert rel_err(y, x.double() @ weight(values, in_index, out_index).t()) < TOL[torch.float32]


def test_split_k_is_deterministic():
    gen, values, in_index, out_index = _case(torch.float32, 1, seed=3)
    x = torch.randn(9, G * C, generator=gen)
    steps = plan_gather_matmul(x, in_index, values, out_index, None, device=_common.INTERPRETER, split_k=3)[1]
    assert [s.kernel.__name__ for s in steps] == ["gather_matmul_kernel", "split_reduce_kernel"]
    assert steps[1].args["SPLITS"] == 3
    x = x.to(DEVICE)
    runs = [
        grouped_gather_matmul(x, in_index.to(DEVICE), values.to(DEVICE), out_index.to(DEVICE), None, split_k=3)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_int64_offsets(monkeypatch):
    """The WIDE (int64 offset) variant, forced by lowering the int32 limit the planner checks."""
    monkeypatch.setattr(_common, "INT32_MAX", 100)
    gen, values, in_index, out_index = _case(torch.float32, 8, seed=4)
    x = torch.randn(6, G * C, generator=gen)
    steps = plan_gather_matmul(x, in_index, values, out_index, None, lhs_run=8, out_run=8, device=_common.INTERPRETER)[
        1
    ]
    assert steps[-1].args["WIDE"]
    y, _ = _launch_both(
        x.to(DEVICE), torch.zeros(6, G * A).to(DEVICE), values, in_index, out_index, None, 8, "fused", None
    )
    assert rel_err(y, x.double() @ weight(values, in_index, out_index).t()) < TOL[torch.float32]


def test_run_hints_only_from_powers_of_two_and_real_indices():
    """A run hint reaches the kernel only for an index that is present and a power of two >= 2
    (the op's checks verify that the index is made of such runs)."""
    x = torch.randn(4, 48)
    values = torch.randn(2, 24, 24)
    idx = torch.randperm(48)

    def runs(lhs_index, lhs_run, out_index, out_run):
        step = plan_gather_matmul(
            x, lhs_index, values, out_index, None, lhs_run=lhs_run, out_run=out_run, device=_common.INTERPRETER
        )[1][-1]
        return step.args["LHS_RUN"], step.args["OUT_RUN"]

    assert runs(idx, 8, idx, 8) == (8, 8)
    assert runs(idx, 24, idx, 12) == (1, 1)  # not powers of two: no hint
    assert runs(None, 8, None, 8) == (1, 1)  # identity maps: nothing to hint


def test_index_is_read_as_int32_and_cached():
    idx = torch.randperm(48)
    first = _index.as_int32(idx)
    assert first.dtype == torch.int32 and torch.equal(first.long(), idx)
    assert _index.as_int32(idx) is first  # cached against the tensor and its version
    idx[:2] = idx[:2].flip(0)  # an in-place write bumps the version: a fresh copy
    again = _index.as_int32(idx)
    assert again is not first and torch.equal(again.long(), idx)
    inv = _index.inverse_int32(idx)
    assert torch.equal(inv.long()[idx], torch.arange(48))


def test_plan_works_on_meta_tensors_for_a_gpu():
    """The planner needs no GPU: the launch list for an H100-sized problem, on meta tensors."""
    meta = dict(device="meta")
    x = torch.empty(8192, 4096, dtype=torch.bfloat16, **meta)
    values = torch.empty(16, 256, 256, dtype=torch.bfloat16, **meta)
    idx = torch.empty(4096, dtype=torch.int64, **meta)
    gpu = _common.Device(arch=90, sm_count=132)
    out, steps = plan_gather_matmul(x, idx, values, idx, None, lhs_run=16, out_run=16, device=gpu)
    assert out.shape == (8192, 4096) and [s.kernel.__name__ for s in steps] == ["gather_matmul_kernel"]
    assert steps[0].args["lhs_index_ptr"].dtype == torch.int32 and not steps[0].args["WIDE"]
    _, small = plan_gather_matmul(x[:1], idx, values, idx, None, lhs_run=16, out_run=16, device=gpu)
    assert [s.kernel.__name__ for s in small] == ["gather_matmul_kernel", "split_reduce_kernel"]


def test_bad_requests_are_refused():
    x, values = torch.zeros(3, 32, dtype=torch.int32), torch.zeros(2, 16, 16, dtype=torch.int32)
    with pytest.raises(TypeError, match="triton backend supports"):
        grouped_gather_matmul(x, None, values, None, None)
    with pytest.raises(ValueError, match="gather must be one of"):
        grouped_gather_matmul(torch.zeros(3, 32), None, torch.zeros(2, 16, 16), None, None, gather="sometimes")
    assert gather_matmul.GATHER_CHOICES == ("auto", "fused", "permute")
