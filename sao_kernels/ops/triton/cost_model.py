"""When to gather in the kernel and when to permute first: a roofline cost model.

A kernel that reads a (T, n) row-major operand through an element-level index map (block_size
1) loads each gathered element on its own: the memory system moves a whole 32-byte sector
from L2 to the SM for it, i.e. ``SECTOR / itemsize`` times the useful bytes (16x for 16-bit
data), once for every program that reads the same tile (``rereads``: the output blocks that
share it).  The alternative, the *permute-then-contiguous* path, copies the operand into group
order first (one bandwidth-bound pass: read once, write once, ``gather_columns_kernel`` keeps
each row's sectors in L1 while it walks the row) and then runs the gather-free kernel, whose
loads are 16-byte vectors.  Scattered stores through an element-level ``out_index`` cost the
same way (a partial-sector write per element) and have the mirror alternative: write the
result in group order, then copy it into feature order through the inverse permutation.

Each kernel is modelled by its roofline, the slowest of its three limits::

    time(F, B_l2, B_hbm) = max(F / P,  B_l2 / BW_l2,  B_hbm / BW_hbm)

with F the flops, P the arithmetic peak of the dtype, B_l2 the bytes between L2 and the SMs
(sector-sized for element gathers and scatters) and B_hbm the bytes to and from HBM.  For the
(T, K_all) gathered operand, r its rereads, s the itemsize, S = 32 the sector::

    fused    = time(F,  r*T*K_all*S + rest_l2,  hbm)
    permuted = L + max(2*T*K_all*s / BW_hbm, T*K_all / R_l1) + time(F,  r*T*K_all*s + rest_l2,  hbm)

(the product's own HBM traffic is the same: it reads the copy instead of the original), where
L is a launch overhead and R_l1 the rate at which the copy kernel's gathered loads hit
L1 (every element a separate sector request: ``l1_sectors_per_s``).  The path with the
smaller total is chosen, separately for the input side and the output side.  The rates are
leads from data sheets and this project's device notes (H100 / H200: ~3.0 / ~4.3 TB/s HBM
copy, ~790 TFLOP/s bf16); ``benchmarks/gpu/run.sh`` times both paths, so the model can be
checked against the measured crossover.
"""

from __future__ import annotations

import dataclasses

SECTOR = 32  # bytes moved between L2 and an SM per scattered element access


@dataclasses.dataclass(frozen=True)
class Rates:
    """Throughputs of one GPU (bytes or flops per second; the launch overhead in seconds)."""

    hbm: float
    l2: float
    l1_sectors_per_s: float
    flops_16bit: float
    flops_tf32: float
    flops_fp32: float
    launch_s: float = 4e-6

    def peak(self, itemsize: int, precision: str) -> float:
        if itemsize == 2:
            return self.flops_16bit
        if itemsize == 4 and precision == "tf32":
            return self.flops_tf32
        return self.flops_fp32 if itemsize == 4 else self.flops_fp32 / 2


# sm_90 (H100 SXM; an H200 has ~1.4x the HBM bandwidth): L1 serves ~4 sectors / cycle / SM
# at 1.98 GHz on 132 SMs.  sm_80 (A100 SXM): 108 SMs at 1.41 GHz.
HOPPER = Rates(
    hbm=3.0e12, l2=5.5e12, l1_sectors_per_s=4 * 132 * 1.98e9, flops_16bit=790e12, flops_tf32=395e12, flops_fp32=60e12
)
AMPERE = Rates(
    hbm=1.5e12, l2=4.0e12, l1_sectors_per_s=4 * 108 * 1.41e9, flops_16bit=280e12, flops_tf32=140e12, flops_fp32=19e12
)


def rates_for(arch: int) -> Rates:
    """The model's rates for compute capability ``arch`` (sm_90 and newer: Hopper's)."""
    return HOPPER if arch >= 90 else AMPERE


def roofline_time(flops: float, l2_bytes: float, hbm_bytes: float, peak: float, rates: Rates) -> float:
    """``max(F / P, B_l2 / BW_l2, B_hbm / BW_hbm)`` in seconds."""
    return max(flops / peak, l2_bytes / rates.l2, hbm_bytes / rates.hbm)


def permute_copy_time(rows: int, cols: int, itemsize: int, rates: Rates) -> float:
    """One ``gather_columns_kernel`` pass over a (rows, cols) operand:
    ``L + max(2 * rows * cols * s / BW_hbm, rows * cols / L1_sector_rate)``."""
    elements = rows * cols
    return rates.launch_s + max(2 * elements * itemsize / rates.hbm, elements / rates.l1_sectors_per_s)


@dataclasses.dataclass(frozen=True)
class GatherTraffic:
    """The memory traffic of one grouped product whose operand ``gathered`` (T, K_all) may be
    read through an element-level index map, and whose output (rows, out_cols) may be written
    through one.

    ``rereads``: how many programs read each gathered tile (the output blocks of a group).
    ``rest_l2`` / ``rest_hbm``: the bytes of everything else (the other operand, the output).
    """

    T: int
    K_all: int
    rereads: int
    out_rows: int
    out_cols: int
    itemsize: int
    flops: float
    rest_l2: float
    rest_hbm: float


def path_times(
    p: GatherTraffic,
    gather_in: bool,
    scatter_out: bool,
    permute_in: bool,
    permute_out: bool,
    rates: Rates,
    precision: str = "ieee",
) -> float:
    """Modelled seconds of the product with the given choices (see the module docstring)."""
    s = p.itemsize
    gathered = p.T * p.K_all
    outs = p.out_rows * p.out_cols
    l2 = p.rest_l2
    hbm = p.rest_hbm + gathered * s + outs * s
    extra = 0.0
    if gather_in and not permute_in:
        l2 += p.rereads * gathered * SECTOR
    else:
        l2 += p.rereads * gathered * s
        if gather_in:
            extra += permute_copy_time(p.T, p.K_all, s, rates)
    if scatter_out and not permute_out:
        l2 += outs * SECTOR
    else:
        l2 += outs * s
        if scatter_out:
            extra += permute_copy_time(p.out_rows, p.out_cols, s, rates)
    return extra + roofline_time(p.flops, l2, hbm, rates.peak(s, precision), rates)


def choose_permutes(
    p: GatherTraffic, gather_in: bool, scatter_out: bool, rates: Rates, precision: str = "ieee"
) -> tuple[bool, bool]:
    """(permute the input first, permute the output after): the cheapest of the allowed
    combinations under :func:`path_times`.  Only element-level maps (block_size 1) are
    candidates; runs of b >= 2 features already load and store in vectors."""
    best, best_time = (False, False), None
    for permute_in in (False, True) if gather_in else (False,):
        for permute_out in (False, True) if scatter_out else (False,):
            t = path_times(p, gather_in, scatter_out, permute_in, permute_out, rates, precision)
            if best_time is None or t < best_time * (1 - 1e-9):
                best, best_time = (permute_in, permute_out), t
    return best
