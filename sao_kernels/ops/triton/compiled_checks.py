"""Reading the records of ``aot``: access widths per source line, and the checks the compiled
code is held to (``tests/ops/triton/test_aot.py``; ``python -m sao_kernels.ops.triton.aot``).

Checks, each a function of the records returning the failing ones as text lines:

* no register spills on the default (heuristic) path;
* shared memory within the target's per-block limit;
* 16-bit products with >= 64-row tiles on whole warpgroups use wgmma (HGMMA) on sm_90;
* fp32 products touch the tensor cores exactly when tf32 is allowed;
* gathered loads and scattered stores through index maps of aligned runs >= 8 are as wide
  as the run, the tile and 128 bits allow (LDG.E.128 / LDGSTS.E.BYPASS.128 / STG.E.128).
  Exempt: tf32 grad-values on sm_90, whose two operands are both MN-major (the reduction runs
  over tokens, the rows of row-major activations) while tf32 wgmma takes K-major operands
  only, so Triton stages them into shared memory 4 bytes at a time (still coalesced across
  the warp: 128 contiguous bytes per warp instruction).
"""

from __future__ import annotations


def access_bits(op: str) -> int:
    """Bits per thread of a global load / store / cp.async opcode (LDG.E.128 -> 128, LDG.E -> 32)."""
    parts = op.split(".")
    for token, bits in (("128", 128), ("64", 64), ("U16", 16), ("S16", 16), ("U8", 8), ("S8", 8)):
        if token in parts:
            return bits
    return 32


# Source labels (``_source_labels``) of the gathered loads and scattered stores of each kernel:
# (label, pointer parameter, run constexpr, has-index constexpr, tile dims).
ACCESSES = {
    "gather_matmul_kernel": (
        ("load:lhs_rows", "lhs_ptr", "LHS_RUN", "HAS_LHS_INDEX", ("BLOCK_T", "BLOCK_K")),
        ("store:out_ptrs", "out_ptr", "OUT_RUN", "HAS_OUT_INDEX", ("BLOCK_T", "BLOCK_N")),
    ),
    "grad_values_kernel": (
        ("load:dyT_rows", "dy_ptr", "OUT_RUN", "HAS_OUT_INDEX", ("BLOCK_A", "BLOCK_T")),
        ("load:x_cols", "x_ptr", "IN_RUN", "HAS_IN_INDEX", ("BLOCK_T", "BLOCK_C")),
    ),
    "split_reduce_kernel": (("store:out_ptrs", "out_ptr", "RUN", "HAS_INDEX", ("BLOCK_R", "BLOCK_J")),),
    "gather_columns_kernel": (
        ("load:src_rows", "src_ptr", None, None, ("BLOCK_T", "BLOCK_J")),
        ("store:dst_rows", "dst_ptr", None, None, ("BLOCK_T", "BLOCK_J")),
    ),
}
_ITEMSIZE = {"torch.float64": 8, "torch.float32": 4, "torch.bfloat16": 2, "torch.float16": 2}


def widths(record: dict, label: str) -> dict[int, int]:
    """{bits: instruction count} of the global accesses attributed to a source label."""
    out: dict[int, int] = {}
    for op, count in record.get("by_label", {}).get(label, {}).items():
        if op.startswith(("LDG", "STG", "LDGSTS")) and op != "LDGDEPBAR":
            out[access_bits(op)] = out.get(access_bits(op), 0) + count
    return out


