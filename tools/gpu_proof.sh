#!/usr/bin/env bash
# make gpu-proof: everything a lent GPU machine must show, in one call of the device
# tool (600 s at most). Stage limits: build 240 s, tests 120, sanitizers 120, benchmarks
# 150 + 60, each cut to what is left of FASTWN_GPU_PROOF_SECONDS (default 560) so that
# the script ends, with its summary, before the call's limit kills it.
#   1. build fastwn with FASTWN_CUDA=ON for this GPU's architecture only (fail fast: no
#      build, nothing else runs, the build log comes back);
#   2. the whole test suite on CUDA (pytest-xdist): every dtype, schedule, alignment, dim;
#   3. tools/cuda_sanitize_driver.py under compute-sanitizer memcheck, racecheck,
#      initcheck and synccheck;
#   4. the op benchmark on CUDA (CUDA events; a D2D copy of the same bytes; torch and
#      torch.compile as baselines) and the model benchmark.
# Every stage runs under a time limit and the next one runs whatever the last gave.
# Logs and results go to $OUT (when set; the device tool brings back what is there even
# when the call is killed), written as each stage runs. FASTWN_GPU_PROOF_DRY=1: the dry
# run on a machine without a GPU: builds against PYTHON's CUDA torch, runs what needs no
# GPU, skips the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY=${FASTWN_GPU_PROOF_DRY:-0}
# The dry run builds on however few cores this machine has, under no call limit.
if [ "$DRY" = 1 ]; then DEADLINE=${FASTWN_GPU_PROOF_SECONDS:-3600}; BUILD_LIMIT=1800
else DEADLINE=${FASTWN_GPU_PROOF_SECONDS:-560}; BUILD_LIMIT=240; fi
OUT=${OUT:-build/gpu-proof}
mkdir -p "$OUT"
LOG="$OUT/proof.log"
: > "$LOG"
declare -A STATUS
ORDER=()

log() { echo "$*" | tee -a "$LOG"; }
skip() { ORDER+=("$1"); STATUS[$1]="skipped: $2"; log "=== $1: skipped ($2)"; }
# stage NAME SECONDS CMD...: runs CMD with a limit, its output into the log, and records
# pass/fail. The limit is cut to the time left before DEADLINE, less 10 s for the summary;
# with under 20 s left the stage is skipped (and counts as failed: it did not run).
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS - 10))
  if [ "$left" -lt 20 ]; then
    ORDER+=("$name"); STATUS[$name]="not run: out of time"; log "=== $name: not run (out of time)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  ORDER+=("$name")
  log "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
  log "=== $name: ${STATUS[$name]}"
  return $rc
}

log "fastwn GPU proof, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), dry=$DRY"
if [ "$DRY" = 1 ]; then
  ARCH=${FASTWN_CUDA_ARCHS:-90}
  DEVICE_NAME="dry run (no GPU)"
else
  nvidia-smi >> "$LOG" 2>&1
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
  DEVICE_NAME=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$LOG"
nvcc --version | tail -1 | tee -a "$LOG"
log "device: $DEVICE_NAME; building for sm_$ARCH"

if ! stage build $BUILD_LIMIT env FASTWN_CUDA=ON FASTWN_CUDA_ARCHS="$ARCH" SKBUILD_BUILD_DIR=build/gpu-proof-cmake "$PYTHON" -m pip install -v --no-build-isolation \
    --no-deps --no-index --force-reinstall .; then
  log "build failed: nothing else can run"
else
  grep -iE "spill|warning" "$LOG" | grep -v "^===" | sort -u | head -40 > "$OUT/ptxas.txt"
  INFO=$(cd /tmp && FASTWN_REQUIRE_EXTENSION=1 "$PYTHON" -m fastwn info)
  log "$INFO"
  export FASTWN_REQUIRE_EXTENSION=1
  if [ "$DRY" = 1 ]; then
    stage tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_build.py tests/test_errors.py
    stage sanitize-driver 120 "$PYTHON" tools/cuda_sanitize_driver.py --device cpu
    skip compute-sanitizer "no GPU"
    stage bench-smoke 300 "$PYTHON" -m fastwn bench --device cpu --quick --dtypes bfloat16 --reps 3 --budget 0.5 \
      --json "$OUT/dry-ops.json"
    skip bench-cuda "no GPU"
  else
    stage tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider -n 16 --maxfail=20 tests \
      --ignore=tests/test_wheel.py --ignore=tests/test_transformers.py --ignore=tests/test_cpp_kernels.py
    # The four tools at once (each mostly waits on torch's start-up under the tool); their
    # logs go into proof.log, which keeps the files that come back few.
    export PYTHON
    stage compute-sanitizer 120 bash -c '
      rc=0; pids=()
      for tool in memcheck racecheck initcheck synccheck; do
        compute-sanitizer --tool $tool --error-exitcode 1 "$PYTHON" tools/cuda_sanitize_driver.py \
          > build/sanitize-$tool.log 2>&1 & pids+=($!)
      done
      i=0
      for tool in memcheck racecheck initcheck synccheck; do
        wait ${pids[$i]}; r=$?; i=$((i + 1))
        echo "--- $tool: rc=$r"; tail -30 build/sanitize-$tool.log
        [ $r -eq 0 ] || rc=1
      done
      exit $rc'
    # Straight into $OUT: a stage the deadline kills leaves its progress lines in the log.
    RES="$OUT/cuda-$(echo "$DEVICE_NAME" | cut -d, -f1 | tr ' ' '-' | tr -cd 'A-Za-z0-9-')"
    stage bench-ops 150 "$PYTHON" -m fastwn bench --device cuda --reps 10 --budget 1 --json "$RES-ops.json"
    stage bench-models 60 "$PYTHON" -m fastwn bench --models --device cuda --json "$RES-models.json"
  fi
fi

log "=== summary ($DEVICE_NAME)"
fail=0
for name in "${ORDER[@]}"; do
  log "  $name: ${STATUS[$name]}"
  case "${STATUS[$name]}" in rc=0*|skipped*) ;; *) fail=1 ;; esac
done
exit $fail
