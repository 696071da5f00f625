#!/usr/bin/env bash
# PD disaggregation benchmark for docs/perf.md, one run, same machine:
#  - TTFT at concurrency 1 through the Strata router: PD pair (prefill + decode) vs one colocated
#    server (router in regular mode), 1K-token prompts;
#  - KV transfer rate prefill -> decode (the prefill's pd_transfer counters) vs a plain
#    single-stream loopback TCP copy (`strata bench store --role tcp-copy`);
#  - decode ITL under mixed load: a decode stream (64-token prompts, 128 out, 4 at a time) while
#    long prefills (2K tokens, 1 out) arrive, PD vs colocated.
# Usage: scripts/bench-pd.sh [strata binary]; env SIZE (small), PIN (unset: every server may use
# every core; PIN=1: the prefill runs on core 0 and the decode on core 1, as two devices would
# separate them, while the colocated server keeps both cores).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
SIZE=${SIZE:-small}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" make-model --out "$WORK/m" --arch llama --size "$SIZE" --seed 0 2> /dev/null
start() { # name port flags...
  local name=$1 port=$2; shift 2
  $BIN "$@" > "$WORK/$name.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 300); do curl -sf "localhost:$port/health" > /dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1
}
S=(serve --model-path "$WORK/m" --page-size 64 --log-level warn)
P0=() P1=()
if [ -n "${PIN:-}" ]; then P0=(taskset -c 0) P1=(taskset -c 1); fi
start colo 30701 "${S[@]}" --port 30701
BIN0=$BIN
BIN="${P0[*]} $BIN0" start prefill 30702 "${S[@]}" --port 30702 --disaggregation-mode prefill --disaggregation-bootstrap-port 30799
BIN="${P1[*]} $BIN0" start decode 30703 "${S[@]}" --port 30703 --disaggregation-mode decode --disaggregation-bootstrap-port 30799
BIN=$BIN0
start router-pd 30710 router --pd-disaggregation --prefill http://127.0.0.1:30702 30799 \
  --decode http://127.0.0.1:30703 --port 30710 --prometheus-port 30711 --log-level warn
start router-colo 30720 router --worker-urls http://127.0.0.1:30701 --port 30720 \
  --prometheus-port 30721 --log-level warn
bench() { "$BIN" bench serve --tokenizer "$WORK/m" "$@"; }
pick() { grep -E "$1" | tr -s ' ' | sed 's/^ //'; }
echo "# model $SIZE, page 64, pinned: ${PIN:-no}"
echo "## TTFT, concurrency 1, 1024-token prompts, 16 out"
for mode in colo pd; do
  port=$([ $mode = pd ] && echo 30710 || echo 30720)
  printf "%-5s " $mode
  bench --base-url http://127.0.0.1:$port --num-prompts 12 --random-input-len 1024 \
    --random-output-len 16 --max-concurrency 1 --seed 5 | pick "Median TTFT|Mean TTFT|Median ITL" | tr '\n' ' '
  echo
done
m() { curl -s localhost:30702/metrics | awk -v k="sglang:$1" '$1 == k {print $2}'; }
B=$(m pd_transfer_bytes_total) T=$(m pd_transfer_seconds_total)
echo "## KV transfer: $(m pd_transfers_total) transfers, $B bytes in $T s -> $(echo "$B / $T / 1000000" | bc -l | cut -c1-8) MB/s"
"$BIN" bench store --role tcp-copy --copy-mb 1024 2> /dev/null | tail -n 3
# The same copy at one transfer's size on a fresh connection each time (what a PD transfer is).
N=$(m pd_transfers_total); MB=$(python3 -c "print(max(1, round($B / $N / 1048576)))")
RATES=$(for i in 1 2 3 4 5; do
  "$BIN" bench store --role tcp-copy --copy-mb $MB --batch-bytes-mb $MB 2> /dev/null | tail -n 1 \
    | sed -E 's/.*= ([0-9.]+) GB\/s.*/\1/'
done | sort -n | tr '\n' ' ')
echo "tcp-copy of one transfer ($MB MiB, fresh connection each), 5 runs: $RATES-> median $(echo $RATES | cut -d' ' -f3) GB/s"
echo "## decode ITL under mixed load (decode: 64 in / 128 out x 4 at a time; prefills: 2048 in / 1 out)"
for mode in colo pd; do
  port=$([ $mode = pd ] && echo 30710 || echo 30720)
  bench --base-url http://127.0.0.1:$port --num-prompts 16 --random-input-len 2048 --random-output-len 1 \
    --max-concurrency 2 --seed 9 > /dev/null & LOAD=$!
  printf "%-5s " $mode
  bench --base-url http://127.0.0.1:$port --num-prompts 8 --random-input-len 64 --random-output-len 128 \
    --max-concurrency 4 --seed 8 | pick "Median ITL|P99 ITL|Mean ITL" | tr '\n' ' '
  echo
  wait $LOAD || true
done