def expected_bits(record: dict, pointer: str, run: int, tile: tuple[str, ...]) -> int:
    """The widest access a run of ``run`` contiguous elements allows: min(128 bits, the run's
    bytes, the elements each thread holds of the tile)."""
    itemsize = _ITEMSIZE[record["ptr_dtypes"][pointer]]
    elements = 1
    for dim in tile:
        elements *= record["tiles"][dim]
    per_thread = max(1, elements // (32 * record["num_warps"]))
    return min(128, 8 * itemsize * run, 8 * itemsize * per_thread)


def _token_contiguous(record: dict, pointer: str) -> bool:
    strides = record.get("ptr_strides", {}).get(pointer, [])
    return len(strides) == 2 and strides[0] == 1 and strides[1] != 1


def vector_failures(records: list[dict], min_run: int = 8) -> list[str]:
    """Gathered loads / scattered stores that are narrower than :func:`expected_bits` (or that
    the SASS does not show at all): through index maps of aligned runs >= ``min_run`` for
    feature-contiguous (row-major) operands; along T for token-contiguous operands (strides
    (1, T)) whose T is a multiple of ``min_run`` (the kernels' T_ALIGN)."""
    bad = []
    for r in records:
        if r["error"]:
            continue
        if r["kernel"] == "grad_values_kernel" and r["flags"]["PRECISION"] == "tf32" and r["arch"] >= 90:
            continue  # both operands MN-major for wgmma: see the module docstring
        for label, pointer, run_name, has_name, tile in ACCESSES.get(r["kernel"], ()):
            if _token_contiguous(r, pointer):
                run = r["flags"].get("T_ALIGN", 1)
                if run < min_run or r["flags"].get("PRECISION") == "tf32":
                    continue  # (tf32 takes K-major operands: a token-contiguous one is staged 4 bytes at a time)
            else:
                run = r["flags"].get(run_name, 1) if run_name else 1
                if run_name is None or not r["flags"].get(has_name) or run < min_run:
                    continue
            want = expected_bits(r, pointer, run, tile)
            got = widths(r, label)
            if not got or min(got) < want:
                bad.append(f"{summary_row(r)}: {label} widths {got or 'missing'} < {want} bits ({r['problem']})")
    return bad


def spill_failures(records: list[dict], paths: tuple[str, ...] = ("default",)) -> list[str]:
    return [
        f"{summary_row(r)} ({r['problem']})"
        for r in records
        if not r["error"] and r["path"] in paths and (r["spill_stores"] or r["spill_loads"])
    ]


def smem_failures(records: list[dict]) -> list[str]:
    return [f"{summary_row(r)} ({r['problem']})" for r in records if not r["error"] and r["smem"] > r["smem_limit"]]


def matrix_unit(record: dict) -> str:
    """ "wgmma" (HGMMA), "mma" (HMMA / DMMA), or "fma" (no tensor-core instruction)."""
    ops = record.get("ops", {})
    if any(op.startswith("HGMMA") for op in ops):
        return "wgmma"
    return "mma" if any(op.startswith(("HMMA", "DMMA")) for op in ops) else "fma"


def wgmma_failures(records: list[dict], min_rows: int = 64) -> list[str]:
    """sm_90 16-bit products with tiles of >= ``min_rows`` rows on whole warpgroups that do
    not use wgmma."""
    bad = []
    for r in records:
        if r["error"] or r["arch"] < 90 or r["kernel"] not in ("gather_matmul_kernel", "grad_values_kernel"):
            continue
        dtype = r["ptr_dtypes"]["lhs_ptr" if "lhs_ptr" in r["ptr_dtypes"] else "x_ptr"]
        rows = r["tiles"].get("BLOCK_T") if r["kernel"] == "gather_matmul_kernel" else r["tiles"].get("BLOCK_A")
        if _ITEMSIZE[dtype] == 2 and rows >= min_rows and r["num_warps"] % 4 == 0 and matrix_unit(r) != "wgmma":
            bad.append(f"{summary_row(r)} ({r['problem']})")
    return bad


def precision_failures(records: list[dict]) -> list[str]:
    """fp32 products: "ieee" must not touch the tensor cores (no tf32 rounding), "tf32" must."""
    bad = []
    for r in records:
        if r["error"] or r["kernel"] not in ("gather_matmul_kernel", "grad_values_kernel"):
            continue
        dtype = r["ptr_dtypes"]["lhs_ptr" if "lhs_ptr" in r["ptr_dtypes"] else "x_ptr"]
        if dtype == "torch.float32" and (matrix_unit(r) == "fma") != (r["flags"]["PRECISION"] == "ieee"):
            bad.append(f"{summary_row(r)} ({r['problem']})")
    return bad


CHECKS = {
    "spills (default path)": spill_failures,
    "shared memory": smem_failures,
    "wgmma": wgmma_failures,
    "vector width (runs >= 8)": vector_failures,
    "fp32 precision": precision_failures,
}


def summary_row(r: dict) -> str:
    t = "x".join(str(v) for v in r["tiles"].values())
    f = r["flags"]
    gathers = [lab for lab, *_ in ACCESSES.get(r["kernel"], ()) if lab.startswith("load")]
    scatters = [lab for lab, *_ in ACCESSES.get(r["kernel"], ()) if lab.startswith("store")]
    idx = "".join(k[4] for k in ("HAS_LHS_INDEX", "HAS_OUT_INDEX", "HAS_IN_INDEX", "HAS_INDEX") if f.get(k))
    runs = "/".join(str(f[k]) for k in ("LHS_RUN", "OUT_RUN", "IN_RUN", "RUN") if k in f)
    wg = matrix_unit(r)
    loads = ";".join(",".join(f"{k}b*{v}" for k, v in sorted(widths(r, lab).items())) for lab in gathers)
    stores = ";".join(",".join(f"{k}b*{v}" for k, v in sorted(widths(r, lab).items())) for lab in scatters)
    if r["error"]:
        return f"sm_{r['arch']} {r['kernel']:<22} {t:<12} ERROR {r['error'][:80]}"
    return (
        f"sm_{r['arch']} {r['kernel']:<22} {r['path']:<8} {r['dtype'][6:]:<8} {f.get('PRECISION', ''):<4} "
        f"idx={idx or '-':<3} run={runs:<6} {t:<12} w{r['num_warps']} s{r['num_stages']} regs={r['regs']:<3} "
        f"spill={r['spill_stores']:<5} smem={r['smem'] // 1024:>3}K {wg:<5} loads={loads or '-':<18} "
        f"stores={stores or '-'}"
    )
