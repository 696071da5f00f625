#!/usr/bin/env bash
# PD disaggregation on one GPU, one device call: a colocated server, a prefill server and a decode
# server share the GPU (split --mem-fraction-static), the Strata router in front of each setup.
# For each model shape (SIZES, made with random bf16 weights):
#  - greedy: 6 prompts one at a time through the PD router must give the colocated answer
#    (identical ids); 8 concurrent ones are reported as a count (the bf16 runner is not batch
#    invariant yet, issue 14);
#  - TTFT at concurrency 1 (2K-token prompts, 16 out), PD vs colocated, both through a router;
#  - KV transfer rate (the prefill's pd_transfer counters) and the TCP loopback copy rate;
#  - decode ITL under mixed load (4 decode streams while 8K-token prefills arrive), PD vs colocated.
# Usage: scripts/gpu-pd-check.sh [OUTDIR]; env STRATA, SIZES ("llama-3.2-1b llama-3.1-8b").
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZES=${SIZES:-llama-3.2-1b llama-3.1-8b}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1 # cuBLASLt tuning on: its machine-wide table keeps processes consistent
W=${PD_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; pids=(); sleep 1; }
trap cleanup EXIT
fail=0
start() { # name port args...
  local name=$1 port=$2; shift 2
  "$STRATA" "$@" > "$OUTDIR/pd-$name.log" 2>&1 & pids+=($!)
  local pid=$!
  for _ in $(seq 600); do
    curl -sf localhost:$port/health > /dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  echo "FAIL: $name did not start"; tail -20 "$OUTDIR/pd-$name.log"; return 1
}
for size in $SIZES; do
  echo "=== $size"
  [ -f "$W/$size/config.json" ] || "$STRATA" make-model --out "$W/$size" --arch llama --size "$size" --dtype bf16 > /dev/null 2>&1 \
    || { echo "FAIL: make-model"; fail=1; continue; }
  S=(serve --model-path "$W/$size" --page-size 64 --max-total-tokens 65536 --context-length 16384 --log-level warn)
  start colo 32101 "${S[@]}" --port 32101 || { fail=1; cleanup; continue; }
  start prefill 32102 "${S[@]}" --port 32102 --disaggregation-mode prefill --disaggregation-bootstrap-port 32199 || { fail=1; cleanup; continue; }
  start decode 32103 "${S[@]}" --port 32103 --disaggregation-mode decode || { fail=1; cleanup; continue; }
  start router-pd 32110 router --pd-disaggregation --prefill http://127.0.0.1:32102 32199 \
    --decode http://127.0.0.1:32103 --port 32110 --prometheus-port 32111 --log-level warn || { fail=1; cleanup; continue; }
  start router-colo 32120 router --worker-urls http://127.0.0.1:32101 --port 32120 --prometheus-port 32121 --log-level warn \
    || { fail=1; cleanup; continue; }
  python3 - <<'PY' 2>&1 | tee "$OUTDIR/pd-greedy-$size.txt"
import json, random, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
def gen(port, ids, n=24):
    r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate",
        data=json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}).encode()), timeout=300)
    return json.loads(r.read())["output_ids"]
rng = random.Random(3)
P = [[rng.randrange(10, 120000) for _ in range(rng.choice([40, 300, 1000, 2500]))] for _ in range(14)]
same = sum(gen(32110, p) == gen(32120, p) for p in P[:6])
print(f"sequential: {same}/6 PD answers equal the colocated answer")
with ThreadPoolExecutor(8) as ex:
    pd = list(ex.map(lambda p: gen(32110, p), P[6:]))
    co = list(ex.map(lambda p: gen(32120, p), P[6:]))
print(f"8 concurrent: {sum(a == b for a, b in zip(pd, co))}/8 equal")
sys.exit(0 if same == 6 else 1)
PY
  [ "${PIPESTATUS[0]}" = 0 ] || fail=1
  bench() { "$STRATA" bench serve --tokenizer "$W/$size" "$@"; }
  pick() { grep -E "$1" | tr -s ' ' | sed 's/^ //'; }
  echo "## TTFT, concurrency 1, 2048-token prompts, 16 out"
  for mode in colo pd; do
    port=$([ $mode = pd ] && echo 32110 || echo 32120)
    printf "%-5s " $mode
    bench --base-url http://127.0.0.1:$port --num-prompts 10 --random-input-len 2048 --random-output-len 16 \
      --max-concurrency 1 --seed 5 | pick "Median TTFT|Mean TTFT|Median ITL" | tr '\n' ' '
    echo
  done
  m() { curl -s localhost:32102/metrics | awk -v k="sglang:$1" '$1 == k {print $2}'; }
  B=$(m pd_transfer_bytes_total) T=$(m pd_transfer_seconds_total)
  md() { curl -s localhost:32103/metrics | awk -v k="sglang:$1" '$1 == k {print $2}'; }
  echo "## KV transfer: $(m pd_transfers_total) transfers ($(m pd_transfers_same_host_total) over the same-host path, $(md pd_bootstrap_connections_total) bootstrap connections), $B bytes in $T s -> $(python3 -c "print(f'{$B / max($T, 1e-9) / 1e6:.0f}')") MB/s"
  N=$(m pd_transfers_total); MB=$(python3 -c "print(max(1, round($B / max($N, 1) / 1048576)))")
  "$STRATA" bench store --role tcp-copy --copy-mb $MB --batch-bytes-mb $MB 2> /dev/null | tail -n 1
  "$STRATA" bench store --role tcp-copy --copy-mb 1024 2> /dev/null | tail -n 1
  echo "## decode ITL under mixed load (decode: 128 in / 128 out x 4 at a time; prefills: 8192 in / 1 out x 2)"
  for mode in colo pd; do
    port=$([ $mode = pd ] && echo 32110 || echo 32120)
    bench --base-url http://127.0.0.1:$port --num-prompts 12 --random-input-len 8192 --random-output-len 1 \
      --max-concurrency 2 --seed 9 > /dev/null & LOAD=$!
    printf "%-5s " $mode
    bench --base-url http://127.0.0.1:$port --num-prompts 12 --random-input-len 128 --random-output-len 128 \
      --max-concurrency 4 --seed 8 | pick "Median ITL|P99 ITL|Mean ITL" | tr '\n' ' '
    echo
    wait $LOAD || true
  done
  grep -hiE "panic|error" "$OUTDIR"/pd-*.log | head -5
  cleanup
done
echo "== gpu-pd-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
