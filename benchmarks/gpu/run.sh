#!/usr/bin/env bash
# Everything a first GPU run needs, in one call of at most ~8 minutes on an H100 / H200:
# environment record, native extension build, the GPU tests, the launcher-path timings (cost
# model check), the bench sweep with its baselines (cuBLAS dense, torch composite,
# torch._grouped_mm, BSR) in bf16 and fp32 (IEEE and tf32), and the end-to-end MLP step.
#
#   bash benchmarks/gpu/run.sh [OUT_DIR]        # default: $OUT, else ./gpu_run
#   bash benchmarks/gpu/run.sh --rehearsal [OUT_DIR]   # (or SAO_GPU_REHEARSAL=1) every stage on the CPU
#
# The rehearsal runs every stage's Python on the CPU in about a minute (tests/gpu/test_gpu_rehearsal.py
# runs it in CI): Triton's interpreter (TRITON_INTERPRET=1, exported before any Python starts),
# tiny shapes, the tests collected but not run, the build replaced by parsing setup.py, and the
# CUDA-only baselines (torch._grouped_mm) skipped with their reason in the results; its numbers
# mean nothing.  What it catches are the Python errors that would otherwise cost GPU minutes.
#
# Every stage runs under `timeout`, capped by what is left of SAO_GPU_BUDGET_S (default 450 s),
# most important first, so a slow stage costs only itself; stages that no longer fit are skipped
# (listed as such in summary.txt; SAO_GPU_BUDGET_S=560 fits a 10-minute command).  All logs and results are written to
# a work folder and packed into OUT_DIR/results.tar.gz; OUT_DIR also gets summary.txt (printed
# at the end) and run.log: three files, whatever the number of results.  Exit status 0 when
# every stage succeeded, else 1.
set -uo pipefail
REHEARSAL="${SAO_GPU_REHEARSAL:-0}"
if [[ "${1:-}" == "--rehearsal" ]]; then REHEARSAL=1; shift; fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/gpu_run}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"  # a relative OUT_DIR is the caller's, not the repo's
cd "$ROOT"
WORK="$(mktemp -d /tmp/sao_gpu_run.XXXX)"
BUDGET="${SAO_GPU_BUDGET_S:-450}"
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
# Shapes and settings of the GPU run, and of the rehearsal (the same commands on the CPU).
if [[ "$REHEARSAL" == 1 ]]; then
  export TRITON_INTERPRET=1  # before any Python starts: sao_kernels reads it at import
  DEV=cpu TOKENS=16 SWEEP_GROUPS=2 WIDTH_S=64 WIDTH_L=128 RUN_TIMES=(--min-run-time 0.001 --max-run-time 0.002)
  PATHS_ARGS=(--device cpu --tokens 16 --groups 2 --width 64 --dtypes bfloat16)
  E2E_ARGS=(--device cpu --backend triton --d 32 --layers 1 --tokens 16 --dtype bfloat16 --groups 2
            --min-run-time 0.001 --max-run-time 0.002)
  TEST_ARGS=(--collect-only)  # collection imports every test module under the interpreter; running is CI's
  echo "== rehearsal on the CPU: Triton's interpreter, tiny shapes; the timings mean nothing"
else
  DEV=cuda TOKENS=16,128,2048,8192 SWEEP_GROUPS=2,4,8,16 WIDTH_S=4096 WIDTH_L=8192 RUN_TIMES=(--min-run-time 0.05 --max-run-time 0.3)
  PATHS_ARGS=()
  E2E_ARGS=(--device cuda --groups 2 4 8 16 --min-run-time 0.3)
  TEST_ARGS=()
fi
STAGES="$WORK/stages.tsv"
printf "stage\tstatus\tseconds\n" > "$STAGES"

# stage NAME MAX_SECONDS COMMAND...: run COMMAND with its output in $WORK/NAME.log, for at most
# MAX_SECONDS and never past the budget (15 s are kept back for packing).
stage() {
  local name="$1" cap="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 15 ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    printf "%s\tskipped (budget spent)\t0\n" "$name" >> "$STAGES"; echo "== $name: skipped, budget spent"; return
  fi
  echo "== $name (<= ${limit} s)"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  local status="ok"; (( rc == 124 || rc == 137 )) && status="TIMED OUT at ${limit} s"; (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (rc=$rc)"
  printf "%s\t%s\t%s\n" "$name" "$status" "$dt" >> "$STAGES"
  echo "   $status in ${dt} s; last lines:"; tail -n 3 "$WORK/$name.log" | sed 's/^/   | /'
}

bench() {  # bench NAME MAX_SECONDS TF32(0|1) EXTRA_ARGS...: one slice of the sweep
  local name="$1" cap="$2" tf32="$3"; shift 3
  # TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1: torch.backends.cuda.matmul.allow_tf32 reads True, so
  # the Triton kernels, cuBLAS dense and every baseline run fp32 products on tf32 tensor cores.
  stage "$name" "$cap" env TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="$tf32" "$PY" -m sao_kernels bench --device "$DEV" \
    --no-progress --groups "$SWEEP_GROUPS" --block-sizes 1,16 --tokens "$TOKENS" --roofline \
    --backends triton,torch,grouped_mm,bsr "${RUN_TIMES[@]}" --out "$WORK/$name" "$@"
}

# 1. what ran where
ENV_PY='import sys, torch, triton
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
else:
    print("no CUDA device: a rehearsal on the CPU")'
stage env 20 bash -c "if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo 'nvidia-smi: not found'; fi; $PY -c '$ENV_PY'; git log -1 --format=%H 2>/dev/null; git status --short 2>/dev/null | head -50"
# 2. the native CPU extension (the ops' CPU path; Triton needs no build)
if [[ "$REHEARSAL" == 1 ]]; then  # CI builds it; a rehearsal only checks that setup.py loads
  stage build 60 bash -c "echo 'rehearsal: no build (CI built the extension); setup.py --name:'; $PY setup.py --name"
else
  stage build 60 env MAX_JOBS=16 "$PY" setup.py --quiet build_ext --inplace
fi
# 3. correctness of the compiled kernels (the CPU compile check, tests/ops/triton/test_aot.py, stays in CI)
stage tests 140 "$PY" -m pytest -q -p no:cacheprovider --maxfail=25 tests/gpu/test_gpu.py tests/ops \
  --deselect tests/ops/triton/test_aot.py --ignore tests/ops/test_native.py ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}
