#!/usr/bin/env bash
# PD KV transfer rate vs the raw copy rate of the same transport, side by side in one run (the
# issue-15 target: transfer >= 0.7x raw), on this machine's CPU backend.
#
# Part 1 (always): `strata bench pd-transfer` — THROUGHPUT with N transfers in flight (CONC,
# default 1,4,16) of prompts of each length in LENS, over the same-host path and TCP: the servers'
# transfer code (bootstrap server in a child process over a KV pool, decode fetches landing in
# pool pages) without the model, against the raw copy of the same bytes over the same transport
# with the same concurrency, plus the per-transfer breakdown (waiting / moving / ACK).
#
# Part 2 (SERVERS=1): real servers, one transfer at a time:
#  - four PD pairs behind four Strata routers: {same-host path, TCP forced (STRATA_SAME_HOST=0)}
#    x {pages sent from the KV pool (the default), staged (STRATA_PD_POOL=0: copied into a
#    staging pool first, the path before zero-staging)};
#  - ROUNDS rounds of fresh prompts of each length in LENS (1 output token), sent to the four
#    pairs in rotating order, one at a time;
#  - per pair and length: the prefill's pd_transfer counters (header sent to ACK received: the
#    whole transfer, both wake-ups included), the decode's part (header to ACK sent), and the
#    answer time (1 output token: the TTFT, staging copies included), pool vs staged paired;
#  - then the raw copy of one transfer's bytes over each transport, warm rounds on one
#    connection (`strata bench store --role cma-copy` / `--role tcp-copy`), and the same-host copy
#    again from memory rather than the caches (`--cold`: a different buffer pair each round).
# Usage: scripts/bench-pd-transfer.sh [strata binary]; env SIZE (small), LENS ("1024 2048"),
# ROUNDS (12), CONC ("1,4,16"), SERVERS (0).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
echo "## KV transfer throughput, N in flight, vs the raw copy of the transport (strata bench pd-transfer)"
for plen in ${LENS:-1024 2048}; do
  "$BIN" bench pd-transfer --tokens $plen --concurrency ${CONC:-1,4,16} --rounds ${ROUNDS:-12}
done
[ "${SERVERS:-0}" = 1 ] || exit 0
echo "## real servers, one transfer at a time"
SIZE=${SIZE:-small}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" make-model --out "$WORK/m" --arch llama --size "$SIZE" --seed 0 2> /dev/null
start() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" > "$WORK/$name.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 300); do curl -sf "localhost:$port/health" > /dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1
}
S=(serve --model-path "$WORK/m" --page-size 64 --max-total-tokens 32768 --log-level warn)
# name  prefill-port decode-port boot router env...
PAIRS=("shm-pool 30802 30803 30899 30810" "tcp-pool 30804 30805 30898 30811"
       "shm-staged 30806 30807 30897 30812" "tcp-staged 30808 30809 30896 30813")
for p in "${PAIRS[@]}"; do
  read -r name pp dp boot rp <<< "$p"
  E=(env)
  case $name in tcp-*) E+=(STRATA_SAME_HOST=0);; esac
  case $name in *-staged) E+=(STRATA_PD_POOL=0);; esac
  start "p-$name" $pp "${E[@]}" "$BIN" "${S[@]}" --port $pp --disaggregation-mode prefill --disaggregation-bootstrap-port $boot
  start "d-$name" $dp "${E[@]}" "$BIN" "${S[@]}" --port $dp --disaggregation-mode decode --disaggregation-bootstrap-port $boot
  start "r-$name" $rp "$BIN" router --pd-disaggregation --prefill http://127.0.0.1:$pp $boot \
    --decode http://127.0.0.1:$dp --port $rp --prometheus-port $((rp + 100)) --log-level warn
done
echo "# model $SIZE, page 64, $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "${ROUNDS:-12}" "${LENS:-1024 2048}" "$WORK" <<'PY'
import json, random, statistics, sys, urllib.request
rng = random.Random(5)
pairs = {"shm-pool": (30810, 30802, 30803), "tcp-pool": (30811, 30804, 30805),
         "shm-staged": (30812, 30806, 30807), "tcp-staged": (30813, 30808, 30809)}
import time
def ask(port, n):
    ids = [rng.randrange(3, 500) for _ in range(n)]
    body = json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1, "ignore_eos": True}}).encode()
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate", body, {"Content-Type": "application/json"})) as r:
        v = json.load(r)
    assert v["meta_info"]["finish_reason"]["type"] != "abort", v
    return (time.perf_counter() - t) * 1000
def counters(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    val = {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l.startswith("sglang:pd_")}
    return [val.get(f"sglang:pd_{k}", 0.0) for k in ("transfers_total", "transfer_bytes_total", "transfer_seconds_total",
            "transfers_same_host_total", "transfers_staged_total", "received_transfers_total", "receive_seconds_total")]
rounds, lens, work = int(sys.argv[1]), [int(x) for x in sys.argv[2].split()], sys.argv[3]
sizes = {}
for plen in lens:
    ask(30810, plen)  # warm-up of this length (not counted: counters are read after it)
    before = {k: (counters(p), counters(d)) for k, (_, p, d) in pairs.items()}
    order = list(pairs)
    ms = {k: [] for k in pairs}
    for i in range(rounds):
        for k in order[i % 4:] + order[:i % 4]:
            ms[k].append(ask(pairs[k][0], plen))
    for k, (_, p, d) in pairs.items():
        n, b, t, l, s, _, _ = (a - z for a, z in zip(counters(p), before[k][0]))
        dn, dt = [a - z for a, z in zip(counters(d), before[k][1])][5:]
        sizes[plen] = b / n
        print(f"{plen:5d} tokens {k:10s}: {n:.0f} transfers ({l:.0f} same-host, {s:.0f} staged), {b / n / 2**20:.2f} MiB each, "
              f"{t / n * 1000:.2f} ms each = {b / t / 1e9:.2f} GB/s (prefill: header to ACK); decode part {dt / max(dn, 1) * 1000:.2f} ms; "
              f"answer (TTFT) median {statistics.median(ms[k]):.1f} ms")
    for net in ("shm", "tcp"):
        d = [a - b for a, b in zip(ms[f"{net}-pool"], ms[f"{net}-staged"])]
        print(f"{plen:5d} tokens {net}: pool - staged answer time, median of per-round differences {statistics.median(d):+.1f} ms")
json.dump(sizes, open(f"{work}/sizes.json", "w"))
PY
echo "## raw copies of one transfer's bytes, 9 warm rounds on one connection / buffer pair (median of rounds 2-9)"
for plen in ${LENS:-1024 2048}; do
  MB=$(python3 -c "import json; print(max(1, round(json.load(open('$WORK/sizes.json'))['$plen'] / 2**20)))")
  printf "%5d tokens (%s MiB): " $plen $MB
  "$BIN" bench store --role cma-copy --copy-mb $MB --batch-bytes-mb 1 --rounds 9 2> /dev/null | tail -n 1 | tr -s ' '
  printf "%5d tokens (%s MiB): " $plen $MB
  "$BIN" bench store --role cma-copy --copy-mb $MB --batch-bytes-mb 1 --rounds 9 --cold 2> /dev/null | tail -n 1 | tr -s ' '
  printf "%5d tokens (%s MiB): " $plen $MB
  "$BIN" bench store --role tcp-copy --copy-mb $MB --batch-bytes-mb $MB --rounds 9 2> /dev/null | tail -n 1 | tr -s ' '
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
