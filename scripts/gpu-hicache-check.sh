#!/usr/bin/env bash
# HiCache on the GPU (bf16 runner), one device call: the host tier (L2) and the store (L3) must give
# back byte-exact KV pages. For a made 1B-shaped Llama, page 64:
#  1. server A (small device pool, HiCache, L3 on a local master + store): request P (L1 miss),
#     P again (L1 hit) -> reference answer R; a long unrelated request evicts P to the host; P again
#     (L2 load-back) must answer R;
#  2. server B, fresh, same master: P (L3 prefetch + load-back) must answer R; its TTFT vs A's first
#     (recompute) TTFT is printed.
# Usage: scripts/gpu-hicache-check.sh [OUTDIR]; STRATA = binary.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
# Heuristic GEMM picks: with per-process autotuning two servers may compute bf16 with different
# kernels, and the cross-instance comparison would measure that instead of the KV pages.
export STRATA_LT_TUNE=${STRATA_LT_TUNE:-0}
W=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
"$STRATA" make-model --out "$W/m" --arch llama --size llama-3.2-1b > /dev/null 2>&1 || { echo "make-model failed"; exit 1; }
"$STRATA" master --rpc-port 50951 --http-metadata-server-port 0 --metrics-port 0 --state-file "$W/ms.json" > "$OUTDIR/hc-master.log" 2>&1 & pids+=($!)
sleep 1
"$STRATA" store --master 127.0.0.1:50951 --device "$W/store.strata" --capacity 8GiB --memory 2GiB > "$OUTDIR/hc-store.log" 2>&1 & pids+=($!)
sleep 1
EXTRA='{"master_server_address": "127.0.0.1:50951", "prefetch_threshold": 64}'
serve() { # port
  "$STRATA" serve --model-path "$W/m" --port $1 --page-size 64 --max-total-tokens 12288 \
    --enable-hierarchical-cache --hicache-ratio 4 --hicache-storage-backend strata \
    --hicache-storage-prefetch-policy wait_complete --hicache-storage-backend-extra-config "$EXTRA" \
    > "$OUTDIR/hc-serve-$1.log" 2>&1 & pids+=($!)
  for _ in $(seq 240); do curl -sf localhost:$1/health > /dev/null && return 0; sleep 0.5; done
  echo "server $1 did not start"; tail -20 "$OUTDIR/hc-serve-$1.log"; exit 1
}
serve 31501
cat > "$W/hc.py" <<'PY'
import json, random, time, urllib.request
def gen(port, ids, n=16):
    t = time.time()
    r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate",
        data=json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}).encode()), timeout=300)
    v = json.loads(r.read())
    return v["output_ids"], v["meta_info"]["cached_tokens"], time.time() - t
def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return float([l.split()[1] for l in body.splitlines() if l.startswith(f"sglang:{name} ")][0])
PY
python3 - "$OUTDIR" "$W/hc.py" <<'PY' 2>&1 | tee "$OUTDIR/hc-check.txt"
import sys
exec(open(sys.argv[2]).read())
rng = random.Random(1)
P = [rng.randrange(10, 120000) for _ in range(8192)]
Q = [rng.randrange(10, 120000) for _ in range(11000)]
fails = 0
o1, c1, t1 = gen(31501, P)
R, c2, t2 = gen(31501, P)
print(f"A: P first (recompute) ttft~{t1*1000:.0f} ms cached {c1}; again (L1 hit) {t2*1000:.0f} ms cached {c2}")
gen(31501, Q, 1)
lb = metric(31501, "load_back_tokens_total")
o3, c3, t3 = gen(31501, P)
lb2 = metric(31501, "load_back_tokens_total")
ok = o3 == R
fails += not ok
print(f"A: P after eviction (L2 load-back {lb2 - lb:.0f} tokens) {t3*1000:.0f} ms cached {c3}: {'SAME' if ok else 'DIFFERENT'} as the L1-hit answer")
time.sleep(2)
print("A: backuped_tokens", metric(31501, "backuped_tokens_total"))
sys.stdout.flush()
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
serve 31502
python3 - "$W/hc.py" <<'PY' 2>&1 | tee -a "$OUTDIR/hc-check.txt"
import sys
exec(open(sys.argv[1]).read())
rng = random.Random(1)
P = [rng.randrange(10, 120000) for _ in range(8192)]
R, _, _ = gen(31501, P)
o, c, t = gen(31502, P)
print(f"B (fresh): P via L3 {t*1000:.0f} ms cached {c}, prefetched {metric(31502, 'prefetched_tokens_total'):.0f}: {'SAME' if o == R else 'DIFFERENT'} as A's L1-hit answer")
b = metric(31502, 'prefetch_bytes_total'); s = metric(31502, 'prefetch_seconds_total')
print(f"B: L3 read {b/1e6:.1f} MB in {s*1000:.1f} ms = {b/s/1e9 if s else 0:.2f} GB/s")
PY
grep -iE "error|panic" "$OUTDIR"/hc-serve-*.log | head -5
true
