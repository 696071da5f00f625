#!/usr/bin/env bash
# The API features added on the CPU path, once on the GPU's bf16 runner: a made Llama-3.2-1B
# shape served with --tool-call-parser / --reasoning-parser / --max-queued-requests /
# --log-requests, then /generate with n = 3 (seeded: 3 distinct texts, copy 0 = the n = 1
# answer; greedy: 3 equal), a streamed /generate batch of 3 against the same batch unstreamed,
# a streamed chat with n = 2 and one with tools, and max_new_tokens 0.
# Usage: scripts/gpu-api-smoke.sh [OUTDIR]; env STRATA. Exit status non-zero on any failure.
set -uo pipefail
OUTDIR=${1:-/tmp/strata-api-smoke}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
M=/tmp/strata-models/llama-3.2-1b
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --arch llama --size llama-3.2-1b --dtype bf16 > /dev/null 2>&1 \
  || { echo "make-model failed"; exit 1; }
"$STRATA" serve --model-path "$M" --port 32500 --page-size 16 --context-length 4096 --tool-call-parser qwen25 \
  --reasoning-parser qwen3 --max-queued-requests 64 --log-requests --log-requests-level 0 > "$OUTDIR/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf http://127.0.0.1:32500/health > /dev/null && break; sleep 1; done
python3 - "$OUTDIR" <<'PY'
import json, sys, urllib.request
base = "http://127.0.0.1:32500"
def post(path, body, stream=False):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        raw = r.read().decode()
    if not stream:
        return json.loads(raw)
    return [json.loads(l[6:]) for l in raw.splitlines() if l.startswith("data: ") and l != "data: [DONE]"]
fails = []
def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))
    if not ok: fails.append(name)
sp = {"temperature": 1.0, "max_new_tokens": 16, "sampling_seed": 7}
one = post("/generate", {"text": "The capital of France is", "sampling_params": sp})
three = post("/generate", {"text": "The capital of France is", "sampling_params": dict(sp, n=3)})
texts = [json.dumps(r["output_ids"]) for r in three]  # ids: a made model's text may decode to ""
check("generate n=3 seeded: 3 results", len(three) == 3, str(len(three)))
check("generate n=3 seeded: copy 0 = n=1 answer", texts[0] == json.dumps(one["output_ids"]))
check("generate n=3 seeded: copies differ", len(set(texts)) == 3, json.dumps(texts)[:200])
g = post("/generate", {"text": "Hello", "sampling_params": {"temperature": 0, "max_new_tokens": 16, "n": 3}})
check("generate n=3 greedy: equal", len({json.dumps(r["output_ids"]) for r in g}) == 1)
batch = {"text": ["a b c", "one two", "red green blue"], "sampling_params": {"temperature": 0, "max_new_tokens": 12}}
plain = [r["output_ids"] for r in post("/generate", batch)]
chunks = post("/generate", dict(batch, stream=True), stream=True)
last = {}
for c in chunks:
    last[c.get("index", 0)] = c["output_ids"]
check("generate streamed batch = unstreamed", [last.get(i) for i in range(3)] == plain)
chat = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 8,
                                     "temperature": 1.0, "seed": 3, "stream": True}, stream=True)
idx = {c["choices"][0]["index"] for c in chat if c.get("choices")}
check("chat streamed n=2: both indices", idx == {0, 1}, str(idx))
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
          "properties": {"city": {"type": "string"}}}}}]
t = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": tools,
                                  "max_tokens": 8, "temperature": 0})
check("chat with tools: 200 and a message", "message" in t["choices"][0], json.dumps(t)[:200])
z = post("/generate", {"text": "zero", "sampling_params": {"max_new_tokens": 0}})
check("max_new_tokens 0", z["meta_info"]["completion_tokens"] == 0, json.dumps(z["meta_info"])[:200])
sys.exit(1 if fails else 0)
PY
rc=$?
grep -c "Finish: rid" "$OUTDIR/serve.log" | sed 's/^/request log lines: /'
echo "== gpu-api-smoke: $([ $rc = 0 ] && echo PASS || echo FAIL) =="
exit $rc
