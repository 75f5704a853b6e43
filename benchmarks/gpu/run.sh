#!/usr/bin/env bash
# STEER's GPU check: build, GPU tests, engine exactness on CUDA and the GPU benchmarks in one
# bounded, fail-soft run that writes one results file. See benchmarks/gpu/README.md.
#
#   bash benchmarks/gpu/run.sh [--out DIR] [--budget SECONDS] [--commit SHA]
#                              [--skip STEP,...] [--only STEP,...] [--dry-run]
#
#   --out DIR       where the results go (default benchmarks/results/gpu; a new temporary folder
#                   with --dry-run): DIR/<date>-<device>-<commit7>.md, and beside it .log (every
#                   step's raw output) and .jsonl (the machine-readable records)
#   --budget S      wall-clock budget of the whole run (default 450 s on a GPU, 170 s dry): each
#                   step runs under `timeout`, capped so that every later step keeps its minimum
#   --commit SHA    the commit to record (default: STEER_COMMIT, `git rev-parse HEAD`, the file
#                   benchmarks/gpu/COMMIT, else 'unknown'); the copy of a tree without .git needs it
#   --skip / --only steps by name: env build tests_gpu tests_cuda exactness sampler attention engine
#                   share
#   --dry-run       the same steps on the CPU: TRITON_INTERPRET=1, tiny shapes, a couple of cases
#                   each, cmake configure instead of the build, the CUDA backend tests skipped
#
# Environment: PYTHON (default python3), MAX_JOBS (build jobs, default nproc),
# STEER_GPU_CHECK_CUDA_ARCH (default 90), STEER_GPU_CHECK_WORKERS (pytest-xdist workers, default 8),
# STEER_PEAK_GBPS / STEER_PEAK_TFLOPS (override the datasheet peaks), STEER_GPU_CHECK_KEEP_WORK=1
# (keep the scratch folder). Exit status: 0 every step ok, 1 a step failed or timed out, 2 none
# failed but a step was skipped for the time budget.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/benchmarks/gpu"
cd "$ROOT" || exit 1

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

DRY=0 OUT="" BUDGET="" COMMIT="${STEER_COMMIT:-}" SKIP="," ONLY="" ARGS="$*"
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --budget=*) BUDGET="${1#--budget=}" ;;
    --commit) COMMIT="${2:?--commit needs a sha}"; shift ;;
    --commit=*) COMMIT="${1#--commit=}" ;;
    --skip) SKIP=",${2:?--skip needs step names},"; shift ;;
    --only) ONLY=",${2:?--only needs step names},"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 64 ;;
  esac
  shift
done
[[ $BUDGET =~ ^[0-9]*$ ]] || { echo "run.sh: --budget takes whole seconds, got '$BUDGET'" >&2; exit 64; }

PY="${PYTHON:-python3}"
STEPS=(env build tests_gpu tests_cuda exactness sampler attention engine share)
for name in ${SKIP//,/ } ${ONLY//,/ }; do
  [[ " ${STEPS[*]} " == *" $name "* ]] || { echo "run.sh: no step '$name'; steps: ${STEPS[*]}" >&2; exit 64; }
done
declare -A CAP MIN
if ((DRY)); then
  export TRITON_INTERPRET=1 STEER_GPU_CHECK_DRY_RUN=1
  : "${BUDGET:=170}"
  [[ -n $OUT ]] || OUT="$(mktemp -d "${TMPDIR:-/tmp}/steer-gpu-check.XXXXXX")"
  CAP=([env]=30 [build]=60 [tests_gpu]=90 [tests_cuda]=30 [exactness]=60 [sampler]=45 [attention]=30 [engine]=45 [share]=45)
  MIN=([env]=5 [build]=10 [tests_gpu]=15 [tests_cuda]=0 [exactness]=10 [sampler]=10 [attention]=10 [engine]=10 [share]=10)
else
  unset TRITON_INTERPRET STEER_GPU_CHECK_DRY_RUN  # the GPU check runs the compiled kernels
  : "${BUDGET:=450}"
  [[ -n $OUT ]] || OUT="$ROOT/benchmarks/results/gpu"
  CAP=([env]=40 [build]=240 [tests_gpu]=180 [tests_cuda]=100 [exactness]=100 [sampler]=80 [attention]=80 [engine]=180 [share]=120)
  MIN=([env]=10 [build]=60 [tests_gpu]=60 [tests_cuda]=30 [exactness]=30 [sampler]=30 [attention]=30 [engine]=60 [share]=40)
fi
REPORT_RESERVE=10
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || { echo "run.sh: cannot create $OUT" >&2; exit 1; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/steer-gpu-work.XXXXXX")"

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # steer and steer_kernels from this tree
if ! command -v nvcc >/dev/null 2>&1; then
  for dir in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [[ -x $dir/nvcc ]] && export PATH="$dir:$PATH" && break
  done
fi

# ------------------------------------------------------------------ the results file's name
short_name() {
  local name="${1,,}"
  case "$name" in
    "") echo "nogpu" ;;
    *gh200*) echo "gh200" ;;
    *h200*) echo "h200" ;;
    *h100*pcie*) echo "h100-pcie" ;;
    *h100*nvl*) echo "h100-nvl" ;;
    *h100*) echo "h100" ;;
    *) name="${name#nvidia }"; name="$(tr -c 'a-z0-9' '-' <<<"$name" | tr -s '-')"; name="${name#-}"; name="${name%-}"
       echo "${name:0:24}" ;;
  esac
}
resolve_commit() {
  if [[ -n $COMMIT ]]; then echo "$COMMIT"; return; fi
  git -C "$ROOT" rev-parse HEAD 2>/dev/null && return
  [[ -s $HERE/COMMIT ]] && { head -c 40 "$HERE/COMMIT" | tr -cd 'A-Za-z0-9'; echo; return; }
  echo unknown
}
if ((DRY)); then
  GPU_NAME="" DEVICE_SHORT="cpu-dryrun"
