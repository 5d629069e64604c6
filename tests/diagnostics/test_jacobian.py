"""sao_kernels.diagnostics.jacobian: Jacobian isometry of dense and SAO stacks (against jacrev
and the dense equivalent), and the cost estimate made before the run.

``jacobian_singular_values`` refuses a run above its memory / flop limits with a message
naming the sizes and the limits (the README's transformer example at (16, 10, 512) used to
be killed at 23 GB RSS).  Limits are checked by counting (flops, bytes, which routine ran),
never by the wall clock.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import diagnostics as dg
from sao_kernels.diagnostics import jacobian as jac_mod

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- Jacobians
def test_orthogonal_dense_linear_net_is_isometric():
    g = gen(1)
    layers = []
    for _ in range(4):
        lin = nn.Linear(32, 32).double()
        nn.init.orthogonal_(lin.weight, generator=g)
        layers.append(lin)
    net = nn.Sequential(*layers)
    sv = dg.jacobian_singular_values(net, torch.randn(5, 32, dtype=torch.float64, generator=g))
    assert sv.shape == (5, 32) and sv.dtype == torch.float64
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-12, rtol=0)


def test_deep_sao_linear_stack_is_isometric():
    g = gen(2)
    net = nn.Sequential(
        *[
            sk.SAOLinear(64, 64, sparsity=0.875, activation="linear", generator=g, dtype=torch.float64)
            for _ in range(50)
        ]
    )
    sv = dg.jacobian_singular_values(net, torch.randn(3, 64, dtype=torch.float64, generator=g))
    assert sv.shape == (3, 64)
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-10, rtol=0)


def test_jacobian_rectangular_and_chunked_matches_jacrev_and_dense():
    g = gen(3)
    net = nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 7)).double()
    x = torch.randn(4, 20, dtype=torch.float64, generator=g)
    a = dg.jacobian_singular_values(net, x, max_rows=6)  # several output chunks
    b = dg.jacobian_singular_values(net, x, method="jacrev")
    assert a.shape == (4, 7)
    torch.testing.assert_close(a, b)
    # and against the explicit product W2 diag(tanh') W1
    w1, w2 = net[0].weight, net[2].weight
    h = x @ w1.T + net[0].bias
    for i in range(4):
        jac = w2 @ torch.diag(1 - torch.tanh(h[i]) ** 2) @ w1
        torch.testing.assert_close(a[i], torch.linalg.svdvals(jac.detach()))


def test_jacobian_of_sao_matches_dense_equivalent():
    g = gen(4)
    sao = nn.Sequential(
        sk.SAOLinear(48, 24, sparsity=0.5, generator=g, dtype=torch.float64),
        nn.Tanh(),
        sk.SAOLinear(24, 48, sparsity=0.75, generator=g, dtype=torch.float64),
    )
    dense = nn.Sequential(nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 48)).double()
    with torch.no_grad():
        for s, d in zip(sao[::2], dense[::2], strict=True):
            d.weight.copy_(s.dense_weight())
            d.bias.copy_(s.bias)
    x = torch.randn(3, 48, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        dg.jacobian_singular_values(sao, x), dg.jacobian_singular_values(dense, x, method="jacrev")
    )


def test_jacrev_through_sao_ops_matches_autograd():
    """The sao_kernels ops have functorch rules now: jacrev through them is exact."""
    g = gen(14)
    net = nn.Sequential(
        sk.SAOLinear(16, 24, sparsity=0.5, generator=g, dtype=torch.float64),
        nn.Tanh(),
        sk.SAOLinear(24, 12, sparsity=0.5, generator=g, dtype=torch.float64),
    )
    x = torch.randn(3, 16, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        dg.jacobian_singular_values(net, x, method="jacrev"),
        dg.jacobian_singular_values(net, x),
        rtol=1e-12,
        atol=1e-12,
    )


class _NoFunctorch(torch.autograd.Function):
    """An old-style autograd.Function (forward takes ctx): torch.func cannot transform it."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_jacrev_through_an_op_without_functorch_rules_fails_with_a_clear_message():
    net = nn.Sequential(sk.SAOLinear(16, 16, sparsity=0.5, dtype=torch.float64), nn.Tanh())

    def model(v):
        return _NoFunctorch.apply(net(v))

    with pytest.raises(RuntimeError, match="method='autograd'"):
        dg.jacobian_singular_values(model, torch.randn(2, 16, dtype=torch.float64), method="jacrev")
    assert dg.jacobian_singular_values(model, torch.randn(2, 16, dtype=torch.float64)).shape == (2, 16)


def test_jacobian_of_a_conv_net_flattens_per_sample():
    g = gen(5)
    net = nn.Sequential(sk.SAOConv2d(8, 8, 3, padding=1, sparsity=0.5, generator=g, dtype=torch.float64), nn.Tanh())
    sv = dg.jacobian_singular_values(net, torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=g))
    assert sv.shape == (2, 200)
    assert bool((sv[:, :-1] >= sv[:, 1:]).all())


