#!/usr/bin/env bash
# Streamed /generate with log-probabilities vs without, on two server binaries side by side (A and
# B, e.g. before and after a change), the tiny made model on the CPU: output tok/s, mean ITL and
# the server's CPU seconds per run, ROUNDS alternations. The client is `strata bench serve` of
# CLIENT (default B).
# Usage: scripts/bench-logprobs-stream.sh A-binary [B-binary]   (env ROUNDS, CONC, NP, OUT_LEN)
set -euo pipefail
A=$1; B=${2:-$1}; CLIENT=${CLIENT:-$B}
ROUNDS=${ROUNDS:-2} CONC=${CONC:-64} NP=${NP:-128} OUT_LEN=${OUT_LEN:-256}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$A" make-model --out "$WORK/tiny" --arch llama --size tiny --seed 0 2>/dev/null
"$A" serve --model-path "$WORK/tiny" --port 30561 --page-size 16 --log-level warn &
PA=$!
"$B" serve --model-path "$WORK/tiny" --port 30562 --page-size 16 --log-level warn &
PB=$!
for p in 30561 30562; do
  for _ in $(seq 100); do curl -sf localhost:$p/health >/dev/null && break; sleep 0.2; done
done
cpu() { awk '{print ($14 + $15) / 100}' /proc/$1/stat; }
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    port=$([ $side = A ] && echo 30561 || echo 30562); pid=$([ $side = A ] && echo $PA || echo $PB)
    for extra in '{}' '{"return_logprob": true, "top_logprobs_num": 5}'; do
      c0=$(cpu $pid)
      res=$("$CLIENT" bench serve --base-url http://127.0.0.1:$port --num-prompts "$NP" --random-input-len 64 \
        --random-output-len "$OUT_LEN" --max-concurrency "$CONC" --extra-request-body "$extra" \
        | grep -E "Output token thr|Mean ITL" | awk '{print $NF}' | tr '\n' ' ')
      echo "round $r $side $extra: out tok/s, mean ITL ms = $res; server CPU s $(echo "$(cpu $pid) - $c0" | bc -l)"
    done
  done
done
