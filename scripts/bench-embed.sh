#!/bin/bash
# Embedding throughput with the prefix cache on and off (--disable-radix-cache), side by side: one
# fresh `--is-embedding` server per run, alternating, `strata bench serve --backend embeddings`
# over groups of inputs that share a long prefix (an embedding model's instruction, or chunks of
# one document with a shared header: e5-mistral / Qwen3-Embedding style "Instruct: ...\nQuery: ").
# Prints throughput, mean / P99 latency and the prompt tokens served from the cache per run.
# Usage: STRATA=target/release/strata scripts/bench-embed.sh [ROUNDS]
set -euo pipefail
S=${STRATA:-target/release/strata}
ROUNDS=${1:-2}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PORT=${PORT:-30124}
$S make-model --out "$DIR/small" --arch llama --size small --seed 0 >/dev/null
for _ in $(seq "$ROUNDS"); do
  for mode in on off; do
    flags=(--is-embedding)
    [ "$mode" = off ] && flags+=(--disable-radix-cache)
    $S serve --model-path "$DIR/small" --port "$PORT" "${flags[@]}" >"$DIR/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 150); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
    $S bench serve --base-url "http://127.0.0.1:$PORT" --backend embeddings \
      --dataset-name generated-shared-prefix --gsp-num-groups 4 --gsp-prompts-per-group 16 \
      --gsp-system-prompt-len 1024 --gsp-question-len 64 --max-concurrency 16 \
      --warmup-requests 0 --seed 1 >"$DIR/bench.txt" 2>&1
    m=$(curl -s "http://127.0.0.1:$PORT/metrics")
    echo "radix cache $mode:" \
      "$(grep -E 'Request throughput|Input token throughput|Mean TTFT|P99 TTFT|Benchmark duration' "$DIR/bench.txt" | tr -s ' ' | tr '\n' ';')" \
      "$(echo "$m" | grep -E '^sglang:cached_tokens_total') / $(echo "$m" | grep -E '^sglang:prompt_tokens_total')"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
