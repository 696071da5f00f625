#!/usr/bin/env bash
# The CUDA backend's device run, in one call: device info, every op against the CPU reference,
# the benchmarks, (HF=1, default) Hugging Face transformers on the same shapes, and (SERVE=1, default)
# the end-to-end CudaBackend check, scripts/gpu-serve-check.sh.
# Usage (on the GPU machine): scripts/gpu-check.sh [OUTDIR]
# Environment: STRATA (binary, default target/release/strata), BENCH_ARGS (extra `gpu bench`
# flags), HF (1/0), HF_TIMEOUT (seconds, default 300).
# Exit status: non-zero when any op check fails, the benchmark errors or the serve check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"

. scripts/gpu-env.sh

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUTDIR/nvidia-smi.txt"
"$STRATA" gpu info 2>&1 | tee -a "$OUTDIR/nvidia-smi.txt"

"$STRATA" gpu check --json "$OUTDIR/check.json" 2>&1 | tee "$OUTDIR/check.log"
rc_check=${PIPESTATUS[0]}
# Second compile-free start: the kernel cache must be hit now.
"$STRATA" gpu check --json /tmp/strata-check2.json 2>&1 | grep -E "kernels ready|gpu check:" | tee -a "$OUTDIR/check.log"

# shellcheck disable=SC2086
"$STRATA" gpu bench --json "$OUTDIR/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUTDIR/bench.log"
rc_bench=${PIPESTATUS[0]}

if [ "${HF:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout "${HF_TIMEOUT:-300}" python3 scripts/hf-llama-bench.py --json "$OUTDIR/hf.json" 2>&1 | tee "$OUTDIR/hf.log"
fi
rc_serve=0
if [ "${SERVE:-1}" = 1 ]; then
  STRATA="$STRATA" scripts/gpu-serve-check.sh "$OUTDIR" 2>&1 | tee "$OUTDIR/serve-check.log"
  rc_serve=${PIPESTATUS[0]}
fi
echo "== check rc=$rc_check bench rc=$rc_bench serve rc=$rc_serve =="
grep -E "FAIL|gpu check:" "$OUTDIR/check.log" | tail -20
[ "$rc_check" = 0 ] && [ "$rc_bench" = 0 ] && [ "$rc_serve" = 0 ]
