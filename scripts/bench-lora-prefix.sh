#!/usr/bin/env bash
# LoRA prefix caching: adapter requests sharing long system prompts (generated-shared-prefix),
# sent to a server with the prefix cache (each adapter caches in its own namespace) and to one
# without (`--disable-radix-cache`: what adapter requests got before namespaces), plus the base
# model on the cached server for reference; rounds alternated, one model and adapter.
# Usage: scripts/bench-lora-prefix.sh [OUTDIR]; env STRATA, SIZE (default small), DEVICE (cpu;
# cuda for the bf16 runner), RANK (16), NGROUPS (4), PER (8), SYS (512), Q (32), OUTLEN (16),
# CONC (4), ROUNDS (2).
set -uo pipefail
OUTDIR=${1:-/tmp/strata-bench-lora-prefix}; mkdir -p "$OUTDIR"
. "$(dirname "$0")/lora-bench-model.sh"
"$STRATA" serve --model-path "$M" --port 32641 "${dev[@]}" --lora-paths "a1=$A" > "$OUTDIR/cached.log" 2>&1 &
p1=$!
"$STRATA" serve --model-path "$M" --port 32642 "${dev[@]}" --lora-paths "a1=$A" --disable-radix-cache > "$OUTDIR/uncached.log" 2>&1 &
p2=$!
trap 'kill $p1 $p2 2>/dev/null; wait 2>/dev/null' EXIT
for port in 32641 32642; do
  for _ in $(seq 240); do curl -sf http://127.0.0.1:$port/health > /dev/null && break; sleep 1; done
done
for r in $(seq ${ROUNDS:-2}); do
  for run in "adapter-cached 32641 a1" "adapter-uncached 32642 a1" "base-cached 32641 -"; do
    set -- $run
    names=(); [ "$3" != - ] && names=(--lora-name "$3")
    # A fresh cache per run: each starts cold and warms on its own groups.
    curl -sf -X POST http://127.0.0.1:$2/flush_cache > /dev/null
    echo "== round $r: $1"
    "$STRATA" bench serve --base-url http://127.0.0.1:$2 --dataset-name generated-shared-prefix \
      --gsp-num-groups ${NGROUPS:-4} --gsp-prompts-per-group ${PER:-8} --gsp-system-prompt-len ${SYS:-512} \
      --gsp-question-len ${Q:-32} --gsp-output-len ${OUTLEN:-16} --max-concurrency ${CONC:-4} --seed $r "${names[@]}" 2>&1 \
      | grep -E "Output token throughput|Mean TTFT|Median TTFT|Successful" | tr -s ' '
  done
done
