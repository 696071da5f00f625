#!/usr/bin/env bash
# The issue's HiCache benchmark on the GPU, one device step: `strata bench serve --dataset-name
# multiturn` (SGLang's bench_multiturn shape: clients x rounds, each round = history + answer + a
# new question, round barrier) against four configurations of a bf16 server on a made model
# (default the Llama-3.2-1B shape; an 8B run costs ~25 s of weight loading per server):
#   1. radix cache only   2. HiCache L1+L2   3. HiCache L1+L2+L3   4. a fresh server, L3 from run 3.
# The device pool (L1) is kept small (L1 tokens) so later rounds' histories must come from L2/L3.
# Usage: scripts/gpu-hicache-multiturn.sh [OUTDIR]; env STRATA, SIZE (llama-3.2-1b), CLIENTS (4),
# ROUNDS (5), REQ (2048), ANS (32), L1 (16384), HC_GB (host pool, 8).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZE=${SIZE:-llama-3.2-1b} CLIENTS=${CLIENTS:-4} ROUNDS=${ROUNDS:-5} REQ=${REQ:-2048} ANS=${ANS:-32} L1=${L1:-16384}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
W=${HB_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
[ -f "$W/$SIZE/config.json" ] || "$STRATA" make-model --out "$W/$SIZE" --arch llama --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "make-model failed"; exit 1; }
"$STRATA" master --rpc-port 50971 --http-metadata-server-port 0 --metrics-port 0 --state-file "$W/mt-ms.json" > "$OUTDIR/mt-master.log" 2>&1 & pids+=($!)
sleep 1
rm -f "$W/mt-store.strata"
"$STRATA" store --master 127.0.0.1:50971 --device "$W/mt-store.strata" --capacity 16GiB --memory 8GiB > "$OUTDIR/mt-store.log" 2>&1 & pids+=($!)
sleep 1
EXTRA='{"master_server_address": "127.0.0.1:50971", "prefetch_threshold": 256}'
SERVE=
serve() { # name flags...
  local name=$1; shift
  "$STRATA" serve --model-path "$W/$SIZE" --port 32301 --page-size 64 --max-total-tokens "$L1" \
    --context-length 16384 --log-level warn "$@" > "$OUTDIR/mt-serve-$name.log" 2>&1 &
  SERVE=$!; pids+=($!)
  for _ in $(seq 240); do
    curl -sf localhost:32301/health > /dev/null && return 0
    kill -0 $SERVE 2>/dev/null || break
    sleep 0.5
  done
  echo "server $name did not start"; tail -5 "$OUTDIR/mt-serve-$name.log"; exit 1
}
stop() { kill $SERVE; wait $SERVE 2> /dev/null || true; }
multiturn() {
  "$STRATA" bench serve --base-url http://127.0.0.1:32301 --dataset-name multiturn --num-clients "$CLIENTS" \
    --num-rounds "$ROUNDS" --request-length "$REQ" --output-length "$ANS" --seed 7 | grep -vE "^=+"
}
metric() { curl -s localhost:32301/metrics | awk -v m="sglang:$1" '$1 == m {print $2}'; }
HC=(--enable-hierarchical-cache --hicache-size ${HC_GB:-8})
L3=("${HC[@]}" --hicache-storage-backend strata --hicache-storage-prefetch-policy wait_complete
  --hicache-storage-backend-extra-config "$EXTRA")
echo "# $SIZE bf16 on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), page 64, L1 $L1 tokens, $CLIENTS clients x $ROUNDS rounds, +$REQ tokens/round, $ANS out"
echo "## 1. radix cache only"; serve radix; multiturn; stop
echo "## 2. HiCache L1+L2"; serve l2 "${HC[@]}"; multiturn
echo "   load_back_tokens $(metric load_back_tokens_total)"; stop
echo "## 3. HiCache L1+L2+L3"; serve l3 "${L3[@]}"; multiturn
sleep 2; echo "   backuped_tokens $(metric backuped_tokens_total)"; stop
echo "## 4. fresh server, L3 filled by run 3"; serve l3b "${L3[@]}"; multiturn
echo "   prefetched_tokens $(metric prefetched_tokens_total)  L3 read $(metric prefetch_bytes_total) B in $(metric prefetch_seconds_total) s"
stop
