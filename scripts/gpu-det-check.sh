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
# Both model shapes: the served checks run per size in DET_SIZES (default "llama-3.2-1b
# llama-3.1-8b"; the 8B one with the modes of DET_MODES_8B, default "det default"), the raw step
# per shape too. Each size ends with a `cost` line (det vs default median ITL at c=1 and 16, raw
# graph step) and the script with `== gpu-det-check: PASS ==` or `== gpu-det-check: FAIL ==`.
# Usage: scripts/gpu-det-check.sh [OUTDIR]; env STRATA, DET_MODES (default "det det1 default"),
# DET_SIZES, DET_MODES_8B, DET_N (prompts, default 32), DET_NEW (tokens, default 48),
# DET_GRAPH_ARGS (extra flags of the graph server, e.g. "--cuda-graph-bs 1 3 6 --cuda-graph-max-bs
# 4": the captured sizes then come from the flags; batches pad to them or run eagerly), DET_BENCH=0
# skips the decode bench, DET_PAGE the servers' --page-size (default 16; SGLang's default is 1).
# Exit status: non-zero when det or det1 shows any difference or a server fails (differences in
# the default mode are expected and only reported).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZES=${DET_SIZES:-${DET_SIZE:-llama-3.2-1b llama-3.1-8b}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1
W=${PD_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done; pids=(); }
trap cleanup EXIT
# Servers start one after the other: --mem-fraction-static counts the whole GPU's used memory, so
# the second one (started after the first took its share) gets the larger fraction.
up() { # port log extra-args...
  local port=$1 log=$2; shift 2
  "$STRATA" serve --model-path "$M" --host 127.0.0.1 --port "$port" --page-size "${DET_PAGE:-16}" --context-length 8192 \
    --max-running-requests 64 "$@" > "$log" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 480); do
    curl -sf "127.0.0.1:$port/health" > /dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  echo "FAIL: server on $port did not start"; tail -8 "$log"; return 1
}
fail=0
declare -A itl
for SIZE in $SIZES; do
M="$W/$SIZE"
case $SIZE in *8b*) MODES=${DET_MODES_8B:-det default} ;; *) MODES=${DET_MODES:-det det1 default} ;; esac
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "FAIL: make-model $SIZE"; fail=1; continue; }
echo "== $SIZE: modes $MODES"
for mode in $MODES; do
  flag=()
  # The flag for det and det1 (det1: every row on the prefill attention kernel,
  # STRATA_DET_ATTN=prefill); STRATA_DETERMINISTIC=0 keeps the default servers default even when
  # the caller exported STRATA_DETERMINISTIC=1 (e.g. to run the pd step in det mode).
  [ "$mode" != default ] && flag=(--enable-deterministic-inference)
  export STRATA_DETERMINISTIC=$([ "$mode" != default ] && echo 1 || echo 0)
  export STRATA_DET_ATTN=$([ "$mode" = det1 ] && echo prefill || echo split)
  glog="$OUTDIR/det-$SIZE-$mode-graph.log" nlog="$OUTDIR/det-$SIZE-$mode-nograph.log"
  # shellcheck disable=SC2086
  if up 32300 "$glog" --mem-fraction-static 0.3 ${flag[@]+"${flag[@]}"} ${DET_GRAPH_ARGS:-} \
    && up 32301 "$nlog" --mem-fraction-static 0.62 --disable-cuda-graph ${flag[@]+"${flag[@]}"}; then
    grep -hE "batch-invariant|CUDA graphs captured" "$glog" | cut -c1-240
    timeout 240 python3 scripts/gpu_det_compare.py "$mode" http://127.0.0.1:32300 http://127.0.0.1:32301 \
      "$OUTDIR/det-$SIZE-$mode.json" "${DET_N:-32}" "${DET_NEW:-48}" 2>&1 | tee "$OUTDIR/det-$SIZE-$mode-compare.log"
    rc=${PIPESTATUS[0]}
    [ "$mode" != default ] && [ "$rc" != 0 ] && { fail=1; echo "FAIL: $SIZE $mode served comparison (rc=$rc)"; }
    for c in $([ "${DET_BENCH:-1}" = 1 ] && echo 1 16); do
      n=$(( c == 1 ? 4 : 2 * c ))
      timeout 90 "$STRATA" bench serve --base-url http://127.0.0.1:32300 --num-prompts $n --random-input-len 512 \
        --random-output-len 128 --max-concurrency $c --output-file "$OUTDIR/det-$SIZE-$mode-bench.jsonl" > "$OUTDIR/det-$SIZE-$mode-bench-c$c.log" 2>&1
      med=$(grep -E "Median ITL" "$OUTDIR/det-$SIZE-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      tput=$(grep -E "Output token throughput" "$OUTDIR/det-$SIZE-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      ttft=$(grep -E "Median TTFT" "$OUTDIR/det-$SIZE-$mode-bench-c$c.log" | grep -oE "[0-9.]+$")
      itl[$SIZE-$mode-$c]=${med:-}
      echo "$mode bench $SIZE c=$c: median ITL ${med:-?} ms, output ${tput:-?} tok/s, median TTFT ${ttft:-?} ms"
    done
  else
    fail=1; echo "FAIL: $SIZE $mode servers did not start"
  fi
  cleanup
done
for c in 1 16; do
  d=${itl[$SIZE-det-$c]:-}; b=${itl[$SIZE-default-$c]:-}
  if [ -n "$d" ] && [ -n "$b" ]; then
    echo "cost $SIZE c=$c: det median ITL $d ms vs default $b ms (x$(python3 -c "print(f'{$d/$b:.3f}')"))"
  fi
done
done
# Raw decode step of the 8B shape (random weights, no server) with and without the mode: the
# cost without scheduler noise (graph step at ctx 1024; the det GEMM tuning lines show the
# candidates per weight shape).
if [ "${DET_RAW:-1}" = 1 ]; then
  for shape in ${DET_RAW_SHAPES:-llama-3.2-1b llama-3.1-8b}; do
    for f in "" --deterministic; do
      log="$OUTDIR/det-raw-$shape${f:+-det}.log"
      timeout 120 "$STRATA" gpu bench --only decode --shape "$shape" --decode-batches ${DET_RAW_BATCHES:-1,32} $f \
        > "$log" 2>&1 || { echo "FAIL: raw bench $shape ${f:-default} rc=$?"; [ -n "$f" ] && fail=1; }
      grep -E "^decode b|tuning \[0x" "$log" | sed "s/^/raw $shape ${f:-default}: /" | cut -c1-260
    done
  done
fi
echo "== gpu-det-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
