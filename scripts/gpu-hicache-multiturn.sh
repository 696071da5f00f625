#!/usr/bin/env bash
# The issue's HiCache benchmark on the GPU, one device step: `strata bench serve --dataset-name
# multiturn` (SGLang's bench_multiturn shape: clients x rounds, each round = history + answer + a
# new question, round barrier) against four configurations of a bf16 server on a made model
# (default the Llama-3.2-1B shape):
#   1. radix cache only   2. HiCache L1+L2   3. HiCache L1+L2+L3   4. a fresh server, L3 from run 3
#   (continuing run 3's conversations: `--record-answers` / `--replay-answers`).
# Servers 1-3 load at the same time on one GPU (their KV pools are capped by --max-total-tokens)
# and are benchmarked one after the other, so an 8B run pays two weight loads, not four. Then, on
# the warm servers: decode ITL with HiCache (L3) off vs on, alternating rounds (server 1 vs 3), and
# the L3 -> host read rate (a long prompt's prefetch on server 4 vs four parallel `strata bench
# store` clients' GETs, alternating rounds).
# The device pool (L1) is kept small (L1 tokens) so later rounds' histories must come from L2/L3.
# Usage: scripts/gpu-hicache-multiturn.sh [OUTDIR]; env STRATA, SIZE (llama-3.2-1b), CLIENTS (4),
# ROUNDS (5), REQ (2048), ANS (32), L1 (16384), HC_GB (host pool, 8), READS (3), ITLR (2),
# CAP / MEM (the store's device file and DRAM tier, 32GiB / 24GiB).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZE=${SIZE:-llama-3.2-1b} CLIENTS=${CLIENTS:-4} ROUNDS=${ROUNDS:-5} REQ=${REQ:-2048} ANS=${ANS:-32} L1=${L1:-16384}
READS=${READS:-3} ITLR=${ITLR:-2}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
W=${HB_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
[ -f "$W/$SIZE/config.json" ] || "$STRATA" make-model --out "$W/$SIZE" --arch llama --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "make-model failed"; exit 1; }
RPC=50971
"$STRATA" master --rpc-port $RPC --http-metadata-server-port 0 --metrics-port 0 --state-file "$W/mt-ms.json" > "$OUTDIR/mt-master.log" 2>&1 & pids+=($!)
sleep 1
rm -f "$W/mt-store.strata"
"$STRATA" store --master 127.0.0.1:$RPC --device "$W/mt-store.strata" --capacity ${CAP:-32GiB} --memory ${MEM:-24GiB} > "$OUTDIR/mt-store.log" 2>&1 & pids+=($!)
sleep 1
kill -0 ${pids[-1]} 2> /dev/null || { echo "store did not start"; tail -3 "$OUTDIR/mt-store.log"; exit 1; }
EXTRA="{\"master_server_address\": \"127.0.0.1:$RPC\", \"prefetch_threshold\": 256}"
declare -A SPID
launch() { # name port flags...
  local name=$1 port=$2; shift 2
  "$STRATA" serve --model-path "$W/$SIZE" --port "$port" --page-size 64 --max-total-tokens "$L1" \
    --context-length 16384 --log-level warn "$@" > "$OUTDIR/mt-serve-$name.log" 2>&1 &
  SPID[$name]=$!; pids+=($!)
}
ready() { # name port
  for _ in $(seq 400); do
    curl -sf localhost:$2/health > /dev/null && return 0
    kill -0 ${SPID[$1]} 2>/dev/null || break
    sleep 0.5
  done
  echo "server $1 did not start"; tail -5 "$OUTDIR/mt-serve-$1.log"; exit 1
}
stop() { kill ${SPID[$1]}; wait ${SPID[$1]} 2> /dev/null || true; }
multiturn() { # port [flags]
  local port=$1; shift
  "$STRATA" bench serve --base-url http://127.0.0.1:$port --dataset-name multiturn --num-clients "$CLIENTS" \
    --num-rounds "$ROUNDS" --request-length "$REQ" --output-length "$ANS" --seed 7 "$@" | grep -vE "^=+"
}
metric() { curl -s localhost:$1/metrics | awk -v m="sglang:$2" '$1 == m {print $2}'; }
HC=(--enable-hierarchical-cache --hicache-size ${HC_GB:-8})
L3=("${HC[@]}" --hicache-storage-backend strata --hicache-storage-prefetch-policy wait_complete
  --hicache-storage-backend-extra-config "$EXTRA")
