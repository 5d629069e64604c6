"""GPU-only checks (skipped without CUDA): compiled Triton kernels on large and odd shapes, every
launcher path (fused, split-K, permute-then-contiguous), int64 offsets, the tensors' own device,
registers / spills of the kernels as this GPU's Triton builds them, tf32, AMP, torch.compile,
deterministic grad-values and short training runs."""

import pytest
import torch
from torch import nn

import sao_kernels as sk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _exact_fp32(monkeypatch):
    """Every test starts with tf32 off (torch's default) and NaN-poisoned outputs."""
    monkeypatch.setenv("SAO_KERNELS_POISON", "1")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def _rel(got, ref):
    assert not torch.isnan(got).any()
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _run_permutation(size, run, device="cuda"):
    tiles = torch.randperm(size // run, device=device)
    return (tiles[:, None] * run + torch.arange(run, device=device)).reshape(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("T", [1, 37, 2048, 16384])
@pytest.mark.parametrize(
    "shape",
    [(4096, 4096, 16, 1), (4096, 4096, 8, 64), (1000, 3000, 5, 1), (3000, 1000, 5, 8), (768, 3072, 4, 16)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_triton_matches_float64_on_cuda(dtype, T, shape):
    n, m, G, b = shape
    blocks = sk.sao_blocks(m, n, groups=G, block_size=b, smaller_groups="contiguous", device="cuda", dtype=dtype)
    W = blocks.to_dense().double()
    x = torch.randn(T, n, device="cuda", dtype=dtype)
    dy = torch.randn(T, m, device="cuda", dtype=dtype)
    with sk.backend("triton"):
        y = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, b)
        dx = torch.ops.sao_kernels.linear_grad_input(dy, blocks.values, blocks.in_index, blocks.out_index, b)
        dv = torch.ops.sao_kernels.linear_grad_values(dy, x, blocks.in_index, blocks.out_index, G, b)
    xd, dyd = x.double(), dy.double()
    dv_ref = (dyd.t() @ xd)[blocks.out_index.view(G, -1, 1), blocks.in_index.view(G, 1, -1)]
    # Reductions over T tokens: float32 accumulation error grows like sqrt(T).
    tol = TOL[dtype] * (1 if dtype != torch.float32 else max(1.0, (T / 2048) ** 0.5))
    assert _rel(y, xd @ W.t()) < tol
    assert _rel(dx, dyd @ W) < tol
    assert _rel(dv, dv_ref) < tol * 4


@pytest.mark.parametrize("gather,split", [("fused", None), ("permute", None), ("fused", 4), ("permute", 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T", [16, 2048])
def test_every_launcher_path_on_cuda(gather, split, dtype, T):
    """The paths the heuristics choose between, each forced, at a real size (b = 1, G = 16)."""
    from sao_kernels.ops.triton import grouped_gather_matmul, grouped_grad_values

    G, a, c = 16, 256, 256
    ii, oi = _run_permutation(G * c, 1), _run_permutation(G * a, 1)
    values = torch.randn(G, a, c, device="cuda", dtype=dtype) / c**0.5
    bias = torch.randn(G * a, device="cuda", dtype=dtype)
    x = torch.randn(T, G * c, device="cuda", dtype=dtype)
    dy = torch.randn(T, G * a, device="cuda", dtype=dtype)
    W = torch.zeros(G * a, G * c, device="cuda", dtype=torch.float64)
    for g in range(G):
        W[oi[g * a : (g + 1) * a, None], ii[None, g * c : (g + 1) * c]] = values[g].double()
    y = grouped_gather_matmul(x, ii, values, oi, bias, gather=gather, split_k=split)
    dx = grouped_gather_matmul(dy, oi, values.transpose(1, 2), ii, None, gather=gather, split_k=split)
    dv = grouped_grad_values(dy, x, ii, oi, G, gather=gather, splits=split)
    dv_ref = (dy.double().t() @ x.double())[oi.view(G, -1, 1), ii.view(G, 1, -1)]
    assert _rel(y, x.double() @ W.t() + bias.double()) < TOL[dtype]
    assert _rel(dx, dy.double() @ W) < TOL[dtype]
    assert _rel(dv, dv_ref) < TOL[dtype] * 4


@pytest.mark.parametrize("T", [2048, 2047])  # T_ALIGN 16 and 1
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_token_contiguous_activations_on_cuda(T, dtype):
    """Column-major (feature-major) x and dY: masks and vector loads along T, any T."""
    n, m, G, b = 4096, 4096, 16, 16
    blocks = sk.sao_blocks(m, n, groups=G, block_size=b, device="cuda", dtype=dtype)
    W = blocks.to_dense().double()
    x = torch.randn(n, T, device="cuda", dtype=dtype).t()
    dy = torch.randn(m, T, device="cuda", dtype=dtype).t()
    with sk.backend("triton"):
        y = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, b)
        dx = torch.ops.sao_kernels.linear_grad_input(dy, blocks.values, blocks.in_index, blocks.out_index, b)
        dv = torch.ops.sao_kernels.linear_grad_values(dy, x, blocks.in_index, blocks.out_index, G, b)
    dv_ref = (dy.double().t() @ x.double())[blocks.out_index.view(G, -1, 1), blocks.in_index.view(G, 1, -1)]
    assert _rel(y, x.double() @ W.t()) < TOL[dtype]
    assert _rel(dx, dy.double() @ W) < TOL[dtype]
    assert _rel(dv, dv_ref) < TOL[dtype] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T,b", [(1, 16), (16, 1), (2048, 16), (8192, 1)])
def test_this_gpus_kernels_do_not_spill(dtype, T, b):
    """The default plans, built by this machine's Triton for this GPU: no spills, shared memory
    within the device's limit (the CPU compile check does the same with CI's Triton)."""
    from sao_kernels.ops.triton import _common
    from sao_kernels.ops.triton.gather_matmul import plan_gather_matmul
    from sao_kernels.ops.triton.grad_values import plan_grad_values

    G, n = 16, 4096
    idx = _run_permutation(n, b)
    x = torch.randn(T, n, device="cuda", dtype=dtype)
    values = torch.randn(G, n // G, n // G, device="cuda", dtype=dtype)
    device = _common.device_of(x)
    precision = _common.dot_precision(dtype)
    _, fwd = plan_gather_matmul(x, idx, values, idx, None, lhs_run=b, out_run=b, device=device, precision=precision)
    _, gv = plan_grad_values(x, x, idx, idx, G, in_run=b, out_run=b, device=device, precision=precision)
    limit = torch.cuda.get_device_properties(x.device).shared_memory_per_block_optin
    for step in fwd + gv:
        blocks = step.tiles.constexprs()
        compiled = step.kernel[step.grid(blocks)](
            **step.args, **blocks, num_warps=step.tiles.num_warps, num_stages=step.tiles.num_stages
        )
        assert getattr(compiled, "n_spills", 0) == 0, (step.kernel.__name__, blocks, compiled.n_regs)
        assert compiled.metadata.shared <= limit


def test_int64_offsets_on_cuda():
    """T * n >= 2**31 elements: offsets are computed in int64 (the last rows are checked)."""
    T, n, G, b = 600_000, 4096, 16, 16
    blocks = sk.sao_blocks(n, n, groups=G, block_size=b, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(T, n, device="cuda", dtype=torch.bfloat16)
    with sk.backend("triton"):
        y = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, b)
    tail = x[-64:].double() @ blocks.to_dense().double().t()
    assert _rel(y[-64:], tail) < TOL[torch.bfloat16]
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launch_follows_the_tensors_device():
    blocks = sk.sao_blocks(512, 512, groups=4, device="cuda:1", dtype=torch.float32)
    x = torch.randn(64, 512, device="cuda:1")
    with torch.cuda.device(0), sk.backend("triton"):
        y = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, 1)
        dv = torch.ops.sao_kernels.linear_grad_values(y, x, blocks.in_index, blocks.out_index, 4, 1)
    assert y.device == x.device and dv.device == x.device
    assert _rel(y, x.double() @ blocks.to_dense().double().t()) < 1e-5


def test_tf32_follows_torch_flag():
    blocks = sk.sao_blocks(1024, 1024, groups=4, device="cuda", dtype=torch.float32)
    x = torch.randn(2048, 1024, device="cuda")
    dy = torch.randn(2048, 1024, device="cuda")
    W = blocks.to_dense().double()
    with sk.backend("triton"):
        exact = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, 1)
        torch.backends.cuda.matmul.allow_tf32 = True
        fast = torch.ops.sao_kernels.linear(x, blocks.values, blocks.in_index, blocks.out_index, None, 1)
        # grad-input with tf32 reads a K-contiguous copy of V (tf32 MMAs take K-major operands)
        dx = torch.ops.sao_kernels.linear_grad_input(dy, blocks.values, blocks.in_index, blocks.out_index, 1)
    assert _rel(exact, x.double() @ W.t()) < 1e-5
    assert 1e-6 < _rel(fast, x.double() @ W.t()) < 5e-3  # tf32 rounding is visible, and small
    assert _rel(dx, dy.double() @ W) < 5e-3


def test_grad_values_bitwise_deterministic_on_cuda():
    blocks = sk.sao_blocks(4096, 4096, groups=8, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    with sk.backend("triton"):
        a = torch.ops.sao_kernels.linear_grad_values(dy, x, blocks.in_index, blocks.out_index, 8, 1)
        b = torch.ops.sao_kernels.linear_grad_values(dy, x, blocks.in_index, blocks.out_index, 8, 1)
        y1 = torch.ops.sao_kernels.linear(x[:4], blocks.values, blocks.in_index, blocks.out_index, None, 1)
        y2 = torch.ops.sao_kernels.linear(x[:4], blocks.values, blocks.in_index, blocks.out_index, None, 1)
    assert torch.equal(a, b)
    assert torch.equal(y1, y2)  # small T: split-K partials summed in a fixed order


def test_compile_and_amp_on_cuda():
    torch._dynamo.reset()
    model = nn.Sequential(sk.SAOLinear(512, 1024, groups=4), nn.GELU(), sk.SAOLinear(1024, 512, groups=4)).cuda()
    x = torch.randn(64, 512, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.allclose(eager, compiled, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert model[0].values.grad.dtype == torch.float32


def _train(model, x, y, steps=200, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_sao_mlp_and_cnn_train_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(512, 256, device="cuda")
    y = (x[:, :8].sum(1) > 0).long() + 2 * (x[:, 8:16].sum(1) > 0).long()
    mlp = nn.Sequential(
        sk.SAOLinear(256, 512, groups=4), nn.Tanh(), sk.SAOLinear(512, 512, groups=4), nn.Tanh(), nn.Linear(512, 4)
    ).cuda()
    losses = _train(mlp, x, y)
    assert losses[-1] < 0.5 * losses[0]
    xi = torch.randn(128, 16, 8, 8, device="cuda")
    yi = (xi[:, :4].mean((1, 2, 3)) > 0).long()
    cnn = nn.Sequential(
        sk.SAOConv2d(16, 32, 3, padding=1, groups=4),
        nn.ReLU(),
        sk.SAOConv2d(32, 32, 3, padding=1, groups=4, init="eco", padding_mode="circular"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    ).cuda()
    losses = _train(cnn, xi, yi)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_rule_on_cuda_matches_nn_linear_and_conv2d(cast):
    """The CUDA twin of tests/layers/test_autocast.py: same dtype out as the dense module under
    the same autocast, or both raise (float64 is not cast, integers are not cast)."""
    torch.manual_seed(0)
    lin = sk.SAOLinear(64, 128, groups=4, device="cuda", dtype=torch.float64)
    conv = sk.SAOConv2d(16, 32, 3, padding=1, groups=4, device="cuda", dtype=torch.float64)
    pairs = []
    for ours, dense in ((lin, nn.Linear(64, 128)), (conv, nn.Conv2d(16, 32, 3, padding=1))):
        dense = dense.to("cuda", torch.float64)
        with torch.no_grad():
            dense.weight.copy_(ours.dense_weight())
            dense.bias.copy_(ours.bias)
        pairs.append((ours, dense, (8, 64) if ours is lin else (2, 16, 6, 6)))
    for ours, dense, shape in pairs:
        for layer_dtype in (torch.float32, torch.float64, torch.bfloat16):
            ours_t, dense_t = ours.to(layer_dtype), dense.to(layer_dtype)
            for x_dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64):
                x = torch.randn(shape, device="cuda").to(x_dtype)
                got, want = [], []
                for module, out in ((ours_t, got), (dense_t, want)):
                    with torch.autocast("cuda", dtype=cast):
                        try:
                            out.append(module(x).dtype)
                        except (RuntimeError, TypeError, ValueError):
                            out.append("raises")
                assert got == want, (type(ours).__name__, layer_dtype, x_dtype, got, want)


def test_checkpointing_on_cuda_equals_plain():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(sk.SAOLinear(64, 128, groups=4), nn.Tanh(), sk.SAOLinear(128, 64, groups=4)).cuda()
    x = torch.randn(32, 64, device="cuda")
    grads = []
    for run in (lambda x: model(x), lambda x: checkpoint(model, x, use_reentrant=False)):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        run(xi).square().sum().backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
