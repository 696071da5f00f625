#!/usr/bin/env bash
# Served-speed benchmarks of the bf16 CUDA runner, in one device call: `strata gpu bench` (raw
# decode step and prefill of the 8B shape with random on-GPU weights), then for each model shape
# (default: Llama-3.1-8B, made with random bf16 weights by `strata make-model`) `strata serve` +
# `strata bench serve` at concurrency 1, 16, 64 for 1K in / 256 out and 8K in / 128 out, and
# transformers `generate` on the same checkpoint and shapes (scripts/hf-serve-bench.py).
# Usage (on the GPU machine): scripts/gpu-serve-bench.sh [OUTDIR]
# Environment: STRATA, SIZES (default "llama-3.1-8b"), CONCS (default "1 16 64"), SHAPES
# (default "1024:256 8192:128"), RAW (1/0: run `gpu bench`), HF (1/0), HF_CONCS (default CONCS).
# PAGE: the servers' --page-size (default 16; SGLang's default is 1).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUTDIR/bench-nvidia-smi.txt"
fail=0
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; pids=(); sleep 1; }
trap cleanup EXIT
wait_up() {
  for _ in $(seq 1 600); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('$1/health', timeout=2)" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
raw() { # size -> `gpu bench` shape flags
  case $1 in
    llama-3.1-8b) echo "--shape llama-3.1-8b --only copy,gemm,decode,prefill --prefill-lens 2048,8192" ;;
    llama-3.2-1b) echo "--shape llama-3.2-1b --only copy,gemm,decode,prefill --prefill-lens 2048" ;;
  esac
}
M=/tmp/strata-models
mkdir -p $M
for size in ${SIZES:-llama-3.1-8b}; do
  if [ "${RAW:-1}" = 1 ] && [ -n "$(raw $size)" ]; then
    # shellcheck disable=SC2046
    timeout 150 "$STRATA" gpu bench $(raw $size) --decode-batches 1,16,64 --json "$OUTDIR/raw-$size.json" \
      >"$OUTDIR/raw-$size.log" 2>&1 || fail=1
    sed -n '/== summary/,$p' "$OUTDIR/raw-$size.log" | cut -c1-260 | head -20
  fi
  t0=$(date +%s)
  "$STRATA" make-model --out $M/$size --size $size --dtype bf16 >/dev/null 2>&1 || { echo "FAIL make-model $size"; fail=1; continue; }
  echo "make-model $size: $(( $(date +%s) - t0 ))s, $(du -sh $M/$size | cut -f1)"
  t0=$(date +%s)
  "$STRATA" serve --model-path $M/$size --page-size ${PAGE:-16} --context-length 10240 --port 33000 \
    --max-running-requests 64 >"$OUTDIR/serve-$size.log" 2>&1 &
  pids+=($!)
  if ! wait_up http://127.0.0.1:33000; then
    echo "FAIL: $size server did not come up"; tail -20 "$OUTDIR/serve-$size.log"; fail=1; cleanup; continue
  fi
  echo "serve $size up in $(( $(date +%s) - t0 ))s"
  grep -hE "weights loaded|KV pool|CUDA graphs" "$OUTDIR/serve-$size.log" | sed 's/.*INFO//' | cut -c1-200
  for shape in ${SHAPES:-1024:256 8192:128}; do
    in=${shape%:*} out=${shape#*:}
    for c in ${CONCS:-1 16 64}; do
      n=$(( c == 1 ? 4 : c * 2 ))
      [ "$in" -gt 4096 ] && [ "$c" -gt 1 ] && n=$c
      timeout 200 "$STRATA" bench serve --base-url http://127.0.0.1:33000 --num-prompts $n \
        --random-input-len "$in" --random-output-len "$out" --max-concurrency $c \
        --output-file "$OUTDIR/bench-$size.jsonl" >"$OUTDIR/bench-$size-$in-c$c.log" 2>&1 || fail=1
      echo "-- $size in=$in out=$out c=$c n=$n"
      grep -iE "output token throughput|mean ttft|median ttft|mean itl|median itl|median tpot" "$OUTDIR/bench-$size-$in-c$c.log" | head -6
    done
  done
  grep -h "CUDA runner" "$OUTDIR/serve-$size.log" | sed 's/.*INFO//' | tail -6
  cleanup
  if [ "${HF:-1}" = 1 ]; then
    timeout 240 python3 scripts/hf-serve-bench.py --model $M/$size --concs "$(echo ${HF_CONCS:-${CONCS:-1 16 64}} | tr ' ' ,)" \
      --shapes "$(echo ${SHAPES:-1024:256 8192:128} | tr ' ' ,)" --json "$OUTDIR/hf-$size.json" 2>&1 | grep -v Warn | tee "$OUTDIR/hf-$size.log"
  fi
done
echo "== gpu-serve-bench: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
