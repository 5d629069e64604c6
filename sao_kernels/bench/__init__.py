"""The benchmark harness: one place for timing, metadata, step closures and results files.

    timing      interleaved timing of candidates vs a baseline, stop rule, Stats (min /
                median / IQR / rounds), speed-up with a 95 % paired bootstrap interval, flags
    machine     machine metadata, load average around a run, the busy-core contention case
    steps       the forward / forward+backward / training-step closures that get timed
    twins       dense twins (nn.Linear / nn.Conv2d with the SAO layer's dense weight)
    results     atomic writes of a results set, CSV / Markdown with spread and flags
    plots       speedup.png (colour fixed per backend)
    candidates  the sweep's candidate table (raises SkipCandidate with the reason)
    sweep       ``python -m sao_kernels bench`` (the default suite)
    cases       layer-level suites: small widths, the depth-stacked MLP step, contention
    tiers       ``--suite tiers``: one table per CPU tier, each in a subprocess under its caps
    flop_count  FlopCounterMode with SAOConv2d's grouped-convolution backward counted right

Used by ``python -m sao_kernels bench``, ``sao_kernels.report`` (``sao_kernels.cli``) and every
script in benchmarks/.
"""

from .candidates import SkipCandidate
from .machine import busy_core, machine_label, machine_meta, recording_load
from .results import check_writable, write_outputs
from .steps import forward_step, fwd_bwd_step, module_steps, train_step
from .sweep import NothingMeasured, SweepConfig, SweepResult, default_config, run_sweep, write_sweep_results
from .timing import Comparison, Speedup, Stats, TimingSettings, compare, compare_to_baseline, interleave, median_ms

__all__ = [
    "Comparison",
    "NothingMeasured",
    "SkipCandidate",
    "Speedup",
    "Stats",
    "SweepConfig",
    "SweepResult",
    "TimingSettings",
    "busy_core",
    "check_writable",
    "compare",
    "compare_to_baseline",
    "default_config",
    "forward_step",
    "fwd_bwd_step",
    "interleave",
    "machine_label",
    "machine_meta",
    "median_ms",
    "module_steps",
    "recording_load",
    "run_sweep",
    "train_step",
    "write_outputs",
    "write_sweep_results",
]
