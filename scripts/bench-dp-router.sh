#!/usr/bin/env bash
# What `strata router --dp-aware` buys in front of a data-parallel server: one `strata serve
# --dp-size 2`, two cache-aware routers to it (plain: the server places requests round robin
# over its replicas; --dp-aware: the router's tree picks the replica), the same shared-prefix
# requests (generated-shared-prefix) through each, alternated, each run from a flushed cache.
# Usage: scripts/bench-dp-router.sh [OUTDIR]; env STRATA, SIZE (small), DEVICE (cpu),
# NGROUPS (8), PER (8), SYS (512), Q (32), OUTLEN (16), CONC (4), ROUNDS (2).
set -uo pipefail
OUTDIR=${1:-/tmp/strata-bench-dp-router}; mkdir -p "$OUTDIR"
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-small}; DEVICE=${DEVICE:-cpu}
M=/tmp/strata-models/dp-bench-$SIZE
dtype=f32; [ "$DEVICE" = cuda ] && dtype=bf16
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype $dtype > /dev/null || exit 1
dev=(); [ "$DEVICE" = cpu ] && dev=(--device cpu)
"$STRATA" serve --model-path "$M" --port 32660 "${dev[@]}" --dp-size 2 > "$OUTDIR/serve.log" 2>&1 & p0=$!
for _ in $(seq 240); do curl -sf http://127.0.0.1:32660/health > /dev/null && break; sleep 1; done
"$STRATA" router --worker-urls http://127.0.0.1:32660 --port 32661 --prometheus-port 32671 --policy cache_aware > "$OUTDIR/plain.log" 2>&1 & p1=$!
"$STRATA" router --worker-urls http://127.0.0.1:32660 --port 32662 --prometheus-port 32672 --policy cache_aware --dp-aware > "$OUTDIR/aware.log" 2>&1 & p2=$!
trap 'kill $p0 $p1 $p2 2>/dev/null; wait 2>/dev/null' EXIT
for port in 32661 32662; do
  for _ in $(seq 60); do curl -sf http://127.0.0.1:$port/health > /dev/null && break; sleep 1; done
done
for r in $(seq ${ROUNDS:-2}); do
  for run in "plain 32661" "dp-aware 32662"; do
    set -- $run
    curl -sf -X POST http://127.0.0.1:32660/flush_cache > /dev/null
    echo "== round $r: $1"
    "$STRATA" bench serve --base-url http://127.0.0.1:$2 --dataset-name generated-shared-prefix \
      --gsp-num-groups ${NGROUPS:-8} --gsp-prompts-per-group ${PER:-8} --gsp-system-prompt-len ${SYS:-512} \
      --gsp-question-len ${Q:-32} --gsp-output-len ${OUTLEN:-16} --max-concurrency ${CONC:-4} --seed $r 2>&1 \
      | grep -E "Output token throughput|Mean TTFT|Median TTFT|Successful" | tr -s ' '
  done
done
