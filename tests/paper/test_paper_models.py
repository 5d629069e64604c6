"""The paper reproduction's building blocks: depth counting, the reference inits and
conventions, the optimiser, and the lr choice (benchmarks/paper/{models,training,planning}.py)."""

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

from paper import models, planning, training  # noqa: E402
from paper.settings import EOI_SIGMA_B, EOI_SIGMA_W, SETTINGS, Plan  # noqa: E402

import sao_kernels as sk  # noqa: E402


def _weight_layers(model):
    return [m for m in model.layers if isinstance(m, (torch.nn.Linear, sk.SAOLinear))]


@pytest.mark.parametrize("method", ["sao", "orthogonal", "eoi", "lmp", "sao:b8"])
def test_depth_counts_every_linear_layer_and_io_layers_stay_dense(method):
    model = models.build_mlp(method, 7, "tanh", 0.875, "eoi", seed=0)
    layers = _weight_layers(model)
    assert len(layers) == 7  # input + 5 hidden + head, as EOI's MLP(depth)
    first, last = layers[0], layers[-1]
    assert type(first) is torch.nn.Linear and type(last) is torch.nn.Linear
    for layer, shape in ((first, (128, 64)), (last, (10, 128))):
        w = layer.weight.detach().double()
        assert w.shape == shape
        gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
        torch.testing.assert_close(gram, EOI_SIGMA_W**2 * torch.eye(min(shape), dtype=torch.float64), atol=1e-5, rtol=0)
    # identical input and head layers across inits of one seed
    other = _weight_layers(models.build_mlp("orthogonal", 7, "tanh", 0.875, "eoi", seed=0))
    assert torch.equal(first.weight, other[0].weight) and torch.equal(last.weight, other[-1].weight)


def test_bias_conventions():
    eoi = models.build_mlp("sao", 4, "tanh", 0.875, "eoi", seed=3)
    biases = torch.cat([m.bias.detach() for m in _weight_layers(eoi)])
    assert 0.5 * EOI_SIGMA_B < float(biases.std()) < 2 * EOI_SIGMA_B
    sao = models.build_mlp("orthogonal", 4, "tanh", 0.875, "sao", seed=3)
    for layer in _weight_layers(sao):
        bound = 1 / math.sqrt(layer.in_features)
        b = layer.bias.detach()
        assert float(b.abs().max()) <= bound and float(b.std()) > 0.3 * bound  # torch's U(-1/sqrt(n), 1/sqrt(n))


def test_looks_linear_dense_and_eoi_givens():
    g = torch.Generator().manual_seed(0)
    w = models.looks_linear_orthogonal(16, 1.0, g)
    m = w[:8, :8]
    torch.testing.assert_close(w, torch.cat([torch.cat([m, -m], 1), torch.cat([-m, m], 1)], 0))
    h = torch.randn(5, 16, generator=g)
    x = torch.cat([torch.relu(h[:, :8]), torch.relu(-h[:, :8])], 1)
    torch.testing.assert_close((x @ w.T)[:, :8].norm(dim=1), h[:, :8].norm(dim=1), atol=1e-5, rtol=1e-5)
    a = models.givens_orthogonal(64, 0.125, np.random.default_rng(1))
    np.testing.assert_allclose(a @ a.T, np.eye(64), atol=1e-12)
    assert abs(np.count_nonzero(a) / a.size - 0.125) < 0.01
    layer = models.hidden_linear("eoi", 64, "tanh", 0.875, 1.0, g)
    assert isinstance(layer, models.MaskedLinear)
    assert torch.equal(layer.weight != 0, layer.weight_mask.bool())


def test_tile_size_that_does_not_divide_the_group_side_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        models.build_mlp("sao:b32", 4, "tanh", 0.875, "eoi", seed=0)  # G=8: group side 16
    model = models.build_mlp("sao:b32", 4, "tanh", 0.75, "eoi", seed=0)  # G=4: group side 32
    assert all(layer.block_size == 32 for layer in _weight_layers(model)[1:-1])


def test_reference_optimizer_and_schedule():
    model = models.build_mlp("orthogonal", 3, "tanh", 0.875, "sao", seed=0)
    opt, sched = training.make_optimizer(model, 0.1, 100)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[49] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.01)
    assert lrs[74] == pytest.approx(0.01) and lrs[75] == pytest.approx(0.001)


def test_masks_survive_momentum_and_weight_decay():
    model = models.build_mlp("lrp", 4, "tanh", 0.875, "sao", seed=0)
    pruned = [m for m in model.modules() if isinstance(m, models.MaskedLinear)]
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    opt, _ = training.make_optimizer(model, 0.1, 10)
    for _ in range(3):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        models.apply_masks_(model)
    assert pruned and all(torch.equal(m.weight != 0, m.weight_mask.bool()) for m in pruned)


