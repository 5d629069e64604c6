"""sk.fuse_chains: the fused model equals the unfused one (forward, gradients of the input,
values and bias; float32, bfloat16, against float64), keeps its state_dict, folds where it
removes a permutation, compiles, refuses bad arguments, runs without the extension."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import _extension

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def mlp(widths, acts, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for (n, m), act in zip(zip(widths, widths[1:]), acts):
        layers.append(sk.SAOLinear(n, m, groups=4, generator=g, dtype=dtype))
        if act is not None:
            layers.append(act)
    return nn.Sequential(*layers)


def run(model, x):
    x = x.clone().requires_grad_(True)
    y = model(x)
    y.backward(torch.ones_like(y) + y.detach())  # a non-uniform upstream gradient
    grads = {name.replace("_orig_mod.", ""): p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return y.detach(), x.grad, grads


def compare(got, want, dtype):
    scale = max(float(want.abs().max()), 1.0)
    err = float((got.double() - want.double()).abs().max())
    assert err <= TOL[dtype] * scale, f"max error {err:.3e} > {TOL[dtype]:.1e} * {scale:.3g}"


CHAINS = {
    "square tanh": ([64, 64, 64, 64], [nn.Tanh(), nn.Tanh(), nn.Tanh()]),
    "ffn gelu": ([32, 128, 32], [nn.GELU(), None]),  # BERT-style: 128-wide maps on both sides
    "relu mixed": ([32, 96, 64, 32], [nn.ReLU(), nn.Tanh(), nn.GELU()]),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fold", ["auto", "always", "never"])
def test_fused_equals_unfused_and_float64(chain, dtype, fold):
    widths, acts = CHAINS[chain]
    ref = mlp(widths, copy.deepcopy(acts), dtype=dtype)
    fused = sk.fuse_chains(copy.deepcopy(ref), fold=fold)
    assert any(isinstance(m, sk.FusedSAOLinear) for m in fused.modules())
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(37, widths[0], generator=torch.Generator().manual_seed(1)).to(dtype)
    y, dx, grads = run(fused, x)
    y_ref, dx_ref, grads_ref = run(ref, x)
    y64, dx64, grads64 = run(ref64, x.double())
    compare(y, y_ref, dtype)
    compare(y, y64, dtype)
    compare(dx, dx_ref, dtype)
    compare(dx, dx64, dtype)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        compare(grads[name], grads_ref[name], dtype)
        compare(grads[name], grads64[name], dtype)


def test_what_is_fused_and_folded():
    widths, acts = CHAINS["ffn gelu"]
    model = sk.fuse_chains(mlp(widths, acts))
    assert isinstance(model[0], sk.FusedSAOLinear) and model[0].fused_activation == "gelu"
    assert isinstance(model[1], nn.Identity)
    # fc1's out_index and fc2's in_index are both permutations: folded into fc1's store
    assert model[0].fold_next is model[2] and model[2].input_grouped
    assert model[2].fused_activation is None
    # square layers have identity out_index: "auto" does not fold them, "always" does
    square = mlp([64, 64, 64], [nn.Tanh(), nn.Tanh()])
    assert torch.equal(square[0].out_index, torch.arange(64))
    auto = sk.fuse_chains(copy.deepcopy(square))
    assert auto[0].fold_next is None and not auto[2].input_grouped
    always = sk.fuse_chains(copy.deepcopy(square), fold="always")
    assert always[0].fold_next is always[2]


def test_state_dict_unchanged_and_loadable_both_ways():
    widths, acts = CHAINS["relu mixed"]
    ref = mlp(widths, acts)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    fused = sk.fuse_chains(copy.deepcopy(ref), fold="always")
    fsd = fused.state_dict()
    assert list(fsd) == list(sd)
    for k in sd:
        assert torch.equal(fsd[k], sd[k]), k
    # another model's state (other topology) into the fused one: the fold follows it
    other = mlp(widths, copy.deepcopy(acts), seed=7)
    fused.load_state_dict(other.state_dict())
    x = torch.randn(9, widths[0])
    torch.testing.assert_close(fused(x), other(x))
    # and the fused state into a fresh unfused model
    fresh = mlp(widths, copy.deepcopy(acts), seed=3)
    fresh.load_state_dict(fused.state_dict())
    torch.testing.assert_close(fresh(x), other(x))


def test_parameters_are_shared_not_copied():
    model = mlp([32, 32, 32], [nn.Tanh(), nn.Tanh()])
    params = [id(p) for p in model.parameters()]
    sk.fuse_chains(model)
    assert [id(p) for p in model.parameters()] == params


def test_nested_sequential_and_inference():
    inner = mlp([32, 64, 32], [nn.ReLU(), nn.ReLU()])
    model = nn.Sequential(nn.Linear(32, 32), inner)
    ref = copy.deepcopy(model)
    sk.fuse_chains(model)
    assert isinstance(model[1][0], sk.FusedSAOLinear)
    x = torch.randn(3, 5, 32)  # leading dims
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x))


def test_left_unfused_and_strict():
    model = nn.Sequential(sk.SAOLinear(32, 32, groups=4), nn.GELU(approximate="tanh"))
    sk.fuse_chains(model)
    assert type(model[0]) is sk.SAOLinear
    with pytest.raises(ValueError, match=r"cannot fuse '0'.*approximate='tanh'"):
        sk.fuse_chains(model, strict=True)
    hooked = nn.Sequential(sk.SAOLinear(32, 32, groups=4), nn.Tanh())
    hooked[0].register_forward_hook(lambda m, i, o: None)
    sk.fuse_chains(hooked)
    assert type(hooked[0]) is sk.SAOLinear
    with pytest.raises(ValueError, match="hooks"):
        sk.fuse_chains(hooked, strict=True)
    shared = sk.SAOLinear(32, 32, groups=4)
    twice = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh())
    sk.fuse_chains(twice)
    assert type(twice[0]) is sk.SAOLinear


def test_bad_arguments():
    model = mlp([32, 32], [nn.Tanh()])
    with pytest.raises(ValueError, match=r"fold='yes' is not supported; allowed: 'auto', 'always', 'never'"):
        sk.fuse_chains(model, fold="yes")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sk.fuse_chains([model])
    with pytest.raises(TypeError, match="strict must be a bool"):
        sk.fuse_chains(model, strict="yes")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fused_model():
    torch._dynamo.reset()
    widths, acts = CHAINS["ffn gelu"]
    ref = mlp(widths, acts)
    fused = sk.fuse_chains(copy.deepcopy(ref))
    compiled = torch.compile(fused)
    x = torch.randn(6, widths[0])
    y, dx, grads = run(compiled, x)
    y_ref, dx_ref, grads_ref = run(ref, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


NO_EXT_SCRIPT = r"""
import copy, torch, sao_kernels as sk
from torch import nn
assert not sk.ops.NATIVE
torch.manual_seed(0)
ref = nn.Sequential(sk.SAOLinear(32, 128, groups=4), nn.GELU(), sk.SAOLinear(128, 32, groups=4), nn.Tanh())
fused = sk.fuse_chains(copy.deepcopy(ref))
assert fused[0].fold_next is fused[2]
x = torch.randn(7, 32)
torch.testing.assert_close(fused(x), ref(x))
print("OK")
"""


def test_without_extension_in_a_subprocess():
    env = dict(os.environ, **{_extension.ENV_NO_EXT: "1"})
    proc = subprocess.run([sys.executable, "-c", NO_EXT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
