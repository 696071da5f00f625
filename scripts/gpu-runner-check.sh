#!/usr/bin/env bash
# The bf16 CUDA runner's device check, in one call: every op against the CPU reference
# (`strata gpu check`), the runner against Hugging Face transformers on the same weights
# (scripts/hf_runner_compare.py: made models of the Llama-3.2-1B shape as llama, qwen2, qwen3,
# prompts of 16..4096 tokens, whole and in 333-token chunks over the cached prefix), greedy
# continuations across batch sizes 1/8/32, with/without CUDA graphs and overlap scheduling
# (scripts/gpu_greedy_consistency.py), the f32 reference path against the CPU backend
# (scripts/gpu-serve-check.sh), and a short `strata bench serve` on the 1B shape.
# Usage (on the GPU machine): scripts/gpu-runner-check.sh [OUTDIR]
# Environment: STRATA (binary, default target/release/strata), STEPS (default
# "check hf greedy f32 bench").
# Exit status: non-zero when any step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
STEPS=${STEPS:-check hf greedy f32 bench}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/runner-nvidia-smi.txt"
fail=0
step() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; pids=(); }
trap cleanup EXIT
wait_up() {
  for _ in $(seq 1 240); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('$1/health', timeout=2)" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

if step check; then
  "$STRATA" gpu check --json "$OUTDIR/check.json" >"$OUTDIR/check.log" 2>&1 || fail=1
  grep -E "FAIL|gpu check:" "$OUTDIR/check.log" | tail -20
fi

M=/tmp/strata-models
mkdir -p $M
t0=$(date +%s)
for arch in qwen2 qwen3; do
  "$STRATA" make-model --out $M/1b-$arch --size llama-3.2-1b --arch $arch --dtype bf16 2>&1 | tail -1 || fail=1
done
"$STRATA" make-model --out $M/llama-3.2-1b --size llama-3.2-1b --dtype bf16 2>&1 | tail -1 || fail=1
echo "make-model: three 1B-shaped models (llama, qwen2, qwen3) in $(( $(date +%s) - t0 ))s"

if step hf; then
  timeout 300 python3 scripts/hf_runner_compare.py --strata "$STRATA" \
    --models $M/llama-3.2-1b,$M/1b-qwen2,$M/1b-qwen3 \
    --json "$OUTDIR/hf-compare.json" 2>&1 | grep -v Warning | tee "$OUTDIR/hf-compare.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fail=1
fi

if step greedy; then
  # Three servers on one GPU: each a fixed KV pool (the fraction rule counts the others' memory).
  common=(--model-path $M/llama-3.2-1b --page-size 16 --context-length 8192 --host 127.0.0.1 --max-running-requests 64
    --max-total-tokens 131072 --mem-fraction-static 0.95)
  "$STRATA" serve "${common[@]}" --port 32000 >"$OUTDIR/serve-graph.log" 2>&1 &
  pids+=($!)
  if wait_up http://127.0.0.1:32000; then
    "$STRATA" serve "${common[@]}" --port 32001 --disable-cuda-graph >"$OUTDIR/serve-nograph.log" 2>&1 &
    pids+=($!)
    "$STRATA" serve "${common[@]}" --port 32002 --disable-overlap-schedule >"$OUTDIR/serve-nooverlap.log" 2>&1 &
    pids+=($!)
    if wait_up http://127.0.0.1:32001 && wait_up http://127.0.0.1:32002; then
      grep -hE "CUDA graphs|KV pool|weights loaded" "$OUTDIR/serve-graph.log" | cut -c1-300
      timeout 240 python3 scripts/gpu_greedy_consistency.py http://127.0.0.1:32000 http://127.0.0.1:32001 \
        "$OUTDIR/greedy.json" 32 48 http://127.0.0.1:32002 2>&1 | tee "$OUTDIR/greedy.log"
      [ "${PIPESTATUS[0]}" = 0 ] || fail=1
    else echo "FAIL: no-graph server did not come up"; tail -5 "$OUTDIR/serve-nograph.log"; fail=1; fi
  else echo "FAIL: graph server did not come up"; tail -20 "$OUTDIR/serve-graph.log"; fail=1; fi
  cleanup
fi

if step f32; then
  ARCHS="llama qwen3" timeout 180 scripts/gpu-serve-check.sh "$OUTDIR" >"$OUTDIR/f32-check.log" 2>&1 || fail=1
  grep -E "SAME|DIFF|serve compare|gpu-serve-check|FAIL" "$OUTDIR/f32-check.log" | tail -12
fi

if step bench; then
  "$STRATA" serve --model-path $M/llama-3.2-1b --page-size 16 --context-length 10240 --port 32002 \
    --max-running-requests 64 >"$OUTDIR/serve-bench-1b.log" 2>&1 &
  pids+=($!)
  if wait_up http://127.0.0.1:32002; then
    curl -s http://127.0.0.1:32002/get_server_info | python3 -c "import json,sys; d=json.load(sys.stdin); print('server info:', {k: d.get(k) for k in ['backend','max_total_num_tokens','max_total_tokens']})"
    for c in 1 16 64; do
      n=$(( c < 4 ? 4 : c * 2 ))
      timeout 120 "$STRATA" bench serve --base-url http://127.0.0.1:32002 --num-prompts $n --random-input-len 1024 \
        --random-output-len 256 --max-concurrency $c --output-file "$OUTDIR/bench-1b.jsonl" 2>&1 | grep -iE "throughput|ttft|itl|tpot" | head -8
    done
  else echo "FAIL: bench server did not come up"; tail -20 "$OUTDIR/serve-bench-1b.log"; fail=1; fi
  cleanup
fi
echo "== gpu-runner-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
