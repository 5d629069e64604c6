"""Init-time measures (float64, no training): EOI's isometry table, the Jacobian spread of
the trained architectures by depth, the tile-partition diagnostics, connectivity, and
orthogonality.  ``measure_job({"kind": ...})`` runs one of them (in the process pool)."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
from torch import nn

import sao_kernels as sk
from sao_kernels import diagnostics as dg

from .data import digits
from .models import MaskedLinear, build_mlp, givens_orthogonal, looks_linear_orthogonal
from .settings import Plan
from .training import pilot_job, setup_process


def _float64(fn):
    """Build and measure in float64: every layer is constructed in it, not cast from float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_default_dtype(old)

    return wrapper


def _spread_row(s: torch.Tensor) -> dict:
    smax, smin = s[:, 0], s[:, -1]
    ratio = torch.where(smin > 0, smax / smin, torch.full_like(smax, float("inf")))
    return dict(
        mean=float(s.mean()),
        rms=float(s.square().mean().sqrt()),
        max=float(smax.median()),
        min=float(smin.median()),
        log10_cond=float(torch.log10(ratio).median()),
    )


@_float64
def spread_by_depth(
    plan: Plan,
    act: str,
    convention: str,
    methods: tuple[str, ...],
    depths: tuple[int, ...],
    sparsity: float = 0.875,
    seed: int = 0,
) -> list[dict]:
    """Jacobian singular values of the first k hidden layers of the trained MLP at init."""
    x = digits()["train"][0][: plan.spread_samples].double()
    rows = []
    for method in methods:
        try:
            model = build_mlp(method, max(depths) + 2, act, sparsity, convention, seed).double()
        except ValueError as err:
            rows.append(
                dict(method=method, act=act, convention=convention, sparsity=sparsity, seed=seed, error=str(err))
            )
            continue
        with torch.no_grad():
            h0 = model.act(model.layers[0](x))
        for depth in depths:
            s = dg.jacobian_singular_values(model.hidden_stack(depth), h0)
            rows.append(
                dict(
                    method=method,
                    act=act,
                    convention=convention,
                    sparsity=sparsity,
                    seed=seed,
                    depth=depth,
                    **_spread_row(s),
                )
            )
    return rows


def tile_connectivity(plan: Plan, sparsity: float, block: int) -> dict:
    """Full-connectivity depth and path-count mixing of stacks of SAO masks with tiles of ``block``."""
    fulls, fracs, sigma2 = [], [], None
    for seed in plan.conn_seeds:
        g = torch.Generator().manual_seed(seed)
        try:
            stack = [
                sk.SAOLinear(
                    plan.conn_width, plan.conn_width, bias=False, sparsity=sparsity, block_size=block, generator=g
                )
                for _ in range(plan.conn_depth)
            ]
        except ValueError as err:
            return dict(sparsity=sparsity, block=block, error=str(err))
        c = dg.connectivity(stack)
        fulls.append(c.full_depth)
        fracs.append(c.fractions)
        if sigma2 is None:
            sigma2 = dg.stack_spectral_gap(stack[:6]).sigma2
    return dict(
        sparsity=sparsity, block=block, full_depths=fulls, fractions=np.mean(np.array(fracs), 0).tolist(), sigma2=sigma2
    )


def _iso_layer(init: str, width: int, act: str, sparsity: float, g: torch.Generator) -> nn.Module:
    relu_gain = math.sqrt(2) if act == "relu" else 1.0
    if init == "orthogonal":
        lin = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(lin.weight, gain=relu_gain, generator=g)
        return lin
    sao_act = "relu" if act == "relu" else "tanh"
    if init in ("sao", "rg-n"):
        return sk.SAOLinear(
            width,
            width,
            bias=False,
            sparsity=sparsity,
            activation=sao_act,
            init=init,
            gain=relu_gain if init == "rg-n" else 1.0,
            generator=g,
        )
    if init == "eoi":
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        a = torch.as_tensor(givens_orthogonal(width, 1 - sparsity, rng)) * relu_gain
        layer = MaskedLinear(a, (a != 0).double())
    else:
        w = torch.empty(width, width)
        fill = sk.init.magnitude_prune_ if init == "lmp" else sk.init.random_prune_
        mask = fill(w, sparsity, base="orthogonal", gain=relu_gain, generator=g)
        layer = MaskedLinear(w, mask.double())
    layer.bias = None
    return layer


