#!/usr/bin/env bash
# The API features added on the CPU path, once on the GPU's bf16 runner: a made Llama-3.2-1B
# shape served with --tool-call-parser / --reasoning-parser / --max-queued-requests /
# --log-requests, then /generate with n = 3 (seeded: 3 distinct texts, copy 0 = the n = 1
# answer; greedy: 3 equal), a streamed /generate batch of 3 against the same batch unstreamed,
# a streamed chat with n = 2 and one with tools, max_new_tokens 0, and constrained decoding (regex
# and JSON schema on /generate, greedy and seeded: the text matches, repeats and streams equal;
# response_format json_schema on chat; tool_choice "required" gives a call), stop_regex (the plain
# greedy output cut at the first match) and structural_tag (each trigger opens its structure).
# Usage: scripts/gpu-api-smoke.sh [OUTDIR]; env STRATA. Exit status non-zero on any failure.
set -uo pipefail
OUTDIR=${1:-/tmp/strata-api-smoke}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-llama-3.2-1b}  # (a smaller --size runs the same checks on the CPU backend)
M=/tmp/strata-models/$SIZE
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --arch llama --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
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
# Copy 0 equals the n = 1 answer where batches are invariant (the CPU backend, or
# --enable-deterministic-inference); the GPU's default mode runs the 3 copies as a batch of 3
# whose kernels (cluster sizes, GEMM shapes) round differently than one row's, so there a
# difference is reported, not failed.
info = json.loads(urllib.request.urlopen(base + "/get_server_info", timeout=30).read())
invariant = info.get("backend") == "cpu" or info.get("enable_deterministic_inference")
same0 = texts[0] == json.dumps(one["output_ids"])
if invariant or same0:
    check("generate n=3 seeded: copy 0 = n=1 answer", same0)
else:
    print("INFO generate n=3 seeded: copy 0 differs from the n=1 answer (default GPU mode is not batch-invariant)")
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
# Constrained decoding on the GPU sampler (the bans reach sample_rows as the row's banned list).
import re
rx = r"[0-9]{3}-[a-z]{2,4}"
for name, sp in [("greedy", {"temperature": 0}), ("seeded", {"temperature": 1.0, "sampling_seed": 11})]:
    body = {"text": "code:", "sampling_params": dict(sp, max_new_tokens=24, regex=rx)}
    r = post("/generate", body)
    check(f"regex {name}: text matches", re.fullmatch(rx, r["text"]) is not None, repr(r["text"])[:120])
    again = post("/generate", body)
    check(f"regex {name}: repeat equal", again["output_ids"] == r["output_ids"])
    st = post("/generate", dict(body, stream=True), stream=True)
    check(f"regex {name}: streamed = plain", st and st[-1]["output_ids"] == r["output_ids"])
# Bounded schemas: a made model's random text must still end within max_new_tokens.
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
          "ok": {"type": "boolean"}}, "required": ["name", "ok"]}
for name, sp in [("greedy", {"temperature": 0}), ("seeded", {"temperature": 1.0, "sampling_seed": 5})]:
    r = post("/generate", {"text": "person:", "sampling_params": dict(sp, max_new_tokens=64,
                                                                     json_schema=json.dumps(schema))})
    try:
        obj = json.loads(r["text"]); ok = set(obj) == {"name", "ok"} and isinstance(obj["ok"], bool)
    except Exception:
        ok = False
    check(f"json_schema {name}: valid object", ok, repr(r["text"])[:160])
# (enable_thinking false: with --reasoning-parser qwen3 a chat reasons by default, as SGLang's, and
# the whole answer would be reasoning_content.)
nothink = {"enable_thinking": False}
c = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "json please"}], "max_tokens": 48,
                                  "chat_template_kwargs": nothink,
                                  "temperature": 0, "response_format": {"type": "json_schema",
                                  "json_schema": {"name": "p", "schema": schema}}})
try:
    obj = json.loads(c["choices"][0]["message"]["content"]); ok = set(obj) == {"name", "ok"}
except Exception:
    ok = False
check("chat response_format json_schema", ok, json.dumps(c)[:200])
tools2 = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 6}}, "required": ["city"]}}}]
tc = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "weather?"}], "tools": tools2,
                                   "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 64, "temperature": 0,
                                   "chat_template_kwargs": nothink})
calls = tc["choices"][0]["message"].get("tool_calls") or []
check("chat tool_choice required: a get_weather call", bool(calls) and calls[0]["function"]["name"] == "get_weather",
      json.dumps(tc)[:240])
# stop_regex: the greedy output is the plain one cut at the first match, matched = the pattern.
plain = post("/generate", {"text": "Once upon a time", "sampling_params": {"temperature": 0, "max_new_tokens": 48}})
pt = plain["text"]
if len(pt) >= 3:
    k = len(pt) // 2 - 1
    pat = re.escape(pt[k]) + "." + re.escape(pt[k + 2])
    sr = post("/generate", {"text": "Once upon a time", "sampling_params": {"temperature": 0, "max_new_tokens": 48,
                                                                          "stop_regex": pat}})
    t = sr["text"]
    m = re.search(pat, pt)
    check("stop_regex: a prefix holding the first match", pt.startswith(t) and m is not None and len(t) >= m.end()
          and len(t) < len(pt) and sr["meta_info"]["finish_reason"] == {"type": "stop", "matched": pat},
          json.dumps({"plain": pt[:80], "got": t, "fr": sr["meta_info"]["finish_reason"]})[:240])
else:
    print(f"INFO stop_regex: the plain output {pt!r} is too short to pick a pattern from")
# structural_tag: every "e" opens e[<integer>].
tag = {"type": "structural_tag", "structures": [{"begin": "e[", "schema": {"type": "integer"}, "end": "]"}],
       "triggers": ["e"]}
st = post("/generate", {"text": "Once upon a time", "sampling_params": {"temperature": 0, "max_new_tokens": 48,
                                                                      "structural_tag": json.dumps(tag)}})
tt = st["text"]
cut = tt[:tt.rfind("e")] if tt.rfind("e") > tt.rfind("]") else tt
check("structural_tag: each e opens e[int]", re.fullmatch(r"(?:[^e]|e\[-?\d+\])*", cut, re.S) is not None, repr(tt)[:160])
sys.exit(1 if fails else 0)
PY
rc=$?
grep -c "Finish: rid" "$OUTDIR/serve.log" | sed 's/^/request log lines: /'
echo "== gpu-api-smoke: $([ $rc = 0 ] && echo PASS || echo FAIL) =="
exit $rc
