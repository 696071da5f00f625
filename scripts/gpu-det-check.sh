#!/usr/bin/env bash
# Batch-invariant ("deterministic") inference on the GPU, one step of scripts/gpu-all.sh (`det`).
# (The kernel-level cases, gemm_rows / attn_decode_rows / attn_extend_rows, are part of
# `strata gpu check`, the `check` / `detcheck` steps.) For MODE in det
# (--enable-deterministic-inference), det1 (the same with STRATA_DET_ATTN=prefill: decode rows on
# the prefill attention kernel too) and default: two servers of the made
# Llama-3.2-1B-shaped model (graphs on / --disable-cuda-graph) and scripts/gpu_det_compare.py
# (greedy at concurrency 1/8/32, graphs on/off, prefix extend vs whole, seeded repeats), then a
# short decode bench on the graph server: `strata bench serve` 512 in / 128 out at concurrency 1
# and 16 (median ITL and output tok/s: the cost of the mode). Last, `strata gpu bench --only
# decode` on the 8B shape with and without --deterministic (raw graph step; DET_RAW=0 skips it).
# Usage: scripts/gpu-det-check.sh [OUTDIR]; env STRATA, DET_MODES (default "det det1 default"),
# DET_SIZE (default llama-3.2-1b), DET_N (prompts, default 32), DET_NEW (tokens, default 48).
# Exit status: non-zero when det or det1 shows any difference or a server fails (differences in
# the default mode are expected and only reported).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
MODES=${DET_MODES:-det det1 default}
SIZE=${DET_SIZE:-llama-3.2-1b}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1
W=${PD_WORK:-/tmp/strata-hb}
M="$W/$SIZE"
mkdir -p "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done; pids=(); }
trap cleanup EXIT
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "FAIL: make-model $SIZE"; exit 1; }
up() { # port log extra-args...
  local port=$1 log=$2; shift 2
  "$STRATA" serve --model-path "$M" --host 127.0.0.1 --port "$port" --page-size 16 --context-length 8192 \
    --max-running-requests 64 --mem-fraction-static 0.3 "$@" > "$log" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 360); do
    curl -sf "127.0.0.1:$port/health" > /dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  echo "FAIL: server on $port did not start ($*)"; tail -8 "$log"; return 1
}
fail=0
for mode in $MODES; do
  flag=()
  # The flag for det and det1 (det1: every row on the prefill attention kernel,
  # STRATA_DET_ATTN=prefill); STRATA_DETERMINISTIC=0 keeps the default servers default even when
  # the caller exported STRATA_DETERMINISTIC=1 (e.g. to run the pd step in det mode).
  [ "$mode" != default ] && flag=(--enable-deterministic-inference)
  export STRATA_DETERMINISTIC=$([ "$mode" != default ] && echo 1 || echo 0)
  export STRATA_DET_ATTN=$([ "$mode" = det1 ] && echo prefill || echo split)
  if up 32300 "$OUTDIR/det-$mode-graph.log" ${flag[@]+"${flag[@]}"} && up 32301 "$OUTDIR/det-$mode-nograph.log" --disable-cuda-graph ${flag[@]+"${flag[@]}"}; then
    grep -hE "batch-invariant|CUDA graphs captured" "$OUTDIR/det-$mode-graph.log" | cut -c1-200
    timeout 240 python3 scripts/gpu_det_compare.py "$mode" http://127.0.0.1:32300 http://127.0.0.1:32301 \
      "$OUTDIR/det-$mode.json" "${DET_N:-32}" "${DET_NEW:-48}" 2>&1 | tee "$OUTDIR/det-$mode-compare.log"
    rc=${PIPESTATUS[0]}
    [ "$mode" != default ] && [ "$rc" != 0 ] && fail=1
    for c in 1 16; do
      n=$(( c == 1 ? 4 : 2 * c ))
      timeout 90 "$STRATA" bench serve --base-url http://127.0.0.1:32300 --num-prompts $n --random-input-len 512 \
        --random-output-len 128 --max-concurrency $c --output-file "$OUTDIR/det-$mode-bench.jsonl" > "$OUTDIR/det-$mode-bench-c$c.log" 2>&1
      med=$(grep -E "Median ITL" "$OUTDIR/det-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      tput=$(grep -E "Output token throughput" "$OUTDIR/det-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      ttft=$(grep -E "Median TTFT" "$OUTDIR/det-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      echo "$mode bench $SIZE c=$c: median ITL ${med:-?} ms, output ${tput:-?} tok/s, median TTFT ${ttft:-?} ms"
    done
  else
    fail=1
  fi
  cleanup
done
# Raw decode step of the 8B shape (random weights, no server) with and without the mode: the
# cost without scheduler noise (graph step at ctx 1024; the det GEMM tuning lines show the
# candidates per weight shape).
if [ "${DET_RAW:-1}" = 1 ]; then
  for f in "" --deterministic; do
    timeout 120 "$STRATA" gpu bench --only decode --decode-batches ${DET_RAW_BATCHES:-1,32} $f \
      > "$OUTDIR/det-raw${f:+-det}.log" 2>&1 || echo "raw bench ${f:-default} rc=$?"
    grep -E "^decode b|tuning \[0x" "$OUTDIR/det-raw${f:+-det}.log" | sed "s/^/raw ${f:-default}: /" | cut -c1-260
  done
fi
echo "== gpu-det-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
