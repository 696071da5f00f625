#!/usr/bin/env bash
# Served cost of constrained decoding on the GPU, one device step: the made Llama-3.2-1B shape
# (bf16) served by the binary under test (A) and, when given, another binary (B: e.g. the build
# before a change), side by side; per server, NREQ sequential streamed /generate requests at c=1
# with a JSON schema (greedy; bounded strings, so each ends), then the same prompts unconstrained
# for as many tokens (ignore_eos); per-token arrival times from the SSE stream (a raw socket
# client) give the median ITL of each; then as many tokens under a structural tag (free text,
# each "e" opens e[<integer>]) and under a stop_regex that never matches. Usage: scripts/gpu-grammar-bench.sh [OUTDIR]; env STRATA,
# STRATA_B, ENV_B (environment server B alone gets, e.g. STRATA_OVERLAP_GRAMMAR=0; B is then
# STRATA unless STRATA_B names another), SIZE (llama-3.2-1b), NREQ (8), CONC (16: then CONC
# constrained requests at once, seeded at temperature 0.7, for output tok/s; 0: not). The
# servers' constrained answers at c=1 are compared (greedy: the same text expected).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-llama-3.2-1b}
M=/tmp/strata-models/$SIZE
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --arch llama --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "make-model failed"; exit 1; }
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
ports="32601"
"$STRATA" serve --model-path "$M" --port 32601 --page-size 16 --context-length 4096 > "$OUTDIR/grammar-A.log" 2>&1 & pids+=($!)
[ -n "${ENV_B:-}" ] && STRATA_B=${STRATA_B:-$STRATA}
if [ -n "${STRATA_B:-}" ]; then
  env ${ENV_B:-} "$STRATA_B" serve --model-path "$M" --port 32602 --page-size 16 --context-length 4096 > "$OUTDIR/grammar-B.log" 2>&1 & pids+=($!)
  ports="32601 32602"
fi
for port in $ports; do
  for _ in $(seq 240); do curl -sf localhost:$port/health > /dev/null && break; sleep 0.5; done
done
python3 - ${NREQ:-8} ${CONC:-16} $ports <<'PY'
import json, socket, sys, time, statistics, threading
nreq = int(sys.argv[1]); conc = int(sys.argv[2]); ports = [int(p) for p in sys.argv[3:]]
texts = {}
schema = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "email": {"type": "string", "maxLength": 24},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
    "role": {"enum": ["admin", "user", "guest"]}, "ok": {"type": "boolean"}},
    "required": ["name", "email", "tags", "role", "ok"]}
def stream(port, body):
    b = json.dumps(dict(body, stream=True)).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
    t0 = time.perf_counter(); times = []; buf = b""; last = None
    while True:
        d = s.recv(1 << 20)
        if not d: break
        now = time.perf_counter(); buf += d
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            i = ev.find(b"data: ")
            if i < 0: continue
            data = ev[i + 6:]
            if data.strip() == b"[DONE]":
                s.close(); return times, last
            last = json.loads(data); times.append(now - t0)
    return times, last
for port in ports:
    name = "A" if port == ports[0] else "B"
    itl = {"constrained": [], "plain": [], "tag": [], "stopre": []}; ntok = []; ok = 0
    tag = {"type": "structural_tag", "structures": [{"begin": "e[", "schema": {"type": "integer"}, "end": "]"}],
           "triggers": ["e"]}
    for r in range(nreq + 1):
        prompt = f"record {r}: " + " ".join(str(r * 37 + k) for k in range(40))
        t, last = stream(port, {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 256,
                                                                    "json_schema": json.dumps(schema)}})
        n = last["meta_info"]["completion_tokens"]
        texts.setdefault(r, []).append(last["text"])
        try: json.loads(last["text"]); ok += r > 0
        except Exception: pass
        t2, _ = stream(port, {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": n,
                                                                   "ignore_eos": True}})
        # A structural tag (free text; each "e" opens e[<integer>]) and a stop_regex that never
        # matches, as many tokens.
        t3, _ = stream(port, {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": n,
                                                                   "ignore_eos": True, "structural_tag": json.dumps(tag)}})
        t4, _ = stream(port, {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": n,
                                                                   "ignore_eos": True, "stop_regex": "zzz[0-9]{30}"}})
        if r == 0: continue  # warm-up (first masks of each state computed)
        ntok.append(n)
        itl["constrained"] += [b - a for a, b in zip(t, t[1:])]
        itl["plain"] += [b - a for a, b in zip(t2, t2[1:])]
        itl["tag"] += [b - a for a, b in zip(t3, t3[1:])]
        itl["stopre"] += [b - a for a, b in zip(t4, t4[1:])]
    mc = statistics.median(itl["constrained"]) * 1e3; mp = statistics.median(itl["plain"]) * 1e3
    print(f"server {name}: {nreq} requests, {ok}/{nreq} valid JSON (+1 warm-up), "
          f"{statistics.mean(ntok):.0f} tokens each; median ITL constrained {mc:.3f} ms, "
          f"unconstrained {mp:.3f} ms (x{mc / mp:.2f}); mean {statistics.mean(itl['constrained'])*1e3:.3f} / "
          f"{statistics.mean(itl['plain'])*1e3:.3f} ms")
    mt = statistics.median(itl["tag"]) * 1e3; ms = statistics.median(itl["stopre"]) * 1e3
    print(f"server {name}: median ITL structural_tag {mt:.3f} ms (x{mt / mp:.2f}), "
          f"stop_regex {ms:.3f} ms (x{ms / mp:.2f}) vs unconstrained {mp:.3f} ms")
    if conc > 0:
        # CONC constrained requests at once (seeded, temperature 0.7), twice: output tok/s.
        for rnd in range(2):
            res = [None] * conc
            def one(k):
                prompt = f"user {k}: " + " ".join(str(k * 13 + j) for j in range(60))
                res[k] = stream(port, {"text": prompt, "sampling_params": {
                    "temperature": 0.7, "sampling_seed": 1000 + k, "max_new_tokens": 256,
                    "json_schema": json.dumps(schema)}})[1]
            t0 = time.perf_counter()
            th = [threading.Thread(target=one, args=(k,)) for k in range(conc)]
            for t in th: t.start()
            for t in th: t.join()
            dt = time.perf_counter() - t0
            toks = sum(r["meta_info"]["completion_tokens"] for r in res)
            valid = 0
            for r in res:
                try: json.loads(r["text"]); valid += 1
                except Exception: pass
            print(f"server {name}: {conc} constrained requests at once (round {rnd + 1}): "
                  f"{toks / dt:.0f} out tok/s, {toks} tokens in {dt:.2f} s, {valid}/{conc} valid JSON")
if len(ports) == 2:
    same = sum(1 for r, v in texts.items() if len(v) == 2 and v[0] == v[1])
    print(f"constrained answers at c=1, A vs B: {same}/{len(texts)} identical")
PY
