#!/usr/bin/env bash
# Data parallelism on GPUs (needs at least two: the nvidia-h100-x2 kind): a Llama-3.2-1B-shaped
# bf16 model served with --dp-size 2 (replica i on GPU i) against one replica alone.
# 1. Greedy answers equal for 16 prompts sent at once to each (PASS/FAIL), both servers in
#    batch-invariant mode (--enable-deterministic-inference): the two replicas of one and the
#    lone replica batch the prompts differently, and only that mode makes a row's answer
#    independent of its batch.
# 2. Output throughput of the same seeded random requests at concurrency 64 on both in the
#    default mode, alternated, side by side (the ratio is what DP buys).
# Memory: --mem-fraction-static counts the GPU's total memory less what is already in use (as
# SGLang's), so the --dp-size 2 server (started first) takes 0.4 of each GPU and the lone replica
# on GPU 1 0.85 (0.45 left for it).
# Usage: scripts/gpu-dp-check.sh [OUTDIR]; env STRATA, SIZE (llama-3.2-1b), NP (256), CONC (64).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-/tmp/strata-dp-check}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
. scripts/gpu-env.sh
SIZE=${SIZE:-llama-3.2-1b}; M=/tmp/strata-models/dp-$SIZE
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype bf16 > /dev/null || { echo "make-model failed"; exit 1; }
n=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$n" -ge 2 ] || { echo "SKIP: $n GPU(s), --dp-size 2 needs two"; exit 0; }
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null' EXIT
up() { # port log args...
  local port=$1 log=$2; shift 2
  "$STRATA" serve --model-path "$M" --port "$port" --context-length 4096 "$@" > "$OUTDIR/$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do curl -sf http://127.0.0.1:$port/health > /dev/null && return 0; sleep 1; done
  echo "FAIL: server on $port did not start"; tail -5 "$OUTDIR/$log"; return 1
}
down() { kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; pids=(); }
up 32650 dp2-det.log --dp-size 2 --mem-fraction-static 0.4 --enable-deterministic-inference || exit 1
up 32651 dp1-det.log --base-gpu-id 1 --mem-fraction-static 0.85 --enable-deterministic-inference || exit 1
python3 - <<'PY' || { echo "RESULT FAIL"; exit 1; }
import json, urllib.request, concurrent.futures as cf
def gen(port, p):
    body = {"text": p, "sampling_params": {"temperature": 0, "max_new_tokens": 32, "ignore_eos": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["output_ids"]
prompts = [f"Request {i}: the story of the harbour begins" * (1 + i % 4) for i in range(16)]
with cf.ThreadPoolExecutor(16) as ex:
    two = list(ex.map(lambda p: gen(32650, p), prompts))
    one = list(ex.map(lambda p: gen(32651, p), prompts))
same = sum(a == b for a, b in zip(two, one))
print(f"greedy equal dp2 vs dp1 (batch-invariant mode, 16 at once each): {same}/16", "PASS" if same == 16 else "FAIL")
assert same == 16
PY
down
up 32650 dp2.log --dp-size 2 --mem-fraction-static 0.4 || exit 1
up 32651 dp1.log --base-gpu-id 1 --mem-fraction-static 0.85 || exit 1
for round in 1 2; do
  for port in 32650 32651; do
    echo "== round $round port $port ($([ $port = 32650 ] && echo dp2 || echo dp1))"
    "$STRATA" bench serve --base-url http://127.0.0.1:$port --num-prompts ${NP:-256} --random-input-len 512 \
      --random-output-len 128 --max-concurrency ${CONC:-64} --seed $round 2>&1 \
      | grep -E "Output token throughput|Mean TTFT|Mean ITL|Successful" | tr -s ' '
  done
done
echo "RESULT PASS"
