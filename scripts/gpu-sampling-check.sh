#!/usr/bin/env bash
# The GPU sampler on the H200, one step of scripts/gpu-all.sh: `strata gpu bench --only sampling`
# (GPU sampler vs the previous download-and-host path), then two bf16 servers on the made 1B model
# and scripts/gpu_sampling_compare.py: seeded non-greedy requests must be deterministic on one
# server and identical across the two (concurrency 1, cuBLASLt tuning on: the machine-wide table).
# Usage: scripts/gpu-sampling-check.sh [OUTDIR]; env STRATA.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1 # cuBLASLt tuning on: the machine-wide table keeps the two servers consistent
W=${PD_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
timeout 60 "$STRATA" gpu bench --only sampling 2>&1 | tail -12
[ -f "$W/llama-3.2-1b/config.json" ] || "$STRATA" make-model --out "$W/llama-3.2-1b" --size llama-3.2-1b --dtype bf16 > /dev/null 2>&1
up() { # port
  "$STRATA" serve --model-path "$W/llama-3.2-1b" --port $1 --page-size 16 --max-total-tokens 65536 \
    > "$OUTDIR/sampling-serve-$1.log" 2>&1 & pids+=($!)
  local pid=$!
  for _ in $(seq 240); do
    curl -sf localhost:$1/health > /dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  echo "FAIL: server $1 did not start"; tail -5 "$OUTDIR/sampling-serve-$1.log"; return 1
}
up 32201 && up 32202 || exit 1
python3 scripts/gpu_sampling_compare.py http://127.0.0.1:32201 http://127.0.0.1:32202 --n 16 --new-tokens 32 \
  --conc 1 --expect-identical --json "$OUTDIR/sampling.json"
