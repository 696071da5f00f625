#!/usr/bin/env bash
# Top-N log-probabilities on the GPU (scripts/gpu-all.sh step `lptop`): `gpu check --only sampling`
# (every sampling case, top 20 and top 32 included, against the host on the same logits), `gpu
# bench --only sampling` (top 5, 20 and 33: 33 is past the candidates' path, i.e. the radix
# selection every top-N above 8 took before, side by side), then the made 1B shape served: one
# greedy request with top 20 checked (20 entries per position, sorted, <= 0, the greedy token's
# logprob equal to the best entry's) and streamed output tok/s at c=64 without logprobs and with
# top 5 / 20.
# Usage: scripts/gpu-logprobs-top.sh [OUTDIR]; env STRATA.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
fail=0
timeout 150 "$STRATA" gpu check --only sampling > "$OUTDIR/lptop-check.log" 2>&1 || fail=1
grep -E "FAIL|lp32|lp20|gpu check:" "$OUTDIR/lptop-check.log" | tail -12
timeout 100 "$STRATA" gpu bench --only sampling > "$OUTDIR/lptop-bench.log" 2>&1 || fail=1
grep -E "^sampling V151936 .*lp|GPU sampling V151936 B64 temp" "$OUTDIR/lptop-bench.log"
M=/tmp/strata-models/lptop-1b
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size llama-3.2-1b --dtype bf16 > /dev/null || exit 1
"$STRATA" serve --model-path "$M" --port 32710 --context-length 4096 > "$OUTDIR/lptop-serve.log" 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 300); do curl -sf http://127.0.0.1:32710/health > /dev/null && break; sleep 1; done
python3 - <<'PY' || fail=1
import json, urllib.request
body = {"text": "The harbour master wrote in the log that the tide", "return_logprob": True,
        "top_logprobs_num": 20, "logprob_start_len": 0,
        "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}}
req = urllib.request.Request("http://127.0.0.1:32710/generate", json.dumps(body).encode(),
                             {"content-type": "application/json"})
m = json.loads(urllib.request.urlopen(req, timeout=300).read())["meta_info"]
bad = 0
for (lp, tok, _), top in zip(m["output_token_logprobs"], m["output_top_logprobs"]):
    vals = [t[0] for t in top]
    ok = len(top) == 20 and vals == sorted(vals, reverse=True) and vals[0] <= 0 \
        and top[0][1] == tok and abs(top[0][0] - lp) < 1e-6
    bad += not ok
inputs = [t for t in m["input_top_logprobs"] if t]
bad += sum(len(t) != 20 for t in inputs)
print(f"served top 20: {len(m['output_top_logprobs'])} output and {len(inputs)} input positions, {bad} bad")
assert bad == 0
PY
for extra in '{}' '{"return_logprob": true, "top_logprobs_num": 5}' '{"return_logprob": true, "top_logprobs_num": 20}'; do
  echo "== c=64 $extra"
  "$STRATA" bench serve --base-url http://127.0.0.1:32710 --num-prompts 256 --random-input-len 512 \
    --random-output-len 128 --max-concurrency 64 --seed 1 --extra-request-body "$extra" 2>&1 \
    | grep -E "Output token throughput|Mean ITL|Successful" | tr -s ' '
done
echo "== gpu-logprobs-top: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