def test_lr_choice_uses_validation_and_shared_lr_rules():
    s = next(x for x in SETTINGS if x.key == "mlp-d10-tanh")
    plan = Plan(settings=(s,))
    grid = [
        dict(setting=s.key, method=m, lr=lr, val_acc=acc, val_loss=1.0, test_acc=1 - acc, role="grid")
        for m, accs in (("orthogonal", (0.5, 0.9, 0.8, 0.7, 0.1)), ("sao", (0.2, 0.3, 0.4, 0.95, 0.9)))
        for lr, acc in zip(s.lr_grid, accs)
    ]
    choice = planning.choose_lrs(plan, grid)[s.key]
    assert choice["best"] == {"orthogonal": s.lr_grid[1], "sao": s.lr_grid[3]}
    assert choice["shared"] == s.lr_grid[1]  # the dense baseline's best
    buildable = {(s.key, m) for m in s.methods}
    jobs = planning.phase2_jobs(plan, 10, {s.key: choice}, buildable)
    sao = {(j["lr"], j["seed"]) for j in jobs if j["method"] == "sao"}
    # the tuning seed is not reported: every reported seed runs at the best and at the shared lr
    assert plan.tune_seed not in plan.seeds
    assert sao == {(lr, seed) for lr in (s.lr_grid[3], s.lr_grid[1]) for seed in plan.seeds}
    legacy = Plan(settings=(s,), tune_seed=None)  # the first run: seed 0's grid run is reported
    jobs = planning.phase2_jobs(legacy, 10, {s.key: choice}, buildable)
    sao = {(j["lr"], j["seed"]) for j in jobs if j["method"] == "sao"}
    assert sao == {(lr, seed) for lr in (s.lr_grid[3], s.lr_grid[1]) for seed in legacy.seeds[1:]}


def test_ladder_and_grid_extension_at_edges():
    assert [planning.ladder(x, +1) for x in (1e-4, 3e-4, 0.1)] == [3e-4, 1e-3, 0.3]
    assert [planning.ladder(x, -1) for x in (1e-4, 3e-4, 0.01)] == [3e-5, 1e-4, 3e-3]
    s = next(x for x in SETTINGS if x.key == "mlp-d1000-tanh")
    plan = Plan(settings=(s,), extend_edges=2)

    def grid(method, accs):
        return [
            dict(setting=s.key, method=method, lr=lr, val_acc=acc, val_loss=1.0, seed=plan.tune_seed)
            for lr, acc in accs.items()
        ]

    results = grid("sao", {1e-4: 0.8, 3e-4: 0.9, 1e-3: 0.95}) + grid("orthogonal", {1e-4: 0.8, 3e-4: 0.9, 1e-3: 0.7})
    jobs = planning.edge_jobs(plan, {s.key: 7}, results)
    assert [(j["method"], j["lr"], j["seed"], j["steps"]) for j in jobs] == [("sao", 3e-3, plan.tune_seed, 7)]
    results += grid("sao", {3e-3: 0.97})
    assert [j["lr"] for j in planning.edge_jobs(plan, 7, results)] == [1e-2]
    results += grid("sao", {1e-2: 0.98})
    assert planning.edge_jobs(plan, 7, results) == []  # extend_edges lrs beyond the grid: stop
    assert planning.choose_lrs(plan, results)[s.key]["best"]["sao"] == 1e-2


def test_planned_runs_bound_the_jobs():
    """The budget's worst-case run count is what phase 1, the edge rounds and phase 2 can generate."""
    for s in SETTINGS:
        plan = Plan(settings=(s,))
        buildable = {(s.key, m) for m in s.methods}
        jobs = planning.phase1_jobs(plan, 5, buildable)
        grid = [dict(j, val_acc=float(j["lr"]), val_loss=1.0) for j in jobs if j["role"] == "grid"]
        for _ in range(plan.extend_edges):  # the largest lr always wins: every round extends upwards
            more = planning.edge_jobs(plan, 5, grid)
            grid += [dict(j, val_acc=float(j["lr"]), val_loss=1.0) for j in more]
            jobs += more
        choice = planning.choose_lrs(plan, grid)
        if s.shared_lr is None and s.tuned:  # worst case: the baseline's best differs from the others'
            choice[s.key]["shared"] = min(lr for lr, _, _ in choice[s.key]["grid"][s.baseline])
            choice[s.key]["best"][s.baseline] = choice[s.key]["shared"]
        jobs += planning.phase2_jobs(plan, 5, choice, buildable)
        for m in s.methods:
            got = sum(j["method"] == m for j in jobs)
            assert got <= planning.planned_runs(s, m, plan), (s.key, m)
            if s.headline and m in s.tuned:
                seeds = {j["seed"] for j in jobs if j["method"] == m and j["role"] != "grid"}
                assert len(seeds) >= 5 and plan.tune_seed not in seeds


def test_rescaled_pruning_and_cnn_padding():
    plain = models.hidden_linear("lrp", 128, "tanh", 0.875, 1.0, torch.Generator().manual_seed(3))
    scaled = models.hidden_linear("lrp-s", 128, "tanh", 0.875, 1.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(scaled.weight, plain.weight / math.sqrt(0.125))
    assert torch.equal(scaled.weight_mask, plain.weight_mask)
    cnn = next(x for x in SETTINGS if x.arch == "cnn")
    assert cnn.padding == "circular"
    for method in cnn.methods:
        spec = dict(planning.base_spec(cnn, method, Plan()), depth=3, channels=8, seed=0)
        convs = [m for m in models.build(spec).modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and {c.padding_mode for c in convs} == {"circular"}, method


def test_job_cache_resumes_finished_jobs(tmp_path):
    path = tmp_path / "jobs.cache.jsonl"
    cache = training.JobCache(path, load=False)
    job = dict(setting="s", method="sao", lr=0.1, seed=0, steps=5)
    cache.add(job, dict(job, test_acc=0.5))
    resumed = training.JobCache(path, load=True)
    assert resumed.done[resumed.key(job)]["test_acc"] == 0.5
    assert resumed.key(dict(job, steps=6)) not in resumed.done  # a new budget is a new job
    ran = []
    out = training.run_pool(
        lambda j: ran.append(j) or dict(j, test_acc=0.9), [job, dict(job, seed=1)], 1, lambda msg: None, cache=resumed
    )
    assert [r["test_acc"] for r in out] == [0.5, 0.9] and [j["seed"] for j in ran] == [1]
    assert training.JobCache(path, load=False).done == {} and not path.exists()