else
  GPU_NAME="$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  DEVICE_SHORT="$(short_name "$GPU_NAME")"
fi
FULL_COMMIT="$(resolve_commit)"
C7="$(tr -cd 'A-Za-z0-9' <<<"${FULL_COMMIT:0:7}")"
NAME="$(date -u +%Y-%m-%d)-$DEVICE_SHORT-${C7:-unknown}"
MD="$OUT/$NAME.md" LOG="$OUT/$NAME.log" JSONL="$OUT/$NAME.jsonl"
: >"$LOG" && : >"$JSONL" || { echo "run.sh: cannot write into $OUT" >&2; exit 1; }
export ROOT HERE WORK JSONL PY DRY COMMIT

T0=$SECONDS
PLANNED=()
for step in "${STEPS[@]}"; do
  if [[ $SKIP == *",$step,"* ]] || [[ -n $ONLY && $ONLY != *",$step,"* ]]; then continue; fi
  PLANNED+=("$step")
done

report() {  # report [--final] [--summary]
  "$PY" "$HERE/report.py" --jsonl "$JSONL" --work "$WORK" --md "$MD" --log-name "$NAME" \
    --command "bash benchmarks/gpu/run.sh $ARGS" --planned "$(IFS=,; echo "${PLANNED[*]}")" \
    --elapsed "$((SECONDS - T0))" --budget "$BUDGET" $( ((DRY)) && echo --dry-run) "$@" 2>>"$LOG" ||
    echo "run.sh: report.py failed (see $LOG)"
}

record() {  # record STEP STATUS RC SECONDS TIMEOUT NOTE
  local note="${6//\\/\\\\}"
  note="${note//\"/\\\"}"
  note="$(tr '\n\t' '  ' <<<"$note")"
  printf '{"kind": "step", "step": "%s", "status": "%s", "rc": "%s", "seconds": %s, "timeout": "%s", "note": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" "${note% }" >>"$JSONL"
  printf '[%4ds] %-11s %-22s exit %-4s %4ss  %s\n' "$((SECONDS - T0))" "$1" "$2" "$3" "$4" "${note% }"
  echo "===== $1: $2 (exit $3) after $4 s. $6" >>"$LOG"
  report
}

reserve_after() {  # the minimum seconds of the planned steps after $1
  local total=0 seen=0 step
  for step in "${PLANNED[@]}"; do
    ((seen)) && total=$((total + ${MIN[$step]}))
    [[ $step == "$1" ]] && seen=1
  done
  echo "$total"
}

