#!/usr/bin/env bash
# Served decode ITL at concurrency 1 against the raw graph step, one device step: two bf16
# servers on the same made model side by side (A and B, identical unless ITL_A_ENV / ITL_B_ENV
# set them apart: then the spread within each is the noise),
# benched alternately (1K in / 256 out, 4 prompts per run), then `strata gpu bench` for the raw
# decode step of the same shape at 1K context. Each server's step profile (scheduler gap,
# metadata prep, launch-to-return) comes from its log.
# Usage: scripts/gpu-itl-ab.sh [OUTDIR]; env STRATA, SIZE (llama-3.1-8b), ROUNDS (2), ITL_A_ENV and
# ITL_B_ENV (environment only server A or B gets, e.g. STRATA_FUSION_OFF=qkv_norm for a served
# A/B), CONC (1) and NP (4 prompts per run; at CONC > 1 also output tok/s), RAW (1: the raw step),
# ITL_B_STRATA (another strata binary for server B, e.g. the build before a change),
# MAX_TOTAL (--max-total-tokens, 65536), GREEDY ("N TOKENS": gpu_greedy_consistency.py with A as the
# graph server and B as the other: every output of B, and of A at 8 and 32 at once, against A's
# one at a time), EXTRA (`bench serve --extra-request-body`, e.g.
# '{"sampling_params": {"temperature": 0.7, "top_p": 0.9}}' for sampled requests).
# (Issue 14's served-ITL target is at c=1; CONC > 1 compares batched decode.)
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZE=${SIZE:-llama-3.1-8b} ROUNDS=${ROUNDS:-2} CONC=${CONC:-1} NP=${NP:-4}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
W=${HB_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
[ -f "$W/$SIZE/config.json" ] || "$STRATA" make-model --out "$W/$SIZE" --arch llama --size "$SIZE" --dtype bf16 > /dev/null 2>&1 \
  || { echo "make-model failed"; exit 1; }
S=(serve --model-path "$W/$SIZE" --page-size 16 --context-length 10240 --max-running-requests 64
  --max-total-tokens ${MAX_TOTAL:-65536} --log-level info)
env ${ITL_A_ENV:-} "$STRATA" "${S[@]}" --port 32501 > "$OUTDIR/itl-A.log" 2>&1 & pids+=($!)
env ${ITL_B_ENV:-} "${ITL_B_STRATA:-$STRATA}" "${S[@]}" --port 32502 > "$OUTDIR/itl-B.log" 2>&1 & pids+=($!)
for port in 32501 32502; do
  for _ in $(seq 400); do curl -sf localhost:$port/health > /dev/null && break; sleep 0.5; done
  curl -sf localhost:$port/health > /dev/null || { echo "server $port did not start"; exit 1; }
done
echo "# $SIZE on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1): served decode at c=$CONC (1024 in / 256 out)${EXTRA:+, requests $EXTRA}"
for r in $(seq $ROUNDS); do
  for ab in A B; do
    port=32501; [ $ab = B ] && port=32502
    printf "   round %d %s " $r $ab
    "$STRATA" bench serve --base-url http://127.0.0.1:$port --num-prompts $NP --random-input-len 1024 \
      --random-output-len 256 --max-concurrency $CONC --seed $((40 + r)) ${EXTRA:+--extra-request-body "$EXTRA"} | grep -E "Median ITL|Mean ITL|Mean TTFT|Median TTFT|Output token throughput" | tr -s ' ' | tr '\n' ' '
    echo
  done
done
for ab in A B; do
  echo "   $ab profile: $(grep -h "back-to-back graph decode steps" "$OUTDIR/itl-$ab.log" | tail -1 | sed 's/.*INFO//' | cut -c1-200)"
done
if [ -n "${GREEDY:-}" ]; then  # GREEDY="N TOKENS": A's greedy outputs one at a time, 8 and 32 at once, vs B's
  timeout 200 python3 scripts/gpu_greedy_consistency.py http://127.0.0.1:32501 http://127.0.0.1:32502 \
    "$OUTDIR/itl-greedy.json" $GREEDY > "$OUTDIR/itl-greedy.log" 2>&1; echo "   greedy A vs B: rc=$?"
  tail -8 "$OUTDIR/itl-greedy.log"
fi
for p in "${pids[@]}"; do kill $p 2>/dev/null; done; sleep 2
[ "${RAW:-1}" = 1 ] || exit 0
shape=$SIZE
timeout 120 "$STRATA" gpu bench --shape "$shape" --only decode --decode-batches 1 --decode-ctx 1024 \
  > "$OUTDIR/itl-raw.log" 2>&1
grep -E "decode b1|graph step" "$OUTDIR/itl-raw.log" | cut -c1-260 | head -4
