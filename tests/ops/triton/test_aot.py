"""The Triton kernels as a GPU would run them, checked without a GPU (issue 15).

Every configuration the launchers can choose for a grid of problems is compiled ahead of time
for sm_80 and sm_90 (``sao_kernels.ops.triton.aot``, in a subprocess: the interpreter that the
other tests use cannot compile) and held to ``compiled_checks``: it compiles, the default path
does not spill, shared memory fits, 16-bit products use wgmma on sm_90, fp32 follows the tf32
flag, and index maps with aligned runs >= 8 give 128-bit gathers and scatters.

CI compiles the ``ci`` grid (~110 configurations, ~85 s on 2 cores).  The full matrix (~1,300
configurations, autotune candidates included, 10-20 min on 2 cores) runs with
``SAO_KERNELS_COMPILE_FULL=1``, or as ``python -m sao_kernels.ops.triton.aot --grid full``.
"""

import json
import os
import subprocess
import sys

import pytest

from sao_kernels.ops.triton import aot, compiled_checks

REASON = aot.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
GRID = "full" if os.environ.get("SAO_KERNELS_COMPILE_FULL", "0") == "1" else "ci"
ARCHES = (80, 90)


@pytest.fixture(scope="session")
def records(tmp_path_factory) -> list:
    """Compile the grid once per test session (in a subprocess without TRITON_INTERPRET)."""
    out = tmp_path_factory.mktemp("aot") / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    proc = subprocess.run(
        [sys.executable, "-m", "sao_kernels.ops.triton.aot", "--grid", GRID, "--json", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    if not out.exists():
        pytest.fail(f"aot produced no records (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _of(records, arch):
    return [r for r in records if r["arch"] == arch]


def _report(bad):
    return f"{len(bad)} configurations:\n" + "\n".join(bad[:40])


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: f"sm_{a}")
def test_every_configuration_compiles(records, arch):
    mine = _of(records, arch)
    kernels = {r["kernel"] for r in mine}
    # The grid reaches every kernel and path: fused, split-K, permute-then-contiguous.
    assert kernels == {"gather_matmul_kernel", "grad_values_kernel", "split_reduce_kernel", "gather_columns_kernel"}
    assert len(mine) >= 40
    failed = [f"{r['kernel']} {r['tiles']} ({r['problem']}): {r['error']}" for r in mine if r["error"]]
    assert not failed, _report(failed)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: f"sm_{a}")
def test_default_path_does_not_spill(records, arch):
    bad = compiled_checks.spill_failures(_of(records, arch))
    assert not bad, _report(bad)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: f"sm_{a}")
def test_shared_memory_fits(records, arch):
    bad = compiled_checks.smem_failures(_of(records, arch))
    assert not bad, _report(bad)


def test_16bit_dot_is_wgmma_on_sm90(records):
    mine = _of(records, 90)
    bad = compiled_checks.wgmma_failures(mine)
    assert not bad, _report(bad)
    assert any(compiled_checks.matrix_unit(r) == "wgmma" for r in mine)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: f"sm_{a}")
def test_fp32_precision_follows_tf32_flag(records, arch):
    bad = compiled_checks.precision_failures(_of(records, arch))
    assert not bad, _report(bad)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: f"sm_{a}")
def test_runs_of_8_give_128bit_gathers_and_scatters(records, arch):
    mine = _of(records, arch)
    bad = compiled_checks.vector_failures(mine)
    assert not bad, _report(bad)
    # The check saw run-indexed gathers and scatters (it cannot pass vacuously).
    checked = [
        r
        for r in mine
        if r["kernel"] == "gather_matmul_kernel"
        and r["flags"].get("HAS_LHS_INDEX")
        and r["flags"]["LHS_RUN"] >= 8
        and r["flags"].get("HAS_OUT_INDEX")
        and r["flags"]["OUT_RUN"] >= 8
        and r["ptr_strides"]["lhs_ptr"][1] == 1  # feature-contiguous (row-major) activations
    ]
    assert checked and all(compiled_checks.widths(r, "load:lhs_rows").get(128) for r in checked)
    assert all(compiled_checks.widths(r, "store:out_ptrs").get(128) for r in checked if r["tiles"]["BLOCK_T"] >= 64)


def test_int64_offsets_compile(records):
    """Problems whose offsets pass int32 (planned on meta tensors) compile with WIDE offsets."""
    wide = [r for r in records if r["flags"].get("WIDE")]
    assert wide and not [r for r in wide if r["error"]]