@_float64
def isometry(plan: Plan) -> list[dict]:
    """EOI's table: 7-layer width-100 MLPs at init, Jacobian singular values on N(0, I) inputs."""
    width, rows = plan.iso_width, []
    densities = sorted({round(1 - s, 6) for s in sk.valid_sparsities(width, width)} | {1.0}, reverse=True)
    densities = [d for d in densities if d >= plan.iso_min_density]
    act_mod = {"linear": nn.Identity, "tanh": nn.Tanh, "hardtanh": nn.Hardtanh, "relu": nn.ReLU}
    for act in ("linear", "tanh", "hardtanh", "relu"):
        for density in densities:
            sparsity = round(1 - density, 6)
            for init in ["orthogonal"] if density == 1.0 else ["sao", "eoi", "rg-n", "lmp", "lrp"]:
                svs, note = [], ""
                for seed in plan.iso_seeds:
                    g = torch.Generator().manual_seed(seed)
                    try:
                        layers = [_iso_layer(init, width, act, sparsity, g) for _ in range(plan.iso_depth)]
                    except ValueError as err:
                        note = str(err).split(";")[0]
                        break
                    net = nn.Sequential(*[m for layer in layers for m in (layer, act_mod[act]())]).double()
                    x = torch.randn(plan.iso_samples, width, generator=g, dtype=torch.float64)
                    svs.append(dg.jacobian_singular_values(net, x).flatten())
                row = dict(act=act, density=density, init=init, mean=None, max=None, min=None, var=None)
                if svs:
                    s = torch.cat(svs)
                    row.update(mean=float(s.mean()), max=float(s.max()), min=float(s.min()), var=float(s.var()))
                else:
                    row["note"] = note
                rows.append(row)
    return rows


def connectivity(plan: Plan) -> dict:
    """Depth to full connectivity of stacks of SAO / EOI / LRP / LMP masks; path-count mixing."""
    rows, gaps = [], []
    w = plan.conn_width
    for sp in plan.conn_sparsities:
        for init in ("sao", "eoi", "lrp", "lmp"):
            fulls, fracs = [], []
            for seed in plan.conn_seeds:
                g = torch.Generator().manual_seed(seed)
                stack = [_conn_layer(init, w, sp, g) for _ in range(plan.conn_depth)]
                c = dg.connectivity(stack)
                fulls.append(c.full_depth)
                fracs.append(c.fractions)
                if seed == plan.conn_seeds[0] and sp == 0.875 and init in ("sao", "eoi", "lrp"):
                    st, one = dg.stack_spectral_gap(stack[:6]), dg.spectral_gap(stack[0])
                    gaps.append(
                        dict(
                            init=init,
                            sparsity=sp,
                            width=w,
                            sigma2=st.sigma2,
                            ramanujan_reference=st.ramanujan_reference,
                            single_sigma1=one.sigma1,
                            single_sigma2=one.sigma2,
                            single_bound=one.ramanujan_bound,
                            single_components=one.components,
                        )
                    )
            rows.append(
                dict(init=init, width=w, sparsity=sp, full_depths=fulls, fractions=np.mean(np.array(fracs), 0).tolist())
            )
    big = []
    for sp in plan.conn_big_sparsities:
        g = torch.Generator().manual_seed(0)
        stack = [
            sk.SAOLinear(plan.conn_big_width, plan.conn_big_width, sparsity=sp, bias=False, generator=g)
            for _ in range(10)
        ]
        t = time.perf_counter()
        c = dg.connectivity(stack)
        big.append(
            dict(width=plan.conn_big_width, sparsity=sp, full_depth=c.full_depth, seconds=time.perf_counter() - t)
        )
    return dict(rows=rows, gaps=gaps, big=big)


def _conn_layer(init: str, width: int, sparsity: float, g: torch.Generator):
    if init == "sao":
        return sk.SAOLinear(width, width, sparsity=sparsity, bias=False, generator=g)
    if init == "eoi":
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        return torch.as_tensor(givens_orthogonal(width, 1 - sparsity, rng) != 0)
    w = torch.empty(width, width)
    fill = sk.init.magnitude_prune_ if init == "lmp" else sk.init.random_prune_
    return fill(w, sparsity, base="orthogonal", generator=g)


