#!/usr/bin/env bash
# End-to-end check of the f32 CUDA reference path, in one device call: for each made tiny model
# (llama, qwen2, qwen3) `strata gpu golden` (CUDA logits vs the Hugging Face fixture and the CPU
# backend), then two `strata serve` instances on the same model, one on CUDA with --dtype float32
# and one with --device cpu, fed the same
# greedy requests (scripts/gpu_serve_compare.py), which must give identical text.
# Usage (on the GPU machine): scripts/gpu-serve-check.sh [OUTDIR]
# Environment: STRATA (binary, default target/release/strata), FIXTURES (default
# tests/fixtures/golden), ARCHS (default "llama qwen2 qwen3").
# Exit status: non-zero when any golden case or any compared request fails.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
FIXTURES=${FIXTURES:-tests/fixtures/golden}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/serve-nvidia-smi.txt"

fail=0
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
wait_up() {
  for _ in $(seq 1 120); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('$1/health', timeout=2)" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
port=31000
for arch in ${ARCHS:-llama qwen2 qwen3}; do
  model=/tmp/strata-model-$arch
  "$STRATA" make-model --out "$model" --size tiny --arch "$arch" >/dev/null || { fail=1; continue; }
  "$STRATA" gpu golden --model-path "$model" --fixture "$FIXTURES/$arch.json" 2>&1 | tee "$OUTDIR/golden-$arch.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fail=1
  common=(--model-path "$model" --page-size 16 --max-total-tokens 16384 --host 127.0.0.1)
  "$STRATA" serve "${common[@]}" --port $port --dtype float32 >"$OUTDIR/serve-cuda-$arch.log" 2>&1 &
  pids+=($!)
  "$STRATA" serve "${common[@]}" --port $((port + 1)) --device cpu >"$OUTDIR/serve-cpu-$arch.log" 2>&1 &
  pids+=($!)
  cu=http://127.0.0.1:$port cp=http://127.0.0.1:$((port + 1))
  if wait_up $cu && wait_up $cp; then
    grep -h "compute backend" "$OUTDIR/serve-cuda-$arch.log" "$OUTDIR/serve-cpu-$arch.log"
    python3 -c "import urllib.request; print(urllib.request.urlopen('$cu/get_server_info').read().decode())" >"$OUTDIR/server-info-$arch.json"
    # NVML's inventory must list the GPU in /get_server_info and /metrics.
    if python3 -c "import json,sys; g=json.load(open(sys.argv[1]))['gpus']; print('gpus:', g); sys.exit(0 if g and g[0]['memory_total_bytes'] > 0 else 1)" "$OUTDIR/server-info-$arch.json" \
      && python3 -c "import urllib.request; m=urllib.request.urlopen('$cu/metrics').read().decode(); print([l for l in m.splitlines() if l.startswith('strata_gpu')][:3]); assert 'strata_gpu_memory_used_bytes{gpu=' in m"; then :
    else echo "FAIL: $arch: no NVML GPU info in /get_server_info or /metrics"; fail=1; fi
    python3 scripts/gpu_serve_compare.py $cu $cp "$OUTDIR/serve-compare-$arch.json" 2>&1 | tee "$OUTDIR/serve-compare-$arch.log"
    [ "${PIPESTATUS[0]}" = 0 ] || fail=1
    # Log-probabilities (issue 12): f32 CUDA vs CPU within 2e-3.
    python3 scripts/gpu_logprobs_compare.py $cu $cp 2>&1 | tee "$OUTDIR/logprobs-$arch.log"
    [ "${PIPESTATUS[0]}" = 0 ] || fail=1
  else
    echo "FAIL: $arch servers did not come up"; tail -5 "$OUTDIR/serve-cuda-$arch.log" "$OUTDIR/serve-cpu-$arch.log"; fail=1
  fi
  cleanup; pids=(); sleep 1
  port=$((port + 2))
done
# The bf16 runner's log-probabilities (its kernels need head_dim a multiple of 32 and a GQA group
# dividing 16: the tiny made Qwen3) against the CPU backend's on the prompt positions, within the
# bf16 bound.
small=/tmp/strata-model-bf16lp
"$STRATA" make-model --out "$small" --size tiny --arch qwen3 >/dev/null || fail=1
"$STRATA" serve --model-path "$small" --page-size 16 --max-total-tokens 16384 --host 127.0.0.1 --port 31090 >"$OUTDIR/serve-bf16-small.log" 2>&1 &
pids+=($!)
"$STRATA" serve --model-path "$small" --page-size 16 --max-total-tokens 16384 --host 127.0.0.1 --port 31091 --device cpu >"$OUTDIR/serve-cpu-small.log" 2>&1 &
pids+=($!)
if wait_up http://127.0.0.1:31090 && wait_up http://127.0.0.1:31091; then
  python3 scripts/gpu_logprobs_compare.py http://127.0.0.1:31090 http://127.0.0.1:31091 --bf16 2>&1 | tee "$OUTDIR/logprobs-bf16.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fail=1
else echo "FAIL: bf16 logprob servers did not come up"; tail -5 "$OUTDIR/serve-bf16-small.log" "$OUTDIR/serve-cpu-small.log"; fail=1; fi
cleanup
echo "== gpu-serve-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
