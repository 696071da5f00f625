#!/usr/bin/env bash
# CPU serving numbers for docs/perf.md (inference server section): tokens/s of the tiny and small made models, and TTFT
# with vs without a cached shared prefix. Usage: scripts/bench_serve_cpu.sh [strata binary]
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=30555

serve() { # model-dir, extra flags...
  local dir=$1; shift
  "$BIN" serve --model-path "$dir" --port $PORT --page-size 16 --log-level warn "$@" &
  for _ in $(seq 100); do curl -sf localhost:$PORT/health >/dev/null && return; sleep 0.2; done
  echo "server did not start" >&2; exit 1
}
stop() { kill %1; wait %1 2>/dev/null || true; }
# Server CPU seconds (utime + stime): the machine may be shared, so also report work per CPU-second.
cpu_s() { awk '{print ($14 + $15) / 100}' /proc/$(jobs -p %1)/stat; }
bench() {
  echo "+ strata bench serve $*"
  local c0; c0=$(cpu_s)
  "$BIN" bench serve --base-url http://127.0.0.1:$PORT "$@" \
    | grep -E "Successful|duration|Input token|Output token|Median TTFT|P99 TTFT|Median ITL|P99 ITL"
  echo "server CPU seconds: $(echo "$(cpu_s) - $c0" | bc -l)   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

for size in tiny small; do
  "$BIN" make-model --out "$WORK/$size" --arch llama --size $size --seed 0 2>/dev/null
  serve "$WORK/$size"
  n=$([ $size = tiny ] && echo 64 || echo 8)
  bench --num-prompts $n --random-input-len 128 --random-output-len 64 --max-concurrency 1
  bench --num-prompts $((n * 4)) --random-input-len 128 --random-output-len 64 --max-concurrency 16
  stop
done

for flags in "" "--disable-radix-cache"; do
  echo "== shared prefix, small model, server flags: ${flags:-(radix cache on)}"
  serve "$WORK/small" $flags
  bench --dataset-name generated-shared-prefix --gsp-num-groups 2 --gsp-prompts-per-group 8 \
    --gsp-system-prompt-len 512 --gsp-question-len 32 --gsp-output-len 8 --max-concurrency 1
  stop
done
