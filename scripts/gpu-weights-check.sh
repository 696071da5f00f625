#!/usr/bin/env bash
# /update_weights_from_disk on the bf16 CUDA runner (weights written over in place, graphs kept):
# two made checkpoints of one shape (seeds 1 and 2); a server started on A, updated to B, must
# answer greedy requests (decode through the captured graphs, and a batch of 8) exactly as a
# server started on B does, and differently from before the update; a checkpoint of another
# shape is refused with the served weights unchanged.
# Usage: scripts/gpu-weights-check.sh [OUTDIR]; env STRATA, SIZE (default llama-3.2-1b).
set -uo pipefail
OUTDIR=${1:-/tmp/strata-weights-check}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-llama-3.2-1b}
D=/tmp/strata-models/weights
for s in 1 2; do
  [ -f "$D/$s/config.json" ] || "$STRATA" make-model --out "$D/$s" --size "$SIZE" --seed $s --dtype bf16 > /dev/null \
    || { echo "make-model failed"; exit 1; }
done
[ -f "$D/other/config.json" ] || "$STRATA" make-model --out "$D/other" --size tiny --dtype bf16 > /dev/null
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null' EXIT
serve() { "$STRATA" serve --model-path "$1" --port "$2" --page-size 16 --context-length 4096 > "$OUTDIR/serve-$2.log" 2>&1 & pids+=($!); }
serve "$D/1" 32610
serve "$D/2" 32611
for p in 32610 32611; do
  for _ in $(seq 180); do curl -sf http://127.0.0.1:$p/health > /dev/null && break; sleep 1; done
done
python3 - "$D" <<'PY'
import json, sys, urllib.request
d = sys.argv[1]
def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
prompts = [f"prompt {i}: " + "the quick brown fox " * (1 + 7 * i) for i in range(8)]
def answers(port):
    one = [post(port, "/generate", {"text": p, "sampling_params": {"temperature": 0, "max_new_tokens": 24}})[1]["output_ids"] for p in prompts[:3]]
    # One request of 8 prompts: the same batches on both servers (the default GPU mode is not
    # batch-invariant, so concurrent singles could meet in different batches).
    batch = [r["output_ids"] for r in post(port, "/generate", {"text": prompts, "sampling_params": {"temperature": 0, "max_new_tokens": 24}})[1]]
    return one, batch
fails = []
def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))
    if not ok: fails.append(name)
before = answers(32610)
code, r = post(32610, "/update_weights_from_disk", {"model_path": d + "/other"})
check("another shape refused", code == 400 and not r["success"], json.dumps(r)[:200])
check("served weights unchanged after the refusal", answers(32610) == before)
code, r = post(32610, "/update_weights_from_disk", {"model_path": d + "/2"})
check("update to B", code == 200 and r["success"], json.dumps(r)[:200])
after, ref = answers(32610), answers(32611)
check("singles after the update = server on B", after[0] == ref[0])
check("batch of 8 after the update = server on B", after[1] == ref[1])
check("answers changed", after[0] != before[0])
code, r = post(32610, "/update_weights_from_disk", {"model_path": d + "/1"})
check("back to A = first answers", code == 200 and answers(32610)[0] == before[0])
print("RESULT", "FAIL" if fails else "PASS")
sys.exit(1 if fails else 0)
PY
