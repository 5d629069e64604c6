"""Tile choices: the heuristic (default) tiles, split counts and the autotune config lists.

Pure functions of the problem's sizes, dtype, precision and :class:`~._common.Device`, so
``aot`` can enumerate and compile, for sm_80 and sm_90, everything the launchers may pick.
Every heuristic tile here compiles without register spills and within the shared-memory
limit of both targets (``tests/ops/triton/test_aot.py`` holds them to it).

Glossary: T tokens; a gather-matmul tile is (BLOCK_T tokens) x (BLOCK_N outputs) with a K loop
of BLOCK_K; a grad-values tile is (BLOCK_A) x (BLOCK_C) with a token loop of BLOCK_T.
"""

from __future__ import annotations

import dataclasses

import triton

from ._common import Device


def pow2_tile(size: int, lo: int = 16, hi: int = 128) -> int:
    """Smallest power of two >= size, clamped to [lo, hi] (tl.dot needs >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(size, 1))))


def tokens_bucket(T: int) -> int:
    """Autotune key for the token count: its power-of-two class."""
    return triton.next_power_of_2(max(T, 1))


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes (the kernel's BLOCK_* constexprs), warps and software-pipeline stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    def constexprs(self) -> dict:
        return dict(self.blocks)

    def __getitem__(self, name: str) -> int:
        return dict(self.blocks)[name]


def _tiles(num_warps: int, num_stages: int, **blocks: int) -> Tiles:
    return Tiles(tuple(blocks.items()), num_warps, num_stages)


# Tokens at or below which the gather-matmul kernel is in the small-T regime: one token block,
# memory-bound on the values, so output blocks shrink and K splits until the grid fills the GPU.
SMALL_T = 64


# --------------------------------------------------------------------------- gather matmul
def gather_matmul_tiles(T: int, N: int, K: int, itemsize: int, precision: str, device: Device) -> Tiles:
    """Heuristic tiles of ``gather_matmul_kernel`` for a (T, G*K) x (G, N, K) product.

    * interpreter: tiles fitted to the problem (it pays for every lane);
    * T <= SMALL_T: BLOCK_T fits T; BLOCK_N is chosen with the split count
      (:func:`gather_matmul_split`);
    * large T: 128 x 128 x 64 (16-bit), 128 x 128 x 32 (tf32), 64 x 128 x 32 on 8 warps for
      exact fp32 (its FFMA tile spills at 128 rows, and at 64 rows on 4 warps), 64 x 64 x 16
      for float64; 8 warps throughout (4 spill with element-level gathers).  BLOCK_N shrinks
      to N's power of two.
    """
    if device.interpreter:
        return _tiles(4, 1, BLOCK_T=pow2_tile(T, hi=64), BLOCK_N=pow2_tile(N, hi=64), BLOCK_K=pow2_tile(K, hi=64))
    if itemsize == 8:
        return _tiles(4, 2, BLOCK_T=pow2_tile(T, hi=64), BLOCK_N=pow2_tile(N, hi=64), BLOCK_K=16)
    exact_fp32 = itemsize == 4 and precision == "ieee"
    if T <= SMALL_T:
        block_t = pow2_tile(T, hi=64)
        block_k = 64 if itemsize == 2 else 32
        block_n = pow2_tile(N, hi=128 if block_t <= 32 else 64)
        return _tiles(4, 4 if itemsize == 2 else 3, BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k)
    block_n = pow2_tile(N, hi=128)
    if exact_fp32:
        return _tiles(8, 3, BLOCK_T=64, BLOCK_N=block_n, BLOCK_K=32)
    block_k = pow2_tile(K, lo=32, hi=64 if itemsize == 2 else 32)
    # 8 warps even for narrow N: a 128-row tile on 4 warps spills when its gather is element-level
    return _tiles(8, 3, BLOCK_T=128, BLOCK_N=block_n, BLOCK_K=block_k)


def gather_matmul_split(
    T: int, G: int, N: int, K: int, itemsize: int, tiles: Tiles, device: Device
) -> tuple[Tiles, int]:
    """Small-T occupancy: (tiles with a possibly smaller BLOCK_N, K splits).

    With one token block the grid has ``G * cdiv(N, BLOCK_N)`` programs, often fewer than the
    GPU's SMs.  BLOCK_N halves (down to 32) until the grid covers the SMs; if it still does
    not, the K loop splits into S ranges whose float32 partials a second kernel sums in a fixed
    order (deterministic).  S stays small enough that the partials (written and read: 8*S*T*G*N
    bytes) cost at most half the values' own bytes (G*N*K*itemsize), and every split keeps at
    least two K blocks.
    """
    if device.interpreter or T > SMALL_T or itemsize == 8:
        return tiles, 1
    blocks = tiles.constexprs()
    token_blocks = triton.cdiv(T, blocks["BLOCK_T"])
    while blocks["BLOCK_N"] > 32 and token_blocks * G * triton.cdiv(N, blocks["BLOCK_N"]) < device.sm_count:
        blocks["BLOCK_N"] //= 2
    tiles = Tiles(tuple(blocks.items()), tiles.num_warps, tiles.num_stages)
    programs = token_blocks * G * triton.cdiv(N, blocks["BLOCK_N"])
    if programs >= device.sm_count:
        return tiles, 1
    by_traffic = (K * itemsize) // (16 * T)
    by_length = K // (2 * blocks["BLOCK_K"])
    splits = min(triton.cdiv(device.sm_count, programs), by_traffic, by_length)
    return tiles, max(1, splits)


def gather_matmul_autotune(itemsize: int, precision: str, arch: int) -> list[Tiles]:
    """The autotune candidates of ``gather_matmul_kernel`` (``SAO_KERNELS_AUTOTUNE=1``): tiles
    that compile without spills on ``arch`` for this dtype (exact fp32 keeps to 64-row tiles
    and BLOCK_K = 32; a 128 x 128 x 64 fp32 tile's shared-memory ring does not fit sm_80)."""
    if itemsize == 2:
        cands = [
            (128, 128, 64, 8, 3),
            (128, 64, 64, 8, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4),
            (64, 64, 32, 8, 4),
            (32, 64, 64, 4, 4),
            (16, 64, 64, 4, 4),
        ]
        if arch >= 90:
            cands.append((128, 256, 64, 8, 3))
    elif itemsize == 4 and precision == "tf32":
        cands = [
            (128, 128, 32, 8, 3),
            (128, 64, 32, 8, 4),
            (64, 128, 32, 8, 4),
            (64, 64, 32, 4, 4),
            (32, 64, 32, 4, 4),
            (16, 64, 64, 4, 3),
        ]
    else:
        cands = [(64, 128, 32, 8, 3), (64, 64, 32, 8, 3), (32, 64, 32, 4, 4), (16, 64, 32, 4, 4), (64, 64, 16, 4, 4)]
    return [_tiles(w, s, BLOCK_T=bt, BLOCK_N=bn, BLOCK_K=bk) for bt, bn, bk, w, s in cands]


# --------------------------------------------------------------------------- grad values
def grad_values_tiles(T: int, G: int, A: int, C: int, itemsize: int, precision: str, device: Device) -> Tiles:
    """Heuristic tiles of ``grad_values_kernel`` (dv tile BLOCK_A x BLOCK_C, token loop BLOCK_T):
    128 x 128 (16-bit, tf32; 64 x 64 for exact fp32), halved for T <= SMALL_T until the
    G * tiles programs cover the SMs (the token loop is too short to split)."""
    if device.interpreter:
        return _tiles(4, 1, BLOCK_A=pow2_tile(A, hi=64), BLOCK_C=pow2_tile(C, hi=64), BLOCK_T=pow2_tile(T, hi=64))
    if itemsize == 8:
        return _tiles(4, 2, BLOCK_A=pow2_tile(A, hi=64), BLOCK_C=pow2_tile(C, hi=64), BLOCK_T=16)
    block_a, block_c = pow2_tile(A, hi=128), pow2_tile(C, hi=128)
    if itemsize == 4 and precision == "ieee":  # FFMA tiles: 64 x 128, or 64 x 64 on 4 warps, spill
        block_a, block_c = min(block_a, 64), min(block_c, 64)
    if T <= SMALL_T:  # one short token loop per tile: smaller tiles until the grid covers the SMs
        while block_a * block_c > 32 * 64 and G * triton.cdiv(A, block_a) * triton.cdiv(C, block_c) < device.sm_count:
            block_a, block_c = (block_a // 2, block_c) if block_a >= block_c else (block_a, block_c // 2)
    block_t = pow2_tile(T, hi=32) if T <= SMALL_T else 32  # (a 32-token block for 16 tokens spills fp32)
    if itemsize == 4 and precision == "ieee":
        return _tiles(8 if block_a * block_c >= 64 * 64 else 4, 3, BLOCK_A=block_a, BLOCK_C=block_c, BLOCK_T=block_t)
    block_t = 64 if itemsize == 2 and T > SMALL_T else block_t
    warps = 8 if block_a * block_c >= 64 * 64 else 4  # (64 x 64 x 64 on 4 warps spills on sm_80)
    return _tiles(warps, 3, BLOCK_A=block_a, BLOCK_C=block_c, BLOCK_T=block_t)


def grad_values_splits(T: int, tiles_count: int, block_t: int, device: Device) -> int:
    """Token splits so that the grid covers ~2 waves of the GPU; each split keeps >= 4 token
    blocks.  (The interpreter uses 2 splits past 64 tokens, to exercise the reduction.)"""
    if device.interpreter:
        return 1 if T <= 64 else 2
    want = max(1, (2 * device.sm_count) // max(tiles_count, 1))
    return max(1, min(want, triton.cdiv(T, 4 * block_t)))


def grad_values_autotune(itemsize: int, precision: str, arch: int) -> list[Tiles]:
    """The autotune candidates of ``grad_values_kernel`` for this dtype on ``arch``."""
    if itemsize == 2:
        cands = [
            (128, 128, 32, 8, 3),
            (128, 128, 64, 8, 3),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 8, 4),
            (64, 64, 128, 4, 3),
            (32, 64, 64, 4, 4),
            (32, 32, 64, 4, 4),
        ]
    elif itemsize == 4 and precision == "tf32":
        cands = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 32, 4, 4), (32, 64, 64, 4, 3)]
    else:
        cands = [(64, 64, 32, 8, 3), (32, 64, 32, 4, 4), (64, 32, 32, 4, 4), (64, 64, 16, 4, 4)]
    return [_tiles(w, s, BLOCK_A=ba, BLOCK_C=bc, BLOCK_T=bt) for ba, bc, bt, w, s in cands]


# --------------------------------------------------------------------------- helper kernels
def split_reduce_tiles(J: int, device: Device) -> Tiles:
    """``split_reduce_kernel``: 16 rows x up to 256 columns (64 in the interpreter)."""
    hi = 64 if device.interpreter else 256
    return _tiles(4, 1, BLOCK_R=16, BLOCK_J=pow2_tile(J, hi=hi))


def gather_columns_tiles(J: int, itemsize: int, device: Device) -> Tiles:
    """``gather_columns_kernel``: 8 rows per program (a few 8 KB rows stay in L1 while the
    program walks them), 256 columns per step."""
    if device.interpreter:
        return _tiles(4, 1, BLOCK_T=8, BLOCK_J=pow2_tile(J, hi=64))
    return _tiles(4, 1, BLOCK_T=8, BLOCK_J=pow2_tile(J, lo=16, hi=256))