echo "# $SIZE bf16 on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), page 64, L1 $L1 tokens, $CLIENTS clients x $ROUNDS rounds, +$REQ tokens/round, $ANS out"
t0=$(date +%s)
launch radix 32301; launch l2 32302 "${HC[@]}"; launch l3 32303 "${L3[@]}"
ready radix 32301; ready l2 32302; ready l3 32303
echo "# three servers up in $(( $(date +%s) - t0 )) s"
echo "## 1. radix cache only"; multiturn 32301
echo "## 2. HiCache L1+L2"; multiturn 32302
echo "   load_back_tokens $(metric 32302 load_back_tokens_total)"; stop l2
echo "## 3. HiCache L1+L2+L3"; multiturn 32303 --record-answers "$W/mt-answers.json"
sleep 2; echo "   backuped_tokens $(metric 32303 backuped_tokens_total)"
echo "## decode ITL, 16 concurrent random requests (128 in / 64 out), HiCache L3 off (server 1) vs on (server 3), alternating"
for r in $(seq $ITLR); do
  for mode in off on; do
    port=32301; [ $mode = on ] && port=32303
    printf "   round %d HiCache %-4s" $r $mode
    "$STRATA" bench serve --base-url http://127.0.0.1:$port --num-prompts 32 --random-input-len 128 \
      --random-output-len 64 --max-concurrency 16 --seed $((30 + r)) | grep -E "Median ITL|Mean ITL" | tr -s ' ' | tr '\n' ' '
    echo
  done
done
stop radix; stop l3
# Run 4 continues run 3's conversations (its answers replayed): bf16 greedy answers depend on
# the batch they ran in, so a fresh run's own answers would part from run 3's after round 1.
echo "## 4. fresh server, L3 filled by run 3 (run 3's conversations, answers replayed)"
launch l3b 32304 "${L3[@]}"; ready l3b 32304; multiturn 32304 --replay-answers "$W/mt-answers.json"
echo "   prefetched_tokens $(metric 32304 prefetched_tokens_total)  L3 read $(metric 32304 prefetch_bytes_total) B in $(metric 32304 prefetch_seconds_total) s"
OBJ=$(( 64 * $(python3 -c "import json;c=json.load(open('$W/$SIZE/config.json'));print(c['num_hidden_layers']*c['num_key_value_heads']*(c.get('head_dim') or c['hidden_size']//c['num_attention_heads'])*2)") ))
LONG=${LONG:-$((L1 - 64))}
# One long prompt per seed on server 4: `long SEED` prints "<prefetch bytes> <prefetch seconds>".
long() {
  python3 scripts/hc_long_prompt.py "$1" "$LONG" 32304 \
    "$(python3 -c "import json; print(json.load(open('$W/$SIZE/config.json'))['vocab_size'] - 1)")"
}
echo "## L3 -> host read rate: a $LONG-token prompt's prefetch vs four parallel \`bench store\` clients (64 MiB batches), $READS rounds (GB/s)"
# Write each long prompt once (server 4 computes it and writes it through), flush L1+L2 so the
# next request has to come from L3.
for r in $(seq $READS); do long $((100 + r)) > /dev/null; done
sleep 3
RATIOS=()
for r in $(seq $READS); do
  curl -s -X POST localhost:32304/flush_cache > /dev/null
  read -r bytes secs < <(long $((100 + r)))
  mb=$(( (bytes + (1 << 20) - 1) >> 20 ))
  # The store's aggregate read rate the way the prefetch reads it: four clients at once (the
  # prefetch's four reader threads), batches of 64 MiB (its job size), a quarter of the bytes each.
  bs=()
  for j in 1 2 3 4; do
    "$STRATA" bench store --role client --master 127.0.0.1:$RPC --sizes $OBJ --round-mb $(( (mb + 3) / 4 )) \
      --batch-bytes-mb 64 --read-passes 3 --lat-ops 5 2> /dev/null | tail -n 1 | awk '{print $4}' > "$W/bs.$j" & bs+=($!)
  done
  wait "${bs[@]}" 2> /dev/null
  st=$(cat "$W"/bs.[1-4] | awk '{s += $1} END {printf "%.2f", s}')
  hc=$(python3 -c "print(f'{$bytes / max($secs, 1e-9) / 1e9:.2f}')")
  ratio=$(python3 -c "print(f'{$hc / max(float(\"${st:-0}\" or 0), 1e-9):.2f}')")
  RATIOS+=("$ratio")
  echo "   round $r: prefetch $bytes B in $(python3 -c "print(f'{$secs * 1e3:.2f}')") ms = $hc GB/s; bench store GET $st GB/s; ratio $ratio"
done
echo "   median ratio $(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
stop l3b
