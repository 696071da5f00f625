#!/usr/bin/env bash
# HiCache benchmark for docs/perf.md: the multi-turn workload (strata bench serve --dataset-name
# multiturn, modelled on SGLang's bench_multiturn.py) against four server configurations in one run:
#   1. radix cache only          2. HiCache L1+L2          3. HiCache L1+L2+L3 (Strata store)
#   4. HiCache L1+L2+L3 on a fresh server whose L3 was filled by run 3 (cross-instance reuse)
# then the L3 read rate (one long prompt's prefetch vs `strata bench store` GETs of one batch of the
# same objects, alternating rounds), and decode ITL with HiCache (L3) on vs off (alternating rounds).
# Usage: scripts/bench-hicache.sh [strata binary] ; env: SIZE (small), CLIENTS (4), ROUNDS (4),
# REQ (512 tokens per new question), OUT (16 answer tokens), L1 (device pool tokens, 4096),
# LONG (tokens of the read-rate prompts, L1 - 64), READS (read-rate rounds, 5).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
SIZE=${SIZE:-small} CLIENTS=${CLIENTS:-4} ROUNDS=${ROUNDS:-4} REQ=${REQ:-512} OUT=${OUT:-16} L1=${L1:-4096}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=30655 RPC=50651
"$BIN" make-model --out "$WORK/m" --arch llama --size "$SIZE" --seed 0 2>/dev/null
"$BIN" master --rpc-port $RPC --http-metadata-server-port 0 --metrics-port 0 \
  --state-file "$WORK/master.json" > "$WORK/master.log" 2>&1 & PIDS+=($!)
sleep 0.5
"$BIN" store --master 127.0.0.1:$RPC --device "$WORK/store.strata" --capacity 2GiB --memory 256MiB \
  > "$WORK/store.log" 2>&1 & PIDS+=($!)
sleep 1
EXTRA="{\"master_server_address\": \"127.0.0.1:$RPC\", \"prefetch_threshold\": 64}"
SERVE=
serve() { # flags...
  "$BIN" serve --model-path "$WORK/m" --port $PORT --page-size 64 --max-total-tokens "$L1" \
    --log-level warn "$@" > "$WORK/serve.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 200); do curl -sf localhost:$PORT/health > /dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; cat "$WORK/serve.log" >&2; exit 1
}
stop() { kill $SERVE; wait $SERVE 2> /dev/null || true; }
multiturn() {
  "$BIN" bench serve --base-url http://127.0.0.1:$PORT --dataset-name multiturn --num-clients "$CLIENTS" \
    --num-rounds "$ROUNDS" --request-length "$REQ" --output-length "$OUT" --seed 7 \
    | grep -vE "^=+"
}
metric() { curl -s localhost:$PORT/metrics | awk -v m="sglang:$1" '$1 == m {print $2}'; }
HC=(--enable-hierarchical-cache --hicache-ratio 4)
L3=("${HC[@]}" --hicache-storage-backend strata --hicache-storage-prefetch-policy wait_complete
  --hicache-storage-backend-extra-config "$EXTRA")
echo "# model $SIZE, page 64, L1 $L1 tokens, $CLIENTS clients x $ROUNDS rounds, +$REQ tokens/round, $OUT out"
echo "## 1. radix cache only"; serve; multiturn; stop
echo "## 2. HiCache L1+L2"; serve "${HC[@]}"; multiturn
echo "   load_back_tokens $(metric load_back_tokens_total)"; stop
OBJ=$(( 64 * $(python3 -c "import json;c=json.load(open('$WORK/m/config.json'));print(c['num_hidden_layers']*c['num_key_value_heads']*(c.get('head_dim') or c['hidden_size']//c['num_attention_heads'])*4)") ))
LONG=${LONG:-$((L1 - 64))} READS=${READS:-5}
# One long prompt per seed: `long SEED` prints "<prefetch bytes> <prefetch seconds>" of its request.
long() { python3 "$(dirname "$0")/hc_long_prompt.py" "$1" "$LONG" $PORT; }
echo "## 3. HiCache L1+L2+L3"; serve "${L3[@]}"; multiturn
for r in $(seq $READS); do long $((100 + r)) > /dev/null; done
sleep 1; echo "   backuped_tokens $(metric backuped_tokens_total)"; stop
echo "## 4. fresh server, L3 filled by run 3"; serve "${L3[@]}"; multiturn
echo "   prefetched_tokens $(metric prefetched_tokens_total)  L3 read $(metric prefetch_bytes_total) B in $(metric prefetch_seconds_total) s"
echo "## L3 -> host read rate: a $LONG-token prompt's prefetch (one batch, warm server) vs \`bench store\`"
echo "## GETs in batches of the same size (4 batches x 3 passes), alternating, $READS rounds (GB/s)"
RATIOS=()
for r in $(seq $READS); do
  read -r bytes secs < <(long $((100 + r)))
  mb=$(( (bytes + (1 << 20) - 1) >> 20 ))
  # The store's steady read rate at this batch size: 4 batches read 3 times (a single cold batch
  # would charge the store for the benchmark process's first connection).
  st=$("$BIN" bench store --role client --master 127.0.0.1:$RPC --sizes $OBJ --round-mb $((4 * mb)) \
    --batch-bytes-mb $mb --read-passes 3 --lat-ops 5 2> /dev/null | tail -n 1 | awk '{print $4}')
  hc=$(python3 -c "print(f'{$bytes / max($secs, 1e-9) / 1e9:.2f}')")
  ratio=$(python3 -c "print(f'{$hc / $st:.2f}')")
  RATIOS+=("$ratio")
  echo "   round $r: prefetch $bytes B in $(python3 -c "print(f'{$secs * 1e3:.2f}')") ms = $hc GB/s; bench store GET $st GB/s; ratio $ratio"
done
echo "   median ratio $(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
stop
echo "## decode ITL, 16 concurrent random requests (128 in / 64 out), off/on alternating, 3 rounds"
for r in 1 2 3; do
  for mode in off on; do
    if [ $mode = on ]; then serve "${L3[@]}"; else serve; fi
    printf "round %d HiCache %-4s" $r $mode
    "$BIN" bench serve --base-url http://127.0.0.1:$PORT --num-prompts 32 --random-input-len 128 \
      --random-output-len 64 --max-concurrency 16 --seed 3 | grep -E "Median ITL|Mean ITL" | tr -s ' ' | tr '\n' ' '
    echo; stop
  done
done
echo "## strata bench store GET, ${OBJ}-byte values (the L3 objects' size)"
"$BIN" bench store --role client --master 127.0.0.1:$RPC --sizes $OBJ --round-mb 64 --read-passes 2 \
  --lat-ops 50 2> /dev/null | tail -n 8 || true