def test_jacobian_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        dg.jacobian_singular_values(nn.Linear(3, 3), torch.randn(2, 3), method="jacfwd")
    with pytest.raises(ValueError, match="batch"):
        dg.jacobian_singular_values(nn.Linear(3, 3), torch.randn(3))


# ------------------------------------------------------------------- cost
def test_readme_transformer_example_is_refused_before_it_runs():
    """In a subprocess with a 6 GiB address-space limit: the run it replaces needed 23 GB."""
    code = textwrap.dedent(
        """
        import resource, warnings
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        import torch, sao_kernels as sk
        from sao_kernels import diagnostics as dg
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = sk.convert(torch.nn.TransformerEncoderLayer(512, 8), sparsity=0.75)
        try:
            dg.jacobian_singular_values(model, torch.randn(16, 10, 512))
        except ValueError as err:
            print("ValueError:", err)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msg = proc.stdout.strip()
    assert msg.startswith("ValueError: jacobian_singular_values: 16 Jacobian(s) of 5120 x 5120"), msg
    assert "above max_flops=1e+12" in msg and "x[:k]" in msg and "None: no limit" in msg


class CountingModel(nn.Module):
    """A Linear + Tanh that counts how many samples it was run on."""

    def __init__(self, n, m):
        super().__init__()
        self.lin = nn.Linear(n, m, dtype=F64)
        self.samples = 0

    def forward(self, x):
        self.samples += x.shape[0]
        return torch.tanh(self.lin(x))


def test_limits_are_checked_before_any_backward():
    model = CountingModel(64, 48)
    x = torch.randn(4, 64, dtype=F64, generator=gen(1))
    jac_bytes = 8 * 4 * 48 * 64
    with pytest.raises(ValueError, match=r"4 Jacobian\(s\) of 48 x 64 .*above max_bytes=1000 "):
        dg.jacobian_singular_values(model, x, max_bytes=1000)
    assert model.samples == 4  # only the probes (1 sample, then 1 and 2 with autograd), no pass
    with pytest.raises(
        ValueError,
        match=r"flops \(.* for 192 backward passes of one sample, .* for the SVDs\), "
        r"above max_flops=1e\+03",
    ):
        dg.jacobian_singular_values(model, x, max_flops=1e3)
    assert model.samples == 8
    sv = dg.jacobian_singular_values(model, x, max_bytes=jac_bytes * 10, max_flops=None)
    ref = dg.jacobian_singular_values(model, x, max_bytes=None, max_flops=None, method="jacrev")
    torch.testing.assert_close(sv, ref, rtol=1e-12, atol=1e-12)


def test_rows_per_pass_shrink_to_fit_the_memory_limit():
    model = CountingModel(64, 48)
    x = torch.randn(4, 64, dtype=F64, generator=gen(2))
    roomy = jac_mod._jacobian_plan(model, x, "autograd", 8192, None, None)
    assert roomy.rows_per_pass == 48
    tight_limit = roomy.bytes - 4 * 40 * (64 + 48) * 8  # not enough for all rows in one pass
    tight = jac_mod._jacobian_plan(model, x, "autograd", 8192, tight_limit, None)
    assert 1 <= tight.rows_per_pass < 48 and tight.bytes <= tight_limit
    model.samples = 0
    sv = dg.jacobian_singular_values(model, x, max_bytes=tight_limit)
    passes = math.ceil(48 / tight.rows_per_pass)
    assert model.samples == 1 + 1 + 2 + 4 * 48  # the probes, then every (sample, row) once
    assert passes > 1
    torch.testing.assert_close(sv, roomy_svs(model, x), rtol=1e-12, atol=1e-12)


def roomy_svs(model, x):
    return dg.jacobian_singular_values(model, x, max_bytes=None, max_flops=None)


def test_flop_estimate_counts_sao_layers_at_their_sparse_cost():
    dense = nn.Sequential(nn.Linear(256, 256, dtype=F64), nn.Tanh())
    sparse = nn.Sequential(sk.SAOLinear(256, 256, groups=8, dtype=F64), nn.Tanh())
    x = torch.randn(2, 256, dtype=F64)
    p_dense = jac_mod._jacobian_plan(dense, x, "autograd", 8192, None, None)
    p_sparse = jac_mod._jacobian_plan(sparse, x, "autograd", 8192, None, None)
    assert p_dense.pass_flops == 3 * 2 * 256 * 256 * 2 * 256  # 3 x forward flops x B x m
    assert p_sparse.pass_flops * 8 == p_dense.pass_flops
    assert p_sparse.svd_flops == p_dense.svd_flops == 2 * (4 * 256**3 - 4 * 256**3 / 3)


def test_limit_arguments_are_checked():
    for kwargs, pattern in [
        ({"max_bytes": -1}, "max_bytes"),
        ({"max_flops": float("nan")}, "max_flops"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_bytes": True}, "max_bytes"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            dg.jacobian_singular_values(nn.Linear(3, 3), torch.randn(2, 3), **kwargs)


def test_docstrings_state_the_cost():
    for fn in (dg.jacobian_singular_values, dg.spectral_gap, dg.stack_spectral_gap, dg.connectivity):
        assert "ost" in fn.__doc__ or "takes" in fn.__doc__, fn.__name__
