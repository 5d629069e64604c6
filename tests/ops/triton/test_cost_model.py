"""The fused-gather vs permute-then-contiguous cost model (``cost_model.py``), on CPU."""

import pytest
import torch

from sao_kernels.ops.triton import cost_model
from sao_kernels.ops.triton._common import Device
from sao_kernels.ops.triton.gather_matmul import plan_gather_matmul
from sao_kernels.ops.triton.grad_values import plan_grad_values

H100 = Device(arch=90, sm_count=132)
RATES = cost_model.rates_for(90)


def _traffic(T, K_all=4096, rereads=2, itemsize=2):
    return cost_model.GatherTraffic(
        T=T,
        K_all=K_all,
        rereads=rereads,
        out_rows=T,
        out_cols=4096,
        itemsize=itemsize,
        flops=2.0 * T * 4096 * 256,
        rest_l2=0.0,
        rest_hbm=4096 * 256 * itemsize,
    )


def test_path_times_is_the_documented_formula():
    p = _traffic(8192)
    s, n, S = p.itemsize, p.T * p.K_all, cost_model.SECTOR
    outs = p.out_rows * p.out_cols
    hbm = p.rest_hbm + n * s + outs * s
    fused = max(p.flops / RATES.flops_16bit, (p.rereads * n * S + outs * s) / RATES.l2, hbm / RATES.hbm)
    copy = RATES.launch_s + max(2 * n * s / RATES.hbm, n / RATES.l1_sectors_per_s)
    permuted = copy + max(p.flops / RATES.flops_16bit, (p.rereads * n * s + outs * s) / RATES.l2, hbm / RATES.hbm)
    assert cost_model.path_times(p, True, False, False, False, RATES) == pytest.approx(fused)
    assert cost_model.path_times(p, True, False, True, False, RATES) == pytest.approx(permuted)


def test_choice_follows_the_model():
    # Large T: a 16x sector amplification on 2 rereads costs more than one bandwidth-bound copy.
    assert cost_model.choose_permutes(_traffic(8192), True, True, RATES) == (True, True)
    # Tiny T: the copy's launch overhead dominates.
    assert cost_model.choose_permutes(_traffic(16), True, True, RATES) == (False, False)
    # Nothing gathered or scattered (runs of b >= 2): nothing to permute.
    assert cost_model.choose_permutes(_traffic(8192), False, False, RATES) == (False, False)


def test_choice_is_monotone_in_tokens():
    """Once the copy pays for itself it keeps doing so for more tokens."""
    chosen = [cost_model.choose_permutes(_traffic(T), True, False, RATES)[0] for T in (1, 4, 16, 64, 256, 1024, 8192)]
    assert chosen == sorted(chosen)
    assert chosen[0] is False and chosen[-1] is True


def _kernels(steps):
    return [s.kernel.__name__ for s in steps]


@pytest.mark.parametrize("op", ["linear", "grad_values"])
def test_planners_use_the_model_for_element_level_maps_only(op):
    meta = dict(device="meta", dtype=torch.bfloat16)
    idx = torch.empty(4096, dtype=torch.int64, device="meta")

    def plan(T, run):
        if op == "linear":
            x, v = torch.empty(T, 4096, **meta), torch.empty(16, 256, 256, **meta)
            return _kernels(plan_gather_matmul(x, idx, v, idx, None, lhs_run=run, out_run=run, device=H100)[1])
        dy, x = torch.empty(T, 4096, **meta), torch.empty(T, 4096, **meta)
        return _kernels(plan_grad_values(dy, x, idx, idx, 16, in_run=run, out_run=run, device=H100)[1])

    assert "gather_columns_kernel" in plan(8192, 1)
    assert "gather_columns_kernel" not in plan(8192, 16)
    assert "gather_columns_kernel" not in plan(1, 1)
