#!/usr/bin/env bash
# The file L3 backend's hit TTFT against recompute, for docs/perf.md. For each prompt length and
# round (a new random prompt each time): TTFT on a radix-only server (recompute), then on a
# HiCache server with `--hicache-storage-backend file` (computes and writes the directory), then on
# a freshly started second server sharing the directory (an L3 hit: read from the files, warm page
# cache). TTFT = the time of a /generate with max_new_tokens 1; the hit's L3 read (bytes, seconds)
# comes from the fresh server's prefetch metrics.
# Usage: scripts/bench-hicache-file.sh [strata binary] ; env: SIZE (small), LENS ("1024 2048 4032"),
# ROUNDS (3).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
SIZE=${SIZE:-small} LENS=${LENS:-"1024 2048 4032"} ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d)
SERVE=
trap '[ -n "$SERVE" ] && kill $SERVE 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=30675
"$BIN" make-model --out "$WORK/m" --arch llama --size "$SIZE" --seed 0 2>/dev/null
serve() { # flags...
  SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR="$WORK/l3" "$BIN" serve --model-path "$WORK/m" \
    --port $PORT --page-size 64 --max-total-tokens 8192 --log-level warn "$@" > "$WORK/serve.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 300); do curl -sf localhost:$PORT/health > /dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; cat "$WORK/serve.log" >&2; exit 1
}
stop() { kill $SERVE; wait $SERVE 2> /dev/null || true; SERVE=; }
# `ttft SEED LEN` prints "<seconds> <cached_tokens>" of one request.
ttft() {
  python3 - "$1" "$2" $PORT <<'PY'
import json, sys, time, urllib.request, random
seed, n, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)
ids = [rnd.randrange(3, 1000) for _ in range(n)]
body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
t = time.perf_counter()
r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate",
    data=json.dumps(body).encode(), headers={"content-type": "application/json"})).read()
print(f"{time.perf_counter() - t:.4f}", json.loads(r)["meta_info"]["cached_tokens"])
PY
}
# Waits until the HiCache server has written `$1` tokens to the L3.
backed() {
  for _ in $(seq 400); do
    v=$(curl -s localhost:$PORT/metrics | awk '$1 == "sglang:backuped_tokens_total" {print int($2)}')
    [ "${v:-0}" -ge "$1" ] && return; sleep 0.05
  done
  echo "backup did not finish" >&2; exit 1
}
FILE=(--enable-hierarchical-cache --hicache-storage-backend file --hicache-storage-prefetch-policy
  wait_complete --hicache-storage-backend-extra-config '{"prefetch_threshold": 64}')
echo "# model $SIZE, page 64, TTFT in ms (cached tokens); recompute = radix-only server"
echo "| prompt tokens | round | recompute | HiCache server (computes, writes L3) | fresh server, L3 file hit | its L3 read | recompute / hit |"
echo "|---|---|---|---|---|---|---|"
for len in $LENS; do
  for r in $(seq "$ROUNDS"); do
    seed=$((len * 100 + r))
    serve; read -r t0 c0 < <(ttft $seed "$len"); stop
    serve "${FILE[@]}"; read -r t1 c1 < <(ttft $seed "$len"); backed $(( (len / 64) * 64 )); stop
    serve "${FILE[@]}"; read -r t2 c2 < <(ttft $seed "$len")
    read -r rb rs < <(curl -s localhost:$PORT/metrics | awk '$1 == "sglang:prefetch_bytes_total" {b=$2}
      $1 == "sglang:prefetch_seconds_total" {s=$2} END {print b, s}'); stop
    python3 -c "print(f'| $len | $r | {$t0*1e3:.0f} ($c0) | {$t1*1e3:.0f} ($c1) | {$t2*1e3:.0f} ($c2) | {$rb/1e6:.1f} MB in {$rs*1e3:.1f} ms | {$t0/$t2:.1f}x |')"
  done
done
echo "L3 directory: $(ls "$WORK/l3" | wc -l) files, $(du -sh "$WORK/l3" | cut -f1)"