FAILED=0 OVER_BUDGET=0
run_step() {  # run_step STEP COMMAND...
  local step=$1
  shift
  if [[ " ${PLANNED[*]} " != *" $step "* ]]; then
    record "$step" "skipped (--skip/--only)" "" 0 "" ""
    return
  fi
  # At most the step's cap and what leaves the later steps their minimums; but at least the
  # step's own minimum while the budget lasts (a short budget squeezes the later steps).
  local remaining=$((BUDGET - (SECONDS - T0) - REPORT_RESERVE))
  local limit=$((remaining - $(reserve_after "$step")))
  ((limit > ${CAP[$step]})) && limit=${CAP[$step]}
  local floor=${MIN[$step]}
  ((floor > remaining)) && floor=$remaining
  ((limit < floor)) && limit=$floor
  if ((limit < 10)); then
    OVER_BUDGET=1
    record "$step" "skipped (time budget)" "" 0 "" "$((BUDGET - (SECONDS - T0)))s of the budget left"
    return
  fi
  echo "===== $step: start $(date -u +%H:%M:%S), timeout ${limit}s: $*" >>"$LOG"
  rm -f "$WORK/$step.note"
  local begin=$SECONDS rc
  # The scripts stop starting new cases a little before the step's timeout.
  STEER_GPU_CHECK_BUDGET_S=$((limit > 45 ? limit - 15 : limit * 2 / 3)) STEER_GPU_CHECK_NOTE="$WORK/$step.note" \
    timeout -s INT -k 20 "$limit" "$@" </dev/null 2>&1 | tee "$WORK/$step.out" >>"$LOG"
  rc=${PIPESTATUS[0]}
  local seconds=$((SECONDS - begin)) status note=""
  [[ -s $WORK/$step.note ]] && note="$(cat "$WORK/$step.note")"
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT"; note="killed after ${limit}s${note:+; $note}"; FAILED=1 ;;
    *) status="FAILED"; FAILED=1 ;;
  esac
  if [[ $status != ok && -z $note ]]; then  # the last line it printed says most often why
    note="$(grep -v '^[[:space:]]*$' "$WORK/$step.out" | tail -n 1 | cut -c 1-200)"
  fi
  record "$step" "$status" "$rc" "$seconds" "$limit" "$note"
}

# ------------------------------------------------------------------ the steps
step_env() {
  echo "+ nvidia-smi"
  timeout 20 nvidia-smi 2>&1 || echo "(nvidia-smi unavailable)"
  local extra=()
  [[ -n $COMMIT ]] && extra+=(--commit "$COMMIT")
  ((DRY)) && extra+=(--dry-run)
  "$PY" "$HERE/env_info.py" "$WORK/env.json" --jsonl "$JSONL" "${extra[@]}"
}

step_build() {
  export STEER_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  export CMAKE_ARGS="-DSTEER_CUDA_ARCHITECTURES=${STEER_GPU_CHECK_CUDA_ARCH:-90} ${CMAKE_ARGS:-}"
  echo "+ STEER_BUILD_CUDA=1 MAX_JOBS=$MAX_JOBS CMAKE_ARGS='$CMAKE_ARGS' pip install --no-build-isolation --no-deps --no-index -e ."
  local how="pip install -e ."
  if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .; then
    how="setup.py build_ext --inplace (pip install -e . failed)"
    echo "+ pip failed; STEER_BUILD_CUDA=auto $PY setup.py build_ext --inplace"
    if ! STEER_BUILD_CUDA=auto "$PY" setup.py build_ext --inplace; then
      echo "pip install -e . and setup.py build_ext --inplace both failed" >"$WORK/build.note"
      return 1
    fi
  fi
  "$PY" - "$how" "$WORK/build.note" <<'EOF'
import importlib, sys
how, note = sys.argv[1], sys.argv[2]
missing = []
for module in ("steer._C", "steer._C_cuda"):
    try:
        importlib.import_module(module)
    except ImportError as error:
        missing.append(f"{module} ({error})")
import steer
from steer.ops import cuda_backend
print("steer.backends():", steer.backends(), "| cuda backend available:", cuda_backend.is_available())
text = f"built by {how}" + (f"; NOT importable: {', '.join(missing)}" if missing else "; steer._C and steer._C_cuda import")
if not missing and not cuda_backend.is_available():
    text += ", but the cuda backend is not available (no GPU visible to it?)"
open(note, "w").write(text)
sys.exit(1 if missing or not cuda_backend.is_available() else 0)
EOF
}

step_build_dry() {
  # cmake and pybind11 are build requirements: a venv made by `pip install -e .` (isolated build)
  # may have neither. Without pybind11 the C++ core and the CUDA detection are still configured.
  local cmake pybind python
  cmake="$(command -v cmake || "$PY" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null)"
  if [[ -z "$cmake" ]]; then
    echo "no cmake here (it is an isolated build requirement): configure not checked" | tee "$WORK/build.note"
    return 0
  fi
  python="$("$PY" -c 'import sys; print(sys.executable)')"
  local modules=(-DSTEER_BUILD_PYTHON=OFF) what="the C++ core only (no pybind11 in this venv)"
  if pybind="$("$PY" -m pybind11 --cmakedir 2>/dev/null)"; then
    modules=(-Dpybind11_DIR="$pybind") what="with the Python modules"
  fi
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  echo "+ cmake configure only (dry run), STEER_BUILD_CUDA=AUTO, $what"
  "$cmake" -S "$ROOT" -B "$WORK/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$python" \
    "${modules[@]}" -DSTEER_BUILD_CUDA=AUTO -DSTEER_CUDA_ARCHITECTURES=90 || return 1
  echo "cmake configure only (dry run), $what" >"$WORK/build.note"
}

