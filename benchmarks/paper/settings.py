"""The reference configurations: ONE table (``SETTINGS``) of every training setting the
reproduction runs, the optimiser they share, the per-reference init conventions, and the
shrunken ``--quick`` variant used by CI.

Sources checked (file paths in the reference repositories):

* EOI, Nowak et al. ICML 2024 (github.com/Onchao/sparser-better-deeper-stronger):
  ``specs/1000-layer-networks/deep-mlp.py`` (depth 1000, width 128, tanh, sigma_w 1.0247,
  sigma_b 0.00448, lr 1e-4, l2 1e-4, batch 128, 100 epochs, seeds 1..5, SAO degree 16 =
  density 0.125), ``setup_utils.py`` (get_optimizer_for_params: SGD with ``nesterov=True``),
  ``main.py`` (momentum 0.9; MultiStepLR at epochs/2 and 3*epochs/4; valid_split 0.1),
  ``models/mlps.py`` (MLP(depth): Linear(in, w) + (depth - 2) x Linear(w, w) + Linear(w, out)
  = ``depth`` linear layers in all), ``sao/init_calls.py`` (Linear_Init: square layers SAO
  x gain, non-square (input, head) dense orthogonal x gain, every bias N(0, sigma_b^2)),
  ``models/initializers.py`` (Orthogonal: dense orthogonal x sigma_w, biases N(0, sigma_b^2)),
  ``orthogonal/ortho.py`` (orthogonal_with_density: random Givens rotations from the identity
  until the density is reached), ``sparselearning/sparsity_initializers.py``
  (uniform_skip_first_last: input and head dense).
* SAO, Esguerra et al. IEEE Access 2023 (github.com/kiaraesguerra/SAO): ``main.py`` (SGD,
  momentum 0.9, weight decay 1e-4, ``--nesterov`` flag, multistep at [100, 150] of 200
  epochs = 50 % / 75 %, gamma 0.1, batch 128), ``train_utils/optimizers.py``,
  ``train_utils/schedulers.py``, ``ortho_initializers/init_calls.py`` (nn.Linear:
  orthogonal_ gain 1; biases left at torch's default init), ``ortho_initializers/base.py``
  (ReLU dense baseline: looks-linear [[M, -M], [-M, M]], M orthogonal of half size, gain 1;
  first layer plain), ``pruners/pruners.py`` and ``ortho_initializers/delta.py`` (SAO is
  applied to Conv2d layers only: the SAO code's MLPs stay dense), ``models/cnn.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

#: What each reference file fixes (printed in results.md).
SOURCES = (
    "EOI specs/1000-layer-networks/deep-mlp.py: depth 1000, width 128, tanh, sigma_w 1.0247, sigma_b 0.00448, "
    "lr 1e-4, l2 1e-4, batch 128, 100 epochs, 5 seeds, SAO degree 16 (density 0.125)",
    "EOI setup_utils.py get_optimizer_for_params: SGD(momentum, weight_decay=l2, nesterov=True); "
    "main.py: momentum 0.9, MultiStepLR at epochs/2 and 3 epochs/4, valid_split 0.1",
    "EOI models/mlps.py MLP(depth): Linear(in, w) + (depth - 2) Linear(w, w) + Linear(w, out)",
    "EOI sao/init_calls.py Linear_Init: square layers SAO x gain, non-square (input, head) dense orthogonal "
    "x gain, biases N(0, sigma_b^2); models/initializers.py Orthogonal: the same for the dense baseline",
    "EOI orthogonal/ortho.py orthogonal_with_density: Givens rotations of the identity up to the density",
    "SAO main.py / train_utils/optimizers.py / schedulers.py: SGD momentum 0.9, weight decay 1e-4, "
    "--nesterov, multistep [100, 150] of 200 epochs (50 % / 75 %), gamma 0.1, batch 128",
    "SAO ortho_initializers/init_calls.py: nn.Linear orthogonal_ gain 1, biases untouched (torch default); "
    "SAO is applied to Conv2d layers only (pruners/pruners.py, ortho_initializers/delta.py)",
    "SAO ortho_initializers/base.py _ortho_generator: ReLU dense baseline [[M, -M], [-M, M]], first layer plain",
)

# -------------------------------------------------------------- optimiser
#: The reference "sgd" of both codes (EOI always Nesterov; the SAO code behind a flag).
OPTIMIZER = dict(momentum=0.9, nesterov=True, weight_decay=1e-4, milestones=(0.5, 0.75), gamma=0.1, batch=128)

# ------------------------------------------------------ init conventions
EOI_SIGMA_W = math.sqrt(1.05)  # deep-mlp.py: sigma_w 1.0247
EOI_SIGMA_B = math.sqrt(2e-5)  # deep-mlp.py: sigma_b 0.00448

#: How a setting initialises what is not the hidden layer under test.
CONVENTIONS = {
    "eoi": dict(
        gain=EOI_SIGMA_W,
        bias="normal",
        bias_std=EOI_SIGMA_B,
        text="EOI deep-mlp: every weight x sigma_w = sqrt(1.05) (input and head dense orthogonal), "
        "every bias N(0, 2e-5)",
    ),
    "eoi-relu": dict(
        gain=1.0,
        bias="normal",
        bias_std=EOI_SIGMA_B,
        text="no reference trains ReLU at depth 1000: EOI's biases N(0, 2e-5) with gain 1, the looks-linear "
        "net's norm-preserving gain (EOI's sqrt(1.05) is tanh's critical point; x1.025 per layer explodes "
        "a ReLU net over 1000 layers)",
    ),
    "sao": dict(
        gain=1.0,
        bias="torch-default",
        bias_std=None,
        text="SAO code: gain 1 (input and head dense orthogonal), biases at torch's default "
        "U(-1/sqrt(fan_in), 1/sqrt(fan_in))",
    ),
}

#: Hidden-layer inits.  ``sao:b16`` is SAO with block_size 16 (tile partitions).
INIT_LABEL = {
    "sao": "SAO",
    "orthogonal": "dense orth",
    "ll-orthogonal": "LL dense orth",
    "eoi": "EOI (Givens)",
    "rg-n": "RG-N",
    "rg-u": "RG-U",
    "lmp": "LMP",
    "lrp": "LRP",
    "lmp-s": "LMP /sqrt(d)",
    "lrp-s": "LRP /sqrt(d)",
    "sao-delta": "SAO-Delta",
    "sao-eco": "SAO-ECO",
    "delta-orthogonal": "dense delta-orth",
    "lrp-delta": "LRP (kernels)",
    "rg-n-delta": "RG-N (delta)",
}


def label(method: str) -> str:
    base, _, b = method.partition(":b")
    return INIT_LABEL[base] + (f" b={b}" if b else "")


@dataclass(frozen=True)
class Setting:
    """One row group of the tables: an architecture, an init convention, and its inits.

    ``depth``: weight layers in all (MLP: input + hidden + head, as EOI's MLP(depth) counts;
    CNN: conv layers, the linear head not counted).  ``tuned`` inits run the whole
    ``lr_grid`` at the first seed and the remaining seeds at their best grid lr and at the
    shared lr; ``untuned`` inits run every seed at the shared lr only; ``lr_from`` maps an
    init to the tuned init whose best lr it reuses (tile partitions use b=1's lr).
    ``shared_lr``: the reference's lr where the reference fixes one, else None (= the
    best grid lr of ``baseline``, the setting's dense reference init).  ``shared_also``: the
    tuned inits that also run every seed at the shared lr (None: all of them).  ``headline``:
    the rows the claims rest on; they train ``Plan.plateau_steps`` steps (None there: the
    common budget S like every other row).  ``padding``: the CNN's padding mode for every
    init (None: the first run's rule, circular for SAO-ECO only and zeros for the rest).
    """

    key: str
    arch: str
    depth: int
    act: str
    sparsity: float
    convention: str
    tuned: tuple[str, ...]
    lr_grid: tuple[float, ...]
    shared_lr: float | None
    baseline: str
    untuned: tuple[str, ...] = ()
    lr_from: tuple[tuple[str, str], ...] = ()
    width: int = 128
    channels: int = 32
    seeds: tuple[int, ...] | None = None  # None: the plan's seeds
    note: str = ""
    shared_also: tuple[str, ...] | None = None
    headline: bool = False
    padding: str | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return self.tuned + self.untuned + tuple(m for m, _ in self.lr_from)

    @property
    def hidden(self) -> int:
        """Hidden (width x width) layers carrying the init under test."""
        return self.depth - 2 if self.arch == "mlp" else self.depth - 1


TANH_INITS = ("sao", "orthogonal", "eoi", "rg-n", "rg-u", "lmp", "lrp", "lmp-s", "lrp-s")
RELU_INITS = ("sao", "ll-orthogonal", "orthogonal", "rg-n", "rg-u", "lmp", "lrp", "lmp-s", "lrp-s")
GRID_SHALLOW = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
GRID_DEEP = (1e-4, 3e-4, 1e-3)
#: The headline rows' seeds (the claims rest on them); the lr is chosen on Plan.tune_seed, not one of these.
HEADLINE_SEEDS = (0, 1, 2, 3, 4)
#: The inits whose shared-lr rows a claim needs (the reference lr 1e-4 at depth 1000; the baseline's lr).
SHARED_CLAIMS = ("sao", "orthogonal", "eoi", "ll-orthogonal")

#: Every training setting of the full run.  Sparsity 0.875 = EOI's density 0.125 (degree 16).
#: Headline rows (depth 100 and 1000, the tile rows): 5 reported seeds, every init and every tile
#: size tuned on its own at a seed that is not reported, grids extended where the best lr sits at an
#: edge, ``Plan.plateau_steps`` steps.  The other rows keep 3 seeds and the common budget S.
SETTINGS: tuple[Setting, ...] = (
    Setting("mlp-d10-tanh", "mlp", 10, "tanh", 0.875, "sao", TANH_INITS, GRID_SHALLOW, None, "orthogonal"),
    Setting("mlp-d10-relu", "mlp", 10, "relu", 0.875, "sao", RELU_INITS, GRID_SHALLOW, None, "ll-orthogonal"),
    Setting(
        "mlp-d100-tanh",
        "mlp",
        100,
        "tanh",
        0.875,
        "sao",
        TANH_INITS + ("sao:b8", "sao:b16"),
        GRID_SHALLOW,
        None,
        "orthogonal",
        seeds=HEADLINE_SEEDS,
        shared_also=SHARED_CLAIMS,
        headline=True,
    ),
    Setting(
        "mlp-d100-relu",
        "mlp",
        100,
        "relu",
        0.875,
        "sao",
        RELU_INITS,
        GRID_SHALLOW,
        None,
        "ll-orthogonal",
        seeds=HEADLINE_SEEDS,
        shared_also=SHARED_CLAIMS,
        headline=True,
    ),
    Setting(
        "mlp-d100-tanh-s0.75",
        "mlp",
        100,
        "tanh",
        0.75,
        "sao",
        ("sao", "sao:b8", "sao:b16", "sao:b32"),
        GRID_SHALLOW,
        None,
        "sao",
        seeds=HEADLINE_SEEDS,
        shared_also=(),
        headline=True,
        note="tile study: b=32 needs the group side 32 of sparsity 0.75",
    ),
    Setting(
        "mlp-d1000-tanh",
        "mlp",
        1000,
        "tanh",
        0.875,
        "eoi",
        ("sao", "orthogonal", "eoi", "rg-n", "rg-u", "sao:b8", "sao:b16"),
        GRID_DEEP,
        1e-4,
        "orthogonal",
        untuned=("lmp", "lrp", "lmp-s", "lrp-s"),
        seeds=HEADLINE_SEEDS,
        shared_also=SHARED_CLAIMS,
        headline=True,
        note="EOI's 1000-layer setting; LMP / LRP (plain and x1/sqrt(density)) run at EOI's lr only: no "
        "gradient reaches their lower layers at init (init-gradient table)",
    ),
    Setting(
        "mlp-d1000-tanh-s0.75",
        "mlp",
        1000,
        "tanh",
        0.75,
        "eoi",
        ("sao", "sao:b32"),
        GRID_DEEP,
        1e-4,
        "sao",
        seeds=HEADLINE_SEEDS,
        shared_also=(),
        headline=True,
        note="tile study at depth 1000, b=32 (b=8, 16 at sparsity 0.75 run at depth 100 only)",
    ),
    Setting(
        "mlp-d1000-relu",
        "mlp",
        1000,
        "relu",
        0.875,
        "eoi-relu",
        ("sao", "ll-orthogonal"),
        GRID_DEEP,
        None,
        "ll-orthogonal",
        untuned=("orthogonal",),
        note="ReLU at depth 1000: SAO and the looks-linear baseline tuned, dense orth x sqrt(2) at the shared lr",
    ),
    Setting(
        "mlp-d1000-relu-torchbias",
        "mlp",
        1000,
        "relu",
        0.875,
        "sao",
        (),
        GRID_DEEP,
        1e-4,
        "ll-orthogonal",
        untuned=("sao", "ll-orthogonal"),
        seeds=(0,),
        note="why depth-1000 ReLU uses EOI's biases: with torch's default biases (the SAO code's) one seed "
        "at lr 1e-4 documents the divergence",
    ),
    Setting(
        "cnn-d32-tanh",
        "cnn",
        32,
        "tanh",
        0.75,
        "sao",
        (),
        (1e-2,),
        1e-2,
        "delta-orthogonal",
        untuned=("sao-delta", "sao-eco", "delta-orthogonal", "rg-n-delta", "lrp-delta"),
        padding="circular",
        note="not tuned (budget): every init at 1e-2, the SAO README's vanilla-CNN lr; circular padding for "
        "every init (ECO's; a delta kernel is orthogonal with it too)",
    ),
)


@dataclass
class Plan:
    """Global knobs: seeds, the time budget, the step cap, and the init-time measures."""

    settings: tuple[Setting, ...] = SETTINGS
    seeds: tuple[int, ...] = (0, 1, 2)
    # CPU-minutes per worker for the whole command (= wall time when idle).  --budget-only on
    # 2026-12-06 (native kernels, load 10-40 on 2 cores): the headline rows cost 768 CPU-minutes
    # worst case, the others 9.9 CPU-s per common step, so 470 x 2 workers gives them S ~ 560.
    minutes: float = 470.0
    workers: int = 2
    cap_epochs: int = 100  # EOI trains 100 epochs: no run gets more
    min_steps: int = 20
    step_quantum: int = 10  # budgets are rounded down to a multiple of this
    pilot_steps: int = 3
    log_points: int = 20  # learning-curve points per run
    fixed_steps: int | None = None  # skip the budget solver (tests, --steps)
    # the protocol of the claims (legacy results.json without these keys: see reproduce.plan_from_dict)
    tune_seed: int | None = 100  # the lr grids run at this seed, never reported (None: the first seed)
    extend_edges: int = 2  # a best lr at a grid edge extends the grid one ladder step, up to this often
    plateau_steps: int | None = 1100  # headline rows: EOI's 100 epochs of digits (None: the common S)
    plateau_log_points: int = 55  # headline rows' validation points: steps to 90 / 95 % every 20 steps
    # init-time measures
    iso_width: int = 100
    iso_depth: int = 7
    iso_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    iso_samples: int = 16
    iso_min_density: float = 0.03
    spread_depths: tuple[int, ...] = (1, 10, 100, 998)
    spread_samples: int = 4
    tile_spread_depths: tuple[int, ...] = (98, 998)
    tile_seeds: tuple[int, ...] = (0, 1)
    conn_width: int = 128
    conn_sparsities: tuple[float, ...] = (0.75, 0.875, 0.9375, 0.96875)
    conn_depth: int = 10
    conn_seeds: tuple[int, ...] = (0, 1, 2)
    conn_big_width: int = 4096
    conn_big_sparsities: tuple[float, ...] = (0.875, 0.984375)
    quick: bool = False
    extra: dict = field(default_factory=dict)


def quick_plan() -> Plan:
    """Tiny depths, two lrs, two seeds, a few steps: the same code path in well under a minute."""

    def shrink(s: Setting) -> Setting:
        depth = {10: 3, 100: 4, 1000: 6, 32: 3}[s.depth]
        return replace(
            s,
            depth=depth,
            lr_grid=s.lr_grid[-2:],
            shared_lr=s.lr_grid[-1] if s.shared_lr is not None else None,
            channels=8,
            seeds=(0, 1, 2) if s.headline else s.seeds,
        )

    keep = (
        "mlp-d10-tanh",
        "mlp-d10-relu",
        "mlp-d1000-tanh",
        "mlp-d1000-tanh-s0.75",
        "mlp-d1000-relu",
        "mlp-d1000-relu-torchbias",
        "cnn-d32-tanh",
    )
    return Plan(
        settings=tuple(shrink(s) for s in SETTINGS if s.key in keep),
        seeds=(0, 1),
        minutes=1.0,
        cap_epochs=1,
        min_steps=4,
        step_quantum=1,
        pilot_steps=1,
        log_points=3,
        iso_seeds=(0,),
        iso_samples=4,
        iso_depth=3,
        spread_depths=(1, 3),
        spread_samples=2,
        tile_spread_depths=(2, 4),
        tile_seeds=(0,),
        conn_sparsities=(0.875,),
        conn_depth=5,
        conn_seeds=(0,),
        conn_big_width=512,
        conn_big_sparsities=(0.875,),
        tune_seed=100,
        extend_edges=1,
        plateau_steps=6,
        plateau_log_points=6,
        quick=True,
    )
