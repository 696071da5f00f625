#!/usr/bin/env bash
# LoRA serving cost: one server with an adapter loaded, the same random requests sent three
# ways side by side (no adapter, every request naming it, half of them naming it), rounds
# alternated; prints each run's throughput and latency lines.
# Usage: scripts/bench-lora.sh [OUTDIR]; env STRATA, SIZE (default small), DEVICE (default cpu;
# cuda for the bf16 runner), RANK (16), NP (32), IN (256), OUTLEN (32), CONC (8), ROUNDS (2).
set -uo pipefail
OUTDIR=${1:-/tmp/strata-bench-lora}; mkdir -p "$OUTDIR"
. "$(dirname "$0")/lora-bench-model.sh"
"$STRATA" serve --model-path "$M" --port 32640 "${dev[@]}" --lora-paths "a1=$A" --disable-radix-cache > "$OUTDIR/serve.log" 2>&1 &
pid=$!; trap 'kill $pid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 240); do curl -sf http://127.0.0.1:32640/health > /dev/null && break; sleep 1; done
for r in $(seq ${ROUNDS:-2}); do
  for mode in base lora half; do
    names=(); case $mode in lora) names=(--lora-name a1) ;; half) names=(--lora-name a1 "") ;; esac
    echo "== round $r: $mode"
    "$STRATA" bench serve --base-url http://127.0.0.1:32640 --num-prompts ${NP:-32} --random-input-len ${IN:-256} \
      --random-output-len ${OUTLEN:-32} --max-concurrency ${CONC:-8} --seed $r "${names[@]}" 2>&1 \
      | grep -E "Output token throughput|Mean TTFT|Mean ITL|Successful" | tr -s ' '
  done
done
