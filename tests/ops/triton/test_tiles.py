"""Tile and split heuristics (``tiles.py``), on CPU: small-T occupancy, split limits."""

import pytest
import triton

from sao_kernels.ops.triton import tiles
from sao_kernels.ops.triton._common import INTERPRETER, Device

H100 = Device(arch=90, sm_count=132)


@pytest.mark.parametrize("G,side", [(2, 2048), (4, 1024), (16, 256)])
@pytest.mark.parametrize("T", [1, 16])
def test_small_t_fills_the_gpu_within_the_traffic_bound(G, side, T):
    base = tiles.gather_matmul_tiles(T, side, side, 2, "ieee", H100)
    chosen, splits = tiles.gather_matmul_split(T, G, side, side, 2, base, H100)
    programs = G * triton.cdiv(side, chosen["BLOCK_N"]) * splits
    by_traffic = splits + 1 > side * 2 // (16 * T)  # one more split would pass the traffic bound
    by_length = splits + 1 > side // (2 * chosen["BLOCK_K"])  # ... or leave a split < 2 K blocks
    assert programs >= H100.sm_count or (chosen["BLOCK_N"] == 32 and (by_traffic or by_length))
    if splits > 1:
        assert 16 * splits * T <= side * 2  # float32 partials: at most half the values' bytes
        assert side // splits >= 2 * chosen["BLOCK_K"]
    assert chosen["BLOCK_N"] <= base["BLOCK_N"]


def test_large_t_and_interpreter_never_split():
    for device, T in ((H100, 8192), (INTERPRETER, 1)):
        base = tiles.gather_matmul_tiles(T, 256, 256, 2, "ieee", device)
        assert tiles.gather_matmul_split(T, 16, 256, 256, 2, base, device)[1] == 1


def test_tiles_depend_on_dtype_and_precision():
    bf16 = tiles.gather_matmul_tiles(8192, 256, 256, 2, "ieee", H100)
    fp32 = tiles.gather_matmul_tiles(8192, 256, 256, 4, "ieee", H100)
    tf32 = tiles.gather_matmul_tiles(8192, 256, 256, 4, "tf32", H100)
    assert (bf16["BLOCK_T"], bf16["BLOCK_K"]) == (128, 64)
    assert fp32["BLOCK_T"] == 64 and fp32.num_warps == 8  # the FFMA tile that does not spill
    assert (tf32["BLOCK_T"], tf32["BLOCK_K"]) == (128, 32)


def test_autotune_lists_are_per_dtype():
    assert all(t["BLOCK_K"] <= 32 for t in tiles.gather_matmul_autotune(4, "ieee", 80))
    assert len(tiles.gather_matmul_autotune(2, "ieee", 90)) > len(tiles.gather_matmul_autotune(2, "ieee", 80))
