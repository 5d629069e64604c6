"""The diagnostics estimate their cost before they start.

``jacobian_singular_values`` refuses a run above its memory / flop limits with a message
naming the sizes and the limits (the README's transformer example at (16, 10, 512) used to
be killed at 23 GB RSS); ``spectral_gap`` of an SAO layer is read in closed form (a
4096 x 4096 layer took 432 s of dense SVD) and other masks are solved per connected
component, with a refusal above ``max_exact``.  Limits are checked by counting (flops,
bytes, which routine ran), never by the wall clock.
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


# ------------------------------------------------------------------------- Jacobians
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


# ---------------------------------------------------------------------- spectral gap
@pytest.fixture
def no_dense_svd(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dense decomposition ran")

    for name in ("svdvals", "eigvalsh", "svd"):
        monkeypatch.setattr(torch.linalg, name, refuse)


def sao_format(width, groups, seed=0):
    """An SAO layer's topology without drawing its values (zeros)."""
    sizes = sk.resolve_sizes(width, width, groups=groups)
    out_index, in_index = sk.init.sao_topology(sizes, smaller_groups="contiguous", generator=gen(seed))
    return sk.GroupedBlockFormat(torch.zeros(groups, width // groups, width // groups), in_index, out_index)


def test_spectral_gap_of_a_4096_sao_layer_is_closed_form(no_dense_svd):
    sg = dg.spectral_gap(sao_format(4096, 8))
    assert sg.sigma1 == sg.sigma2 == 512.0 and sg.components == 8 and not sg.ramanujan
    assert sg.left_degree == sg.right_degree == 512 and sg.biregular
    assert "appears 8 times" in sg.note and "Every other singular value is 0" in sg.note


@pytest.mark.parametrize("shape,groups", [((24, 48), 4), ((48, 24), 3), ((32, 32), 1), ((30, 30), 15)])
def test_closed_form_equals_the_dense_mask_path(shape, groups):
    layer = sk.SAOLinear(shape[1], shape[0], groups=groups, generator=gen(3))
    closed = dg.spectral_gap(layer)
    dense = dg.spectral_gap(dg.layer_mask(layer))
    for field in ("sigma1", "sigma2", "ramanujan_bound", "left_degree", "right_degree"):
        assert getattr(closed, field) == pytest.approx(getattr(dense, field), rel=1e-12, abs=1e-9), field
    assert (closed.components, closed.ramanujan, closed.biregular) == (
        dense.components,
        dense.ramanujan,
        dense.biregular,
    )


def test_components_are_solved_separately_and_match_a_full_svd():
    rng = torch.Generator().manual_seed(4)
    parts = [torch.rand(r, c, generator=rng) < 0.6 for r, c in [(20, 30), (7, 5), (40, 40)]]
    mask = torch.block_diag(*parts)
    perm_r, perm_c = torch.randperm(mask.shape[0], generator=rng), torch.randperm(mask.shape[1], generator=rng)
    mask = mask[perm_r][:, perm_c]
    full = torch.linalg.svdvals(mask.to(F64))
    sg = dg.spectral_gap(mask)
    assert sg.sigma1 == pytest.approx(float(full[0]), rel=1e-12)
    assert sg.sigma2 == pytest.approx(float(full[1]), rel=1e-12)
    assert sg.components == dg.spectral_gap(mask, max_exact=4096).components


def test_large_component_uses_the_gram_path_exactly(monkeypatch):
    """A connected 1100 x 1200 mask (smaller side > 1024): eigenvalues of the Gram matrix."""
    mask = torch.rand(1100, 1200, generator=gen(5)) < 0.05
    calls = []
    inner = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda a: calls.append(a.shape) or inner(a))
    sg = dg.spectral_gap(mask)
    assert calls == [(1100, 1100)]
    monkeypatch.undo()
    full = torch.linalg.svdvals(mask.to(F64))
    assert sg.sigma1 == pytest.approx(float(full[0]), rel=1e-10)
    assert sg.sigma2 == pytest.approx(float(full[1]), rel=1e-10)
    assert sg.components == 1


def test_component_above_max_exact_is_refused():
    mask = torch.ones(64, 80, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"connected component of 64 x 80 .*64 x 64 Gram matrix.*above max_exact=16"):
        dg.spectral_gap(mask, max_exact=16)
    with pytest.raises(ValueError, match="max_exact must be a positive int"):
        dg.spectral_gap(mask, max_exact=0)
    # a block-diagonal mask whose blocks fit is fine at the same limit
    assert dg.spectral_gap(torch.block_diag(*[torch.ones(8, 8, dtype=torch.bool)] * 8), max_exact=16).components == 8


def test_stack_spectral_gap_reads_sao_degrees_without_dense_masks(monkeypatch):
    layers = [sao_format(64, 4, seed) for seed in range(3)]
    from sao_kernels.diagnostics import graphs

    monkeypatch.setattr(graphs.Topology, "dense", lambda self: (_ for _ in ()).throw(AssertionError("dense mask")))
    st = dg.stack_spectral_gap(layers)
    assert st.layer_bounds[0] == pytest.approx(2 * math.sqrt(15) / 16)
    assert st.sigma2[0] == pytest.approx(1.0)