@_float64
def orthogonality() -> list[dict]:
    """max |W W^T - I| at init of the layers the experiments use."""
    g = torch.Generator().manual_seed(0)
    layers = [
        (f"SAOLinear 128x128 s={s} b={b}", sk.SAOLinear(128, 128, sparsity=s, block_size=b, generator=g))
        for s, b in ((0.875, 1), (0.875, 8), (0.875, 16), (0.75, 32))
    ]
    layers += [
        (
            "SAOLinear relu (looks-linear) 128x128 s=0.875",
            sk.SAOLinear(128, 128, sparsity=0.875, activation="relu", generator=g),
        ),
        ("SAOConv2d delta 32ch 3x3 s=0.75", sk.SAOConv2d(32, 32, 3, sparsity=0.75, init="delta", generator=g)),
        ("SAOConv2d eco 32ch 3x3 s=0.75", sk.SAOConv2d(32, 32, 3, sparsity=0.75, init="eco", generator=g)),
    ]
    rows = []
    for name, layer in layers:
        row = dict(layer=name, flatten=dg.orthogonality_error(layer))
        if isinstance(layer, sk.SAOConv2d):
            row["operator_3x3"] = dg.orthogonality_error(layer, conv="operator", input_size=3)
            row["operator_8x8"] = dg.orthogonality_error(layer, conv="operator", input_size=8)
            row["operator_9x9_dil3"] = dg.orthogonality_error(layer, conv="operator", input_size=9, dilation=3)
        rows.append(row)
    rng = np.random.default_rng(0)
    givens = torch.as_tensor(givens_orthogonal(128, 0.125, rng))
    rows.append(
        dict(
            layer=f"EOI Givens 128x128 density {float((givens != 0).double().mean()):.4f}",
            flatten=dg.orthogonality_error(givens),
        )
    )
    rows.append(
        dict(layer="looks-linear dense 128x128", flatten=dg.orthogonality_error(looks_linear_orthogonal(128, 1.0, g)))
    )
    for name, fill in (("LRP", sk.init.random_prune_), ("LMP", sk.init.magnitude_prune_)):
        w = torch.empty(128, 128)
        fill(w, 0.875, base="orthogonal", generator=g)
        rows.append(dict(layer=f"{name} of orthogonal 128x128 s=0.875", flatten=dg.orthogonality_error(w)))
    return rows


def measure_jobs(plan: Plan) -> list[dict]:
    """The init-time measures as independent jobs (they run in the pool next to the pilot)."""
    deep = max(plan.spread_depths)
    tanh = ("sao", "orthogonal", "eoi", "rg-n", "rg-u", "lmp", "lrp")
    jobs = [dict(kind="isometry"), dict(kind="connectivity"), dict(kind="orthogonality")]
    jobs.append(dict(kind="spread", act="tanh", convention="sao", methods=tanh, cost=deep * 7))
    jobs.append(dict(kind="spread", act="tanh", convention="eoi", methods=("sao", "orthogonal", "eoi"), cost=deep * 3))
    for convention in ("sao", "eoi-relu"):  # torch's default biases vs EOI's small ones, gain 1
        jobs.append(
            dict(
                kind="spread",
                act="relu",
                convention=convention,
                methods=("sao", "ll-orthogonal", "orthogonal", "rg-n"),
                cost=deep * 4,
            )
        )
    for seed in plan.tile_seeds:
        for sparsity, blocks in (
            (0.875, ("sao", "sao:b8", "sao:b16", "sao:b32")),
            (0.75, ("sao", "sao:b8", "sao:b16", "sao:b32")),
        ):
            for depth, convention in zip(plan.tile_spread_depths, ("sao", "eoi")):
                jobs.append(
                    dict(
                        kind="tile-spread",
                        sparsity=sparsity,
                        methods=blocks,
                        depth=depth,
                        convention=convention,
                        seed=seed,
                        cost=depth * 4,
                    )
                )
    jobs += [dict(kind="tile-connectivity", sparsity=s, block=b) for s in (0.875, 0.75) for b in (1, 8, 16, 32)]
    return jobs


def measure_job(spec: dict) -> dict:
    setup_process()
    plan: Plan = spec["plan"]
    t, cpu = time.perf_counter(), time.process_time()
    kind = spec["kind"]
    if kind == "isometry":
        out = isometry(plan)
    elif kind == "connectivity":
        out = connectivity(plan)
    elif kind == "orthogonality":
        out = orthogonality()
    elif kind == "spread":
        out = spread_by_depth(plan, spec["act"], spec["convention"], spec["methods"], plan.spread_depths)
    elif kind == "tile-spread":
        out = spread_by_depth(
            plan,
            "tanh",
            spec["convention"],
            spec["methods"],
            (spec["depth"],),
            sparsity=spec["sparsity"],
            seed=spec["seed"],
        )
    elif kind == "tile-connectivity":
        out = tile_connectivity(plan, spec["sparsity"], spec["block"])
    else:
        raise ValueError(f"unknown measure {kind!r}")
    return {
        **{k: v for k, v in spec.items() if k != "plan"},
        "result": out,
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - cpu,
    }


def first_stage_job(spec: dict) -> dict:
    """Pool entry of the first stage: an init-time measure or a step-time pilot."""
    return measure_job(spec) if "kind" in spec else pilot_job(spec)