# 4. launcher paths vs the cost model (fused / permute-then-contiguous / split-K)
stage paths 50 "$PY" benchmarks/gpu/paths.py --out "$WORK/paths" ${PATHS_ARGS[@]+"${PATHS_ARGS[@]}"}
# 5. the sweep: bf16 first (the headline), then fp32 IEEE and tf32 training steps
bench "bench_bf16_$WIDTH_S" 60 0 --features "$WIDTH_S" --dtypes bfloat16 --ops linear_fwd,linear_fwd_bwd
bench "bench_bf16_$WIDTH_L" 60 0 --features "$WIDTH_L" --dtypes bfloat16 --ops linear_fwd,linear_fwd_bwd
# 6. the end-to-end MLP training step
stage e2e_mlp 50 "$PY" benchmarks/bench_e2e_mlp.py "${E2E_ARGS[@]}" --out "$WORK/e2e"
bench "bench_fp32_ieee_$WIDTH_S" 45 0 --features "$WIDTH_S" --dtypes float32 --ops linear_fwd_bwd
bench "bench_fp32_tf32_$WIDTH_S" 45 1 --features "$WIDTH_S" --dtypes float32 --ops linear_fwd_bwd
bench "bench_fp32_ieee_$WIDTH_L" 45 0 --features "$WIDTH_L" --dtypes float32 --ops linear_fwd_bwd
bench "bench_fp32_tf32_$WIDTH_L" 45 1 --features "$WIDTH_L" --dtypes float32 --ops linear_fwd_bwd

# Pack and summarise.
"$PY" - "$WORK" > "$WORK/summary.txt" 2>&1 <<'EOF'
import csv, glob, json, os, sys
work = sys.argv[1]
print(open(os.path.join(work, "stages.tsv")).read())
log = os.path.join(work, "tests.log")
if os.path.exists(log):
    lines = open(log).read().splitlines()
    bad = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    print("tests:", *bad[:30], *[line for line in lines if line.strip()][-1:], sep="\n  ")
paths = os.path.join(work, "paths", "paths.csv")
if os.path.exists(paths):
    print("\nlauncher paths (forward ms: median; model = cost_model's prediction):")
    for r in csv.DictReader(open(paths)):
        print(f"  {r['dtype']:<8} T={r['T']:<5} G={r['G']:<3} {r['path']:<18} fwd {float(r['fwd_ms']):.4f} "
              f"model {float(r['fwd_model_ms']):.4f} grad_in {float(r['grad_input_ms']):.4f} "
              f"grad_v {float(r['grad_values_ms']):.4f} dense {float(r['dense_fwd_ms']):.4f} planner {r['planner_fwd']}")
for path in sorted(glob.glob(os.path.join(work, "bench_*", "*.json"))):
    data = json.load(open(path))
    ts = sorted({r["tokens"] for r in data.get("results", [])})
    ends = (ts[0], ts[-1]) if ts else ()  # the smallest and largest T (16 and 8192 on the GPU)
    rows = [r for r in data.get("results", []) if r.get("tokens") in ends]
    print(f"\n{os.path.basename(os.path.dirname(path))}: {len(data.get('results', []))} rows, "
          f"{len(data.get('skipped', []))} skipped; T in {ends}: speed-up over dense [95% CI] / roofline fraction")
    key = lambda r: tuple(str(r.get(k)) for k in ("op", "tokens", "groups", "block_size", "backend"))  # noqa: E731
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in sorted(rows, key=key):
        g = r.get
        print(f"  {g('op')} T={g('tokens')} {g('in_features')}^2 G={g('groups')} b={g('block_size')} {g('backend')}: "
              f"{f(g('ms'), '.4g')} ms, x{f(g('speedup'), '.2f')} [{f(g('speedup_lo'), '.2f')}, "
              f"{f(g('speedup_hi'), '.2f')}] of dense (ideal {f(g('ideal_speedup'), 'g')}), "
              f"roofline {f(g('roofline_fraction'), '.1%')} {g('flag') or ''}")
EOF
cp "$WORK/summary.txt" "$OUT_DIR/summary.txt"
cat "$WORK"/*.log > "$OUT_DIR/run.log" 2>/dev/null
tar czf "$OUT_DIR/results.tar.gz" -C "$WORK" .
echo "== done in $(( $(date +%s) - START )) s: $OUT_DIR/{summary.txt,run.log,results.tar.gz}"
cat "$OUT_DIR/summary.txt"
# exit status: 0 when every stage ran and succeeded, 1 otherwise (the three files are written either way)
NOT_OK=$(tail -n +2 "$STAGES" | awk -F'\t' '$2 != "ok"' | wc -l)
rm -rf "$WORK"
(( NOT_OK == 0 ))
