"""Compile, on a CPU machine, every kernel configuration the launchers can choose, for sm_80 and
sm_90, and read what the GPU would run: registers, spills, shared memory and the SASS
instruction mix (load / store widths per source line, wgmma).

Triton (3.9) compiles ahead of time for a named target without a GPU and ships ptxas and
nvdisasm.  The configurations come from the launchers themselves: each problem of a grid
(``aot_problems.problem_grid``) is planned on meta tensors by ``plan_gather_matmul`` / ``plan_grad_values``
for a ``Device(arch, sm_count)``; every distinct (kernel, signature, constexprs, warps, stages)
is compiled once; with ``autotune`` the autotuner's own config list is compiled as well.

    python -m sao_kernels.ops.triton.aot --grid full --json aot_full.json   # the full matrix
    python -m sao_kernels.ops.triton.aot --grid ci                           # what CI compiles

Run it with ``TRITON_INTERPRET`` unset (the interpreter's kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Optional

import torch

from .aot_problems import ARCHES, Problem, autotune_grid, plan, problem_grid, step_variants  # noqa: F401
from .compiled_checks import CHECKS, spill_failures, summary_row

SMEM_LIMIT = {80: 166912, 90: 232448}  # opt-in shared memory per block, bytes


# --------------------------------------------------------------------------- compiling
def unavailable_reason() -> Optional[str]:
    """Why ahead-of-time compiling cannot run here (None when it can): it needs Triton's NVIDIA
    backend with ptxas and nvdisasm, ``triton.knobs`` and the launcher's specialisation rules
    (Triton 3.9 has them; older releases may not)."""
    try:
        import triton
    except ImportError as e:
        return f"triton is not installed: {e}"
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
        from triton.runtime.jit import native_specialize_impl  # noqa: F401

        triton.knobs.nvidia.dump_ptxas_log  # noqa: B018
    except (ImportError, AttributeError) as e:
        return f"this Triton ({triton.__version__}) lacks an API the compile check uses: {e}"
    if not os.path.exists(_bin("nvdisasm")):
        return f"nvdisasm is not shipped with this Triton ({_bin('nvdisasm')})"
    return None


def source_spec(kernel, args: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of ``kernel`` for these argument values, specialised as
    Triton's launcher would (ints == 1 become constexprs and multiples of 16 get a divisibility
    attribute, except parameters in ``do_not_specialize``; tensors by dtype and alignment)."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    sig, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = args[param.name]
        if param.is_constexpr:
            sig[param.name], constexprs[(i,)] = "constexpr", value
            continue
        ty, spec = native_specialize_impl(
            CUDABackend, value, False, not param.do_not_specialize, not param.do_not_specialize_on_alignment
        )
        if ty == "constexpr":
            sig[param.name], constexprs[(i,)] = "constexpr", spec
            continue
        sig[param.name] = ty
        if spec:
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    return sig, constexprs, attrs


def compile_key(step, tiles, arch: int) -> str:
    sig, constexprs, attrs = source_spec(step.kernel, dict(step.args, **tiles.constexprs()))
    return json.dumps(
        [
            step.kernel.__name__,
            arch,
            sig,
            sorted((k[0], repr(v)) for k, v in constexprs.items()),
            sorted(k[0] for k in attrs),
            tiles.num_warps,
            tiles.num_stages,
        ]
    )


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


@functools.cache
def _source_labels(path: str) -> dict[int, str]:
    """line -> label of each ``tl.load`` / ``tl.store`` in a kernel source file: the first name
    of its pointer expression (``lhs_rows`` for ``tl.load(lhs_rows + ...)``)."""
    labels = {}
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "store"):
            names = [n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)] if node.args else []
            if names:
                for line in range(node.lineno, node.end_lineno + 1):
                    labels[line] = f"{node.func.attr}:{names[0]}"
    return labels


_SASS_OPS = (
    "LDG",
    "STG",
    "LDGSTS",
    "LDL",
    "STL",
    "HGMMA",
    "HMMA",
    "FFMA",
    "DFMA",
    "DMMA",
    "UTMALDG",
    "LDSM",
    "RED",
    "ATOM",
)


def sass_summary(cubin: bytes, kernel_file: str) -> tuple[dict, dict]:
    """(opcode counts, {source label: opcode counts}) of the memory and matrix instructions."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        sass = subprocess.run(
            [_bin("nvdisasm"), "--print-line-info", f.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    labels = _source_labels(kernel_file)
    # Line info names the file the kernel was first compiled from: a cubin from Triton's cache
    # may come from another checkout (or a deleted one) of the same source, since the cache key
    # holds the source's hash.  Match on the package-relative path, not on the file itself.
    tail = os.path.join(*pathlib.Path(kernel_file).resolve().parts[-4:])
    ops: dict[str, int] = {}
    by_label: dict[str, dict[str, int]] = {}
    where = None
    for line in sass.splitlines():
        m = re.search(r'//## File "(.*?)", line (\d+)', line)
        if m:
            same = os.path.normpath(m.group(1)).endswith(os.sep + tail)
            where = labels.get(int(m.group(2))) if same else None
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m:
            continue
        op = m.group(1)
        if op.split(".")[0] not in _SASS_OPS:
            continue
        ops[op] = ops.get(op, 0) + 1
        if where is not None:
            by_label.setdefault(where, {})
            by_label[where][op] = by_label[where].get(op, 0) + 1
    return ops, by_label


def compile_step(step, tiles, arch: int) -> dict:
    """Compile one step with ``tiles`` for sm_<arch>; its resource use and SASS summary."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    args = dict(step.args, **tiles.constexprs())
    sig, constexprs, attrs = source_spec(step.kernel, args)
    log = io.StringIO()
    start = time.perf_counter()
    previous = triton.knobs.nvidia.dump_ptxas_log
    triton.knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(step.kernel, sig, constexprs, attrs),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages),
            )
    finally:
        triton.knobs.nvidia.dump_ptxas_log = previous
    seconds = time.perf_counter() - start
    text = log.getvalue()
    if "Used" not in text:  # a cache hit compiles nothing: ask ptxas for the resource report
        text = _ptxas_report(compiled.asm["ptx"], arch)
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    ops, by_label = sass_summary(compiled.asm["cubin"], inspect.getsourcefile(step.kernel.fn))
    return dict(
        regs=int(regs.group(1)) if regs else None,
        spill_stores=int(spills.group(1)) if spills else None,
        spill_loads=int(spills.group(2)) if spills else None,
        smem=compiled.metadata.shared,
        smem_limit=SMEM_LIMIT[arch],
        ops=ops,
        by_label=by_label,
        compile_s=round(seconds, 2),
    )


def _ptxas_report(ptx: str, arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        open(src, "w").write(ptx)
        gpu_name = f"--gpu-name={sm_arch_from_capability(arch)}"
        r = subprocess.run(
            [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", gpu_name, src, "-o", os.path.join(tmp, "k.o")],
            capture_output=True,
            text=True,
        )
    return r.stdout + r.stderr


# --------------------------------------------------------------------------- the matrix
@dataclasses.dataclass
class Job:
    problem: Problem
    arch: int
    autotune: bool
    step: int
    variant: int
    labels: list


def jobs(grid: str, arches: Iterable[int], autotune: bool = True) -> list[Job]:
    """One job per distinct compiled binary: the grid's problems with the heuristic tiles, and
    (``autotune``) the autotune candidates of ``autotune_grid``."""
    arches = tuple(arches)
    work = [(p, a, False) for a in arches for p in problem_grid(grid)]
    if autotune:
        work += [(p, a, True) for p, tuned_arches in autotune_grid(grid) for a in tuned_arches if a in arches]
    found: dict[str, Job] = {}
    for problem, arch, tuned in work:
        for s, step in enumerate(plan(problem, arch, tuned)):
            for v, (path, tiles) in enumerate(step_variants(step)):
                if tuned and path == "default":
                    continue
                key = compile_key(step, tiles, arch)
                if key not in found:
                    found[key] = Job(problem, arch, tuned, s, v, [])
                found[key].labels.append(problem.label)
    return list(found.values())


def run_job(job: Job) -> dict:
    step = plan(job.problem, job.arch, job.autotune)[job.step]
    path, tiles = step_variants(step)[job.variant]
    record = dict(
        kernel=step.kernel.__name__,
        arch=job.arch,
        path=path,
        tiles=tiles.constexprs(),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        dtype=str(next(v.dtype for v in step.args.values() if isinstance(v, torch.Tensor))),
        ptr_dtypes={k: str(v.dtype) for k, v in step.args.items() if isinstance(v, torch.Tensor)},
        ptr_strides={k: list(v.stride()) for k, v in step.args.items() if isinstance(v, torch.Tensor)},
        flags={k: v for k, v in step.args.items() if k.isupper() and k != "T_BUCKET"},
        problem=job.problem.label,
        problems=len(job.labels),
        error=None,
    )
    try:
        record.update(compile_step(step, tiles, job.arch))
    except Exception as e:  # noqa: BLE001  (reported, and the tests fail on it)
        record["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    return record


def compile_grid(
    grid: str,
    arches: Iterable[int] = (80, 90),
    autotune: bool = True,
    workers: Optional[int] = None,
    progress: bool = False,
) -> list[dict]:
    """Compile every distinct configuration of ``grid``, in ``workers`` processes."""
    todo = jobs(grid, arches, autotune)
    workers = workers or os.cpu_count() or 1
    records = []
    if workers == 1:
        for i, job in enumerate(todo):
            records.append(run_job(job))
            if progress:
                print(f"[{i + 1}/{len(todo)}]", file=sys.stderr, flush=True)
        return records
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for i, record in enumerate(pool.map(run_job, todo, chunksize=1)):
            records.append(record)
            if progress and (i + 1) % 10 == 0:
                print(f"[{i + 1}/{len(todo)}]", file=sys.stderr, flush=True)
    return records


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="ci", choices=("ci", "full"))
    parser.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90")
    parser.add_argument("--no-autotune", action="store_true", help="skip the autotune candidates")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--quiet", action="store_true", help="no per-config table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    start = time.perf_counter()
    records = compile_grid(
        args.grid, [int(a) for a in args.arch.split(",")], not args.no_autotune, args.workers, progress=True
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if not args.quiet:
        for r in sorted(records, key=lambda r: (r["arch"], r["kernel"], r["path"], r["dtype"], str(r["flags"]))):
            print(summary_row(r))
    errors = [r for r in records if r["error"]]
    failures = {name: check(records) for name, check in CHECKS.items()}
    for name, bad in failures.items():
        for line in bad:
            print(f"FAIL {name}: {line}")
    tuned_spills = spill_failures(records, ("autotune",))
    print(
        f"{len(records)} configurations ({sum(r['path'] == 'autotune' for r in records)} autotune candidates), "
        f"{len(errors)} failed to compile; "
        + ", ".join(f"{name}: {len(bad)} failing" for name, bad in failures.items())
        + f"; autotune candidates that spill: {len(tuned_spills)}; {time.perf_counter() - start:.0f} s"
    )
    return 1 if errors or any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
