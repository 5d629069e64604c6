"""Regression benchmarks of the SAO products vs dense, one pytest-benchmark group per shape.

Compare the SAO rows of a group with its ``dense`` row (same shape, dtype and device):
pytest-benchmark's table then reads directly as the speed-up.  On CUDA the Triton kernels
are measured; on CPU the default backend.  Groups:

* ``op ...``: the three products and fwd+bwd at one large shape (op level, G in 1..16);
* ``small ...``: issue 13's small widths (128 and 512, T 128 and 1024, G 2 / 4 / 8), layers
  vs nn.Linear, fwd and fwd+bwd;
* ``mlp100 ...``: a 100-layer width-128 tanh MLP (G = 4) vs its dense twin, forward and a
  training step;
* ``contention ...``: the width-128 layer and the MLP step with a busy-loop process pinned on
  one core (only with --contention).

pytest-benchmark times each row separately; for interleaved SAO / dense timing with spread
and flags use ``python -m sao_kernels bench`` or benchmarks/bench_small_cpu.py.  The step
closures are sao_kernels.bench.steps', shared with those.
"""

import pytest
import torch
import torch.nn.functional as F

import sao_kernels as sk
from sao_kernels.bench import cases
from sao_kernels.bench.steps import fwd_bwd_step, module_steps, train_step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton" if DEVICE == "cuda" else "auto"
T, WIDTH = (8192, 4096) if DEVICE == "cuda" else (256, 1024)
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
GROUPS = [1, 2, 4, 8, 16]
OPS = ["fwd", "grad_input", "grad_values", "fwd_bwd"]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn):
    def call():
        fn()
        _sync()

    benchmark(call)


# ------------------------------------------------------------------------- op level
@pytest.fixture(scope="module")
def tensors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, WIDTH, generator=gen).to(DEVICE, DTYPE)
    dy = torch.randn(T, WIDTH, generator=gen).to(DEVICE, DTYPE)
    w = (torch.randn(WIDTH, WIDTH, generator=gen) / WIDTH**0.5).to(DEVICE, DTYPE)
    return x, dy, w


@pytest.mark.parametrize("op", OPS)
def test_dense(benchmark, tensors, op):
    x, dy, w = tensors
    benchmark.group = f"op {op} T={T} {WIDTH}x{WIDTH} {str(DTYPE)[6:]} {DEVICE}"
    if op == "fwd":
        fn = lambda: F.linear(x, w)  # noqa: E731
    elif op == "grad_input":
        fn = lambda: dy @ w  # noqa: E731
    elif op == "grad_values":
        fn = lambda: dy.t() @ x  # noqa: E731
    else:
        wr = w.detach().requires_grad_(True)
        fn = fwd_bwd_step(lambda xin: F.linear(xin, wr), x, dy, (wr,))
    _run(benchmark, fn)


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("op", OPS)
def test_sao(benchmark, tensors, op, groups):
    x, dy, _ = tensors
    benchmark.group = f"op {op} T={T} {WIDTH}x{WIDTH} {str(DTYPE)[6:]} {DEVICE}"
    benchmark.extra_info.update(groups=groups, backend=BACKEND, ideal_speedup=groups)
    layer = sk.SAOLinear(WIDTH, WIDTH, bias=False, groups=groups, device=DEVICE, dtype=DTYPE)
    v, ii, oi, b = layer.blocks().op_args()
    L = torch.ops.sao_kernels
    if op == "fwd":
        fn = lambda: L.linear(x, v, ii, oi, None, b)  # noqa: E731
    elif op == "grad_input":
        fn = lambda: L.linear_grad_input(dy, v, ii, oi, b)  # noqa: E731
    elif op == "grad_values":
        fn = lambda: L.linear_grad_values(dy, x, ii, oi, groups, b)  # noqa: E731
    else:
        fn = fwd_bwd_step(layer, x, dy, layer.parameters())
    with sk.backend(BACKEND):
        _run(benchmark, fn)


# ----------------------------------------------------------------- small widths (CPU)
SMALL = [(w, t) for w in cases.SMALL_WIDTHS for t in cases.SMALL_TOKENS]


@pytest.fixture(scope="module")
def small_layers():
    """(width, T) -> (x, {"dense": nn.Linear, G: SAOLinear}), float32 CPU."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for w, t in SMALL:
        dense, saos = cases.linear_layers(w, cases.SMALL_GROUPS, torch.float32, gen)
        out[(w, t)] = torch.randn(t, w, generator=gen), {"dense": dense, **saos}
    return out


@pytest.mark.parametrize("impl", ["dense", *cases.SMALL_GROUPS], ids=lambda v: v if v == "dense" else f"G{v}")
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("width, tokens", SMALL, ids=[f"w{w}-T{t}" for w, t in SMALL])
def test_small_width_layer(benchmark, small_layers, width, tokens, mode, impl):
    x, layers = small_layers[(width, tokens)]
    benchmark.group = f"small {mode} {width}x{width} T={tokens} float32 cpu"
    if impl != "dense":
        benchmark.extra_info.update(groups=impl, ideal_speedup=impl)
    fwd, fwd_bwd = module_steps(layers[impl], x, generator=torch.Generator().manual_seed(1))
    _run(benchmark, fwd if mode == "fwd" else fwd_bwd)


@pytest.fixture(scope="module")
def mlp_models():
    """The 100-layer width-128 tanh MLP at G = 4, its dense twin, and the input."""
    gen = torch.Generator().manual_seed(0)
    dense, saos = cases.tanh_mlp(cases.MLP_DEPTH, cases.MLP_WIDTH, cases.MLP_GROUPS, torch.float32, gen)
    x = torch.randn(cases.MLP_TOKENS, cases.MLP_WIDTH, generator=gen)
    return x, {"dense": dense, "sao": saos[cases.MLP_GROUPS[0]]}


def _mlp_step(model, x, mode):
    if mode == "fwd":
        return module_steps(model, x)[0]
    return train_step(model, x, torch.optim.SGD(model.parameters(), lr=1e-4))


@pytest.mark.parametrize("impl", ["dense", "sao"])
@pytest.mark.parametrize("mode", ["fwd", "train_step"])
def test_mlp_depth(benchmark, mlp_models, mode, impl):
    x, models = mlp_models
    benchmark.group = f"mlp{cases.MLP_DEPTH} {mode} width {cases.MLP_WIDTH} T={cases.MLP_TOKENS} float32 cpu"
    benchmark.extra_info.update(groups=cases.MLP_GROUPS[0] if impl == "sao" else 1)
    _run(benchmark, _mlp_step(models[impl], x, mode))


# ------------------------------------------------------------------ contention (CPU)
@pytest.mark.parametrize("impl", ["dense", 4], ids=["dense", "G4"])
def test_contention_layer(benchmark, small_layers, busy_core, impl):
    x, layers = small_layers[(128, 128)]
    benchmark.group = f"contention fwd_bwd 128x128 T=128 float32 cpu, busy core {busy_core['core']}"
    _run(benchmark, module_steps(layers[impl], x, generator=torch.Generator().manual_seed(1))[1])


@pytest.mark.parametrize("impl", ["dense", "sao"])
def test_contention_mlp_step(benchmark, mlp_models, busy_core, impl):
    x, models = mlp_models
    benchmark.group = f"contention mlp{cases.MLP_DEPTH} train_step, busy core {busy_core['core']}"
    _run(benchmark, _mlp_step(models[impl], x, "train_step"))