run_pytest() {  # run_pytest STEP PYTEST-ARGS...
  local step=$1
  shift
  local options=(-v -rfE --durations=15 -p no:cacheprovider --junitxml="$WORK/junit_$step.xml")
  if ((!DRY)) && "$PY" -c "import xdist" 2>/dev/null; then
    options+=(-n "${STEER_GPU_CHECK_WORKERS:-8}")
  fi
  "$PY" -c "import pytest_timeout" 2>/dev/null && options+=(--timeout=150)
  echo "+ $PY -m pytest ${options[*]} $*"
  "$PY" -m pytest "${options[@]}" "$@"
}

step_tests_gpu() {
  if ((DRY)); then
    run_pytest tests_gpu tests/ops/test_paged_attention_triton.py tests/engine/test_model_runner.py \
      -k "test_extend_defaults or test_op_triton_backend_decode_batch or (reference_logits and llama and triton) or (gpu_extend_prefill_heavy and bfloat16-0-0)"
    return
  fi
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" ||
    { echo "torch sees no CUDA device: the GPU tests would skip" >"$WORK/tests_gpu.note"; return 1; }
  # The files with GPU paths (the samplers' tests run every backend; the engine's run it on the CPU,
  # here under the device's library versions), and any other file of tests/ops or tests/engine that
  # mentions cuda, so that GPU tests added later are not left out. test_cuda.py: the next step.
  local files=(tests/ops/test_triton.py tests/ops/test_sample.py tests/ops/test_combine.py
    tests/ops/test_paged_attention_triton.py tests/engine/test_model_runner.py
    tests/engine/test_engine.py tests/engine/test_step_api.py tests/engine/test_lora.py) file
  for file in $(grep -l cuda tests/ops/test_*.py tests/engine/test_*.py 2>/dev/null); do
    [[ $file == tests/ops/test_cuda.py || " ${files[*]} " == *" $file "* ]] || files+=("$file")
  done
  local present=()
  for file in "${files[@]}"; do [[ -f $file ]] && present+=("$file"); done
  run_pytest tests_gpu "${present[@]}"
}

step_tests_cuda() {
  "$PY" -c "import sys; from steer.ops import cuda_backend; sys.exit(0 if cuda_backend.is_available() else 3)" || {
    echo "steer._C_cuda does not import or sees no GPU (see build): its GPU tests would all skip" >"$WORK/tests_cuda.note"
    return 3
  }
  run_pytest tests_cuda tests/ops/test_cuda.py
}

export -f step_env step_build step_build_dry run_pytest step_tests_gpu step_tests_cuda

trap 'echo "run.sh: interrupted" >&2; report --final >/dev/null; exit 130' INT TERM

echo "STEER GPU check ($( ((DRY)) && echo "DRY RUN on the CPU" || echo "${GPU_NAME:-no GPU found}"), commit ${FULL_COMMIT:0:12}," \
  "budget ${BUDGET}s): results -> $MD"
run_step env bash -c step_env
if ((DRY)); then run_step build bash -c step_build_dry; else run_step build bash -c step_build; fi
run_step tests_gpu bash -c step_tests_gpu
if ((DRY)); then
  record tests_cuda "skipped (dry run)" "" 0 "" "needs steer._C_cuda built and a GPU"
else
  run_step tests_cuda bash -c step_tests_cuda
fi
run_step exactness "$PY" "$HERE/engine_exactness.py" --jsonl "$JSONL"
run_step sampler "$PY" "$HERE/bench_sampler.py" --jsonl "$JSONL"
run_step attention "$PY" "$HERE/bench_attention.py" --jsonl "$JSONL"
run_step engine "$PY" "$HERE/engine_throughput.py" --jsonl "$JSONL"
run_step share "$PY" "$HERE/share_negatives.py" --jsonl "$JSONL"

echo
report --final --summary
[[ ${STEER_GPU_CHECK_KEEP_WORK:-0} == 1 ]] && echo "scratch kept: $WORK" || rm -rf "$WORK"
if ((FAILED)); then exit 1; fi
if ((OVER_BUDGET)); then exit 2; fi
exit 0
