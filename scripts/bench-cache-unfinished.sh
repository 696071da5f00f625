#!/bin/bash
# Caching unfinished prefills on (STRATA_CACHE_UNFINISHED=1, the default) and off (0), side by
# side: one fresh server per run, alternating, 16 requests with two shared 1.5K-token prefixes
# sent at once. Prints TTFT, duration and the prompt tokens served from the cache per run.
# Usage: STRATA=target/release/strata scripts/bench-cache-unfinished.sh [ROUNDS]
set -euo pipefail
S=${STRATA:-target/release/strata}
ROUNDS=${1:-2}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PORT=${PORT:-30123}
$S make-model --out "$DIR/small" --arch llama --size small --seed 0 >/dev/null
for _ in $(seq "$ROUNDS"); do
  for mode in 1 0; do
    STRATA_CACHE_UNFINISHED=$mode $S serve --model-path "$DIR/small" --port "$PORT" \
      --chunked-prefill-size 128 >"$DIR/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 150); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
    $S bench serve --base-url "http://127.0.0.1:$PORT" --dataset-name generated-shared-prefix \
      --gsp-num-groups 2 --gsp-prompts-per-group 8 --gsp-system-prompt-len 1536 \
      --gsp-question-len 32 --gsp-output-len 16 --warmup-requests 0 --seed 1 >"$DIR/bench.txt" 2>&1
    m=$(curl -s "http://127.0.0.1:$PORT/metrics")
    echo "STRATA_CACHE_UNFINISHED=$mode" \
      "$(grep -E 'Mean TTFT|Median TTFT|P99 TTFT|Benchmark duration' "$DIR/bench.txt" | tr -s ' ' | tr '\n' ';')" \
      "$(echo "$m" | grep -E '^sglang:cached_tokens_total') / $(echo "$m" | grep -E '^sglang:prompt_tokens_total')"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
