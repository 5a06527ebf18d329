#!/usr/bin/env bash
# The Triton kernels' GPU check: one unattended run that fits 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in an environment with
#                                           # torch (CUDA), triton and `pip install -e .[test]`
#
# Steps, each under its own time limit (`timeout`), so the whole run ends within ~8 minutes even if a
# step hangs; a step that fails or runs out of time is reported and the next one still runs:
#   1. test_triton_gpu.py: ResNet/transformer shapes against float64 (every regime occurs),
#      determinism, and the > 2**31-element case (int64 offsets and partial indices)      <= 100 s
#   2. the interpreter suite compiled for this GPU (tiny shapes, every layout/rank/dtype, R1/R2/R3
#      forced), the semantics and host-path tests                                            <= 90 s
#   3. compute-sanitizer memcheck and racecheck on a few small cases, when it is installed   <= 70 s
#   4. benchmark slice without torch.compile: batch 32 and 2, every ResNet-50 stage,
#      fp32/bf16, NCHW/NHWC, channel/group, forward/backward, against eager                  <= 130 s
#   5. torch.compile baseline on a sub-slice (batch 32 and 2, stages 256x56 and 2048x7, bf16 and
#      fp32, NCHW/NHWC, channel norm)                                                         <= 70 s
# Writes to benchmarks/results/ (override with OUT_DIR=...):
#   gpu_check-<UTC time>.log                 everything printed (versions, test results, summaries)
#   kernels-<device>-<time>-slice.{json,csv,md}    rows of step 4 (device, torch/triton/CUDA versions,
#   kernels-<device>-<time>-compile.{json,csv,md}  git hash, command; the format ops.dispatch reads)
# and prints every benchmark row that misses a target (correct vs float64; >= 85% of copy bandwidth
# on R1/R2 rows; >= 1.0x eager everywhere, >= 1.5x on NHWC or bf16; >= 1.0x torch.compile).
# With TUNE=1 it then times the split kernels' tuning candidates (plan.TUNE_CANDIDATES; +2 minutes,
# tune-<device>-<time>.json). Exit status: 0 when every step passed, 1 otherwise (benchmark misses
# do not fail the run).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-benchmarks/results}
PY=${PYTHON:-python}
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$OUT_DIR/gpu_check-$STAMP.log"
exec > >(tee -a "$LOG") 2>&1
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=()

step() {   # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== [$((SECONDS - START)) s] $name (limit ${limit} s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "=== $name: TIME LIMIT (${limit} s) reached; its partial output is above"
    FAILED+=("$name (time limit)")
  elif [ "$rc" -ne 0 ]; then
    echo "=== $name: FAILED (exit $rc)"
    FAILED+=("$name (exit $rc)")
  else
    echo "=== $name: ok"
  fi
}

# The Triton tests' folder (tests/ops/triton in the package-mirroring layout, tests/ before it).
T=$(dirname "$(ls tests/ops/triton/test_triton_gpu.py tests/test_triton_gpu.py 2>/dev/null | head -n 1)")
echo "gpu_check $STAMP, git $(git rev-parse HEAD 2>/dev/null || echo unknown), tests in $T"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: not found"
"$PY" - <<'EOF' || { echo "no CUDA device visible to torch: nothing to check"; exit 1; }
import torch, triton
assert torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"device {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs, "
      f"L2 {torch.cuda.get_device_properties(0).L2_cache_size / 2**20:.0f} MiB)")
EOF

step "gpu tests" 100 "$PY" -m pytest -q -p no:cacheprovider -n 4 "$T/test_triton_gpu.py"

step "kernel suite on the GPU" 90 "$PY" -m pytest -q -p no:cacheprovider -n 8 \
  "$T/test_triton_numerics.py" "$T/test_triton_semantics.py" "$T/test_triton_host.py"

if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool" 35 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$PY" -m pytest -q -p no:cacheprovider "$T/test_triton_semantics.py" \
      -k "many_partials_merge_exactly or running_statistics_match or deterministic"
  done
else
  echo "compute-sanitizer: not installed, step skipped"
fi

step "benchmark slice" 130 "$PY" benchmarks/bench_kernels.py --batches 32 2 --dtypes fp32 bf16 \
  --layouts nchw nhwc --norms channel group --passes fwd bwd --no-compile --quick-timing --tag slice \
  --out "$OUT_DIR"

step "torch.compile slice" 70 "$PY" benchmarks/bench_kernels.py --batches 32 2 --stages 256:56 2048:7 \
  --no-transformer --dtypes bf16 fp32 --layouts nchw nhwc --norms channel --passes fwd bwd --quick-timing \
  --tag compile --out "$OUT_DIR"

if [ "${TUNE:-0}" = "1" ]; then   # optional, outside the 8-minute budget
  step "tuning candidates" 120 "$PY" benchmarks/bench_kernels.py --tune --dtypes bf16 fp32 --quick-timing \
    --out "$OUT_DIR"
fi

echo
echo "=== [$((SECONDS - START)) s] summary"
"$PY" - "$OUT_DIR" "$STAMP" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_kernels import summarize
out, stamp = Path(sys.argv[1]), sys.argv[2].replace("Z", "")
for path in sorted(out.glob("kernels-*.json")):
    if path.stat().st_mtime < __import__("time").time() - 900:
        continue   # only this run's files
    data = json.loads(path.read_text())
    print(f"--- {path.name}: {len(data['rows'])} rows, {data['environment'].get('device')}, "
          f"git {data['environment'].get('git_hash', '')[:12]}")
    print(summarize(data["rows"]))
EOF
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "gpu_check: every step passed ($((SECONDS - START)) s); log $LOG"
  exit 0
fi
echo "gpu_check: ${#FAILED[@]} step(s) did not pass: ${FAILED[*]} ($((SECONDS - START)) s); log $LOG"
exit 1
