"""The checks of ``compiled_checks`` on hand-made records (so each can be seen to fail), and the
source labels they attribute SASS instructions to."""

import copy

from sao_kernels.ops.triton import compiled_checks as cc
from sao_kernels.ops.triton import kernels

RECORD = dict(
    kernel="gather_matmul_kernel",
    arch=90,
    path="default",
    tiles=dict(BLOCK_T=128, BLOCK_N=128, BLOCK_K=64),
    num_warps=8,
    num_stages=3,
    dtype="torch.bfloat16",
    ptr_dtypes=dict(lhs_ptr="torch.bfloat16", out_ptr="torch.bfloat16"),
    flags=dict(HAS_LHS_INDEX=True, LHS_RUN=16, HAS_OUT_INDEX=True, OUT_RUN=16, HAS_BIAS=False, PRECISION="ieee"),
    problem="hand-made",
    problems=1,
    error=None,
    regs=110,
    spill_stores=0,
    spill_loads=0,
    smem=98304,
    smem_limit=232448,
    ops={"HGMMA.64x128x16.F32.BF16": 4},
    by_label={"load:lhs_rows": {"LDGSTS.E.BYPASS.128": 12, "LDGDEPBAR": 3}, "store:out_ptrs": {"STG.E.128": 8}},
)


def _with(**changes):
    r = copy.deepcopy(RECORD)
    for key, value in changes.items():
        r[key] = value
    return r


def test_a_good_record_passes_every_check():
    assert all(not check([RECORD]) for check in cc.CHECKS.values())


def test_each_check_fails_on_its_defect():
    assert cc.spill_failures([_with(spill_stores=616)])
    assert cc.smem_failures([_with(smem=300000)])
    assert cc.wgmma_failures([_with(ops={"HMMA.16816.F32.BF16": 64})])
    scalar = _with(by_label={"load:lhs_rows": {"LDG.E.U16": 64}, "store:out_ptrs": {"STG.E.128": 8}})
    assert cc.vector_failures([scalar])
    unscattered = _with(by_label={"load:lhs_rows": {"LDGSTS.E.BYPASS.128": 12}, "store:out_ptrs": {"STG.E.U16": 64}})
    assert cc.vector_failures([unscattered])
    assert cc.vector_failures([_with(by_label={})])  # accesses not found at all
    fp32 = dict(RECORD["ptr_dtypes"], lhs_ptr="torch.float32")
    assert cc.precision_failures([_with(ptr_dtypes=fp32, flags=dict(RECORD["flags"], PRECISION="ieee"))])
    assert not cc.precision_failures([_with(ptr_dtypes=fp32, flags=dict(RECORD["flags"], PRECISION="tf32"))])


def test_widths_follow_run_tile_and_dtype():
    assert cc.access_bits("LDGSTS.E.BYPASS.LTC128B.128") == 128
    assert cc.access_bits("LDG.E.U16") == 16 and cc.access_bits("LDG.E") == 32 and cc.access_bits("STG.E.64") == 64
    # A 16 x 32 bf16 output tile on 4 warps holds 4 elements per thread: 64 bits is the widest.
    small = _with(tiles=dict(BLOCK_T=16, BLOCK_N=32, BLOCK_K=64), num_warps=4)
    assert cc.expected_bits(small, "out_ptr", 16, ("BLOCK_T", "BLOCK_N")) == 64
    assert cc.expected_bits(RECORD, "lhs_ptr", 4, ("BLOCK_T", "BLOCK_K")) == 64  # runs of 4 bf16 = 8 bytes


def test_source_labels_find_the_kernel_accesses():
    labels = set(cc_labels().values())
    for kernel_labels in cc.ACCESSES.values():
        for label, *_ in kernel_labels:
            assert label in labels


def cc_labels():
    from sao_kernels.ops.triton.aot import _source_labels

    return _source_labels(kernels.__file__)
