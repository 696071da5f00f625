#!/usr/bin/env bash
# Embeddings on the bf16 CUDA runner (`--is-embedding`): the same made checkpoint served on the
# GPU and on the CPU (f32 reference); every embedding's cosine to the CPU's must be >= 0.999
# (bf16 weights and activations through every layer), prompts of 2..~1500 tokens, one at a time
# and as one batch (which runs them in one forward), and a repeat hits the prefix cache.
# Usage: scripts/gpu-embed-check.sh [OUTDIR]; env STRATA, SIZE (default llama-3.2-1b).
set -uo pipefail
OUTDIR=${1:-/tmp/strata-embed-check}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-llama-3.2-1b}
M=/tmp/strata-models/$SIZE
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype bf16 > /dev/null \
  || { echo "make-model failed"; exit 1; }
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null' EXIT
"$STRATA" serve --model-path "$M" --port 32620 --is-embedding --page-size 16 --context-length 4096 > "$OUTDIR/gpu.log" 2>&1 & pids+=($!)
"$STRATA" serve --model-path "$M" --port 32621 --is-embedding --device cpu --context-length 4096 > "$OUTDIR/cpu.log" 2>&1 & pids+=($!)
for p in 32620 32621; do
  for _ in $(seq 180); do curl -sf http://127.0.0.1:$p/health > /dev/null && break; sleep 1; done
done
python3 - <<'PY'
import json, math, sys, urllib.request
def embed(port, inp):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", json.dumps({"input": inp}).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return [d["embedding"] for d in json.loads(r.read())["data"]]
def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
prompts = ["hi"] + [f"prompt {i}: " + "the quick brown fox jumps over the lazy dog " * (3 ** i) for i in range(5)]
ref = [embed(32621, p)[0] for p in prompts]
fails = []
def check(name, vecs):
    cs = [cos(a, b) for a, b in zip(vecs, ref)]
    ok = min(cs) >= 0.999
    print(("PASS " if ok else "FAIL ") + f"{name}: min cosine {min(cs):.6f} (each: {', '.join(f'{c:.5f}' for c in cs)})")
    if not ok: fails.append(name)
check("singles", [embed(32620, p)[0] for p in prompts])
check("batch", embed(32620, prompts))
check("repeat (prefix cache)", [embed(32620, p)[0] for p in prompts])
print("RESULT", "FAIL" if fails else "PASS")
sys.exit(1 if fails else 0)
PY
