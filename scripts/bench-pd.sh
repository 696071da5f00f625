#!/usr/bin/env bash
# PD disaggregation benchmark for docs/perf.md, one run, same machine:
#  - TTFT at concurrency 1 through the Strata router, paired: a PD pair whose KV takes the
#    same-host path (shared memory: the decode copies the prefill's staging pages with
#    process_vm_readv) and a PD pair forced onto TCP (STRATA_SAME_HOST=0), each against its own
#    prefill server answering colocated (router in regular mode), 1K-token prompts;
#  - KV transfer rate prefill -> decode of each pair (the prefill's pd_transfer counters: header to
#    acknowledgement) vs the raw copy rate of the same transport at one transfer's size, rounds on
#    one connection as PD now keeps its connections (`strata bench store --role cma-copy` /
#    `--role tcp-copy`), and a 1 GiB single TCP stream;
#  - decode ITL under mixed load: a decode stream (64-token prompts, 128 out, 4 at a time) while
#    long prefills (2K tokens, 1 out) arrive, PD (same-host) vs colocated (ITL=0 skips it).
# Usage: scripts/bench-pd.sh [strata binary]; env SIZE (small), PIN (unset: every server may use
# every core; PIN=1: prefills run on core 0 and decodes on core 1, as two devices would separate
# them, while the colocated server keeps both cores), ITL (1).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/strata}
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
S=(serve --model-path "$WORK/m" --page-size 64 --log-level warn)
P0=() P1=()
if [ -n "${PIN:-}" ]; then P0=(taskset -c 0) P1=(taskset -c 1); fi
start colo 30701 "$BIN" "${S[@]}" --port 30701
# pair "pd": same-host path (the default); pair "tcp": forced TCP.
start prefill 30702 "${P0[@]}" "$BIN" "${S[@]}" --port 30702 --disaggregation-mode prefill --disaggregation-bootstrap-port 30799
start decode 30703 "${P1[@]}" "$BIN" "${S[@]}" --port 30703 --disaggregation-mode decode --disaggregation-bootstrap-port 30799
start prefill-tcp 30704 env STRATA_SAME_HOST=0 "${P0[@]}" "$BIN" "${S[@]}" --port 30704 --disaggregation-mode prefill --disaggregation-bootstrap-port 30798
start decode-tcp 30705 env STRATA_SAME_HOST=0 "${P1[@]}" "$BIN" "${S[@]}" --port 30705 --disaggregation-mode decode --disaggregation-bootstrap-port 30798
start router-pd 30710 "$BIN" router --pd-disaggregation --prefill http://127.0.0.1:30702 30799 \
  --decode http://127.0.0.1:30703 --port 30710 --prometheus-port 30711 --log-level warn
start router-tcp 30730 "$BIN" router --pd-disaggregation --prefill http://127.0.0.1:30704 30798 \
  --decode http://127.0.0.1:30705 --port 30730 --prometheus-port 30731 --log-level warn
# Regular-mode routers in front of the prefill servers: a request without bootstrap fields runs
# colocated there, so the TTFT reference is the same process, same state, same cores as the PD leg.
start router-pcolo 30740 "$BIN" router --worker-urls http://127.0.0.1:30702 --port 30740 \
  --prometheus-port 30741 --log-level warn
start router-tcolo 30750 "$BIN" router --worker-urls http://127.0.0.1:30704 --port 30750 \
  --prometheus-port 30751 --log-level warn
start router-colo 30720 "$BIN" router --worker-urls http://127.0.0.1:30701 --port 30720 \
  --prometheus-port 30721 --log-level warn
bench() { "$BIN" bench serve --tokenizer "$WORK/m" "$@"; }
pick() { grep -E "$1" | tr -s ' ' | sed 's/^ //'; }
port_of() { case $1 in colo) echo 30720;; pd) echo 30710;; tcp) echo 30730;; esac; }
echo "# model $SIZE, page 64, pinned: ${PIN:-no}, load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Paired: each round sends fresh prompts (128 tokens, then 1024; 1 output token, so the answer time is the
# TTFT; a new prompt per request, so no prefix cache hit) in rotating order to: the prefill server
# colocated (no bootstrap fields) and the PD pair, same-host and forced-TCP alike. The median of
# the per-round differences is what PD adds, the load's swings between rounds cancelled out.
echo "## TTFT added by PD, paired (concurrency 1, 1 out; 128-token prompts x ${PAIRS_SHORT:-40} rounds, 1024-token x ${PAIRS:-16})"
python3 - "${PAIRS_SHORT:-40}" "${PAIRS:-16}" "$WORK" <<'PY'
import json, random, statistics, sys, time, urllib.request
rng = random.Random(11)
ports = {"colo@prefill": 30740, "pd": 30710, "colo@prefill-tcp": 30750, "tcp": 30730}
def ask(port, n):
    ids = [rng.randrange(3, 500) for _ in range(n)]
    body = json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1, "ignore_eos": True}}).encode()
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate", body, {"Content-Type": "application/json"})) as r:
        v = json.load(r)
    assert v["meta_info"]["finish_reason"]["type"] != "abort", v
    return (time.perf_counter() - t) * 1000
med = statistics.median
def counters(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    val = {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l.startswith("sglang:pd_")}
    return [val.get(f"sglang:pd_{k}", 0.0) for k in ("transfers_total", "transfer_bytes_total", "transfer_seconds_total", "transfers_same_host_total", "received_transfers_total", "receive_seconds_total")]
for plen, rounds in ((128, int(sys.argv[1])), (1024, int(sys.argv[2]))):
    before = {p: counters(p) for p in (30702, 30704, 30703, 30705)}
    ms = {k: [] for k in ports}
    order = list(ports)
    for i in range(rounds):
        for k in order[i % 4:] + order[:i % 4]:
            ms[k].append(ask(ports[k], plen))
    print(f"{plen} tokens:", "  ".join(f"{k} {med(v):.1f}" for k, v in ms.items()), "(median ms)")
    for k, ref in (("pd", "colo@prefill"), ("tcp", "colo@prefill-tcp")):
        d = [a - b for a, b in zip(ms[k], ms[ref])]
        q = statistics.quantiles(d, n=4)
        print(f"  {k} - {ref}: median {med(d):+.1f} ms (quartiles {q[0]:+.1f} / {q[2]:+.1f})")
    for name, port, dport in (("pd", 30702, 30703), ("tcp", 30704, 30705)):
        n, b, t, l, _, _ = (a - z for a, z in zip(counters(port), before[port]))
        dn, dt = (a - z for a, z in list(zip(counters(dport), before[dport]))[4:])
        print(f"  KV transfer ({name}): {n:.0f} transfers ({l:.0f} same-host), {b / n / 2**20:.3f} MiB each, "
              f"{t / n * 1000:.2f} ms each (header to ACK at the prefill) -> {b / t / 1e9:.2f} GB/s; "
              f"decode side header to ACK {dt / max(dn, 1) * 1000:.2f} ms each")
        if plen == 1024:
            open(f"{sys.argv[3]}/mib", "w").write(str(max(1, round(b / n / 2**20))))
PY
m() { curl -s localhost:$1/metrics | awk -v k="sglang:$2" '$1 == k {print $2}'; }
MB=$(cat "$WORK/mib")
echo "decode connections opened: pd $(m 30703 pd_bootstrap_connections_total), tcp $(m 30705 pd_bootstrap_connections_total)"
echo "## raw copies at one 1024-token transfer's size ($MB MiB), 9 rounds on one connection / buffer pair"
"$BIN" bench store --role cma-copy --copy-mb $MB --batch-bytes-mb 1 --rounds 9 2> /dev/null | tail -n 2
"$BIN" bench store --role tcp-copy --copy-mb $MB --batch-bytes-mb $MB --rounds 9 2> /dev/null | tail -n 1
"$BIN" bench store --role tcp-copy --copy-mb 1024 2> /dev/null | tail -n 1
[ "${ITL:-1}" = 0 ] && exit 0
echo "## decode ITL under mixed load (decode: 64 in / 128 out x 4 at a time; prefills: 2048 in / 1 out)"
for mode in colo pd; do
  port=$(port_of $mode)
  bench --base-url http://127.0.0.1:$port --num-prompts 16 --random-input-len 2048 --random-output-len 1 \
    --max-concurrency 2 --seed 9 > /dev/null & LOAD=$!
  printf "%-5s " $mode
  bench --base-url http://127.0.0.1:$port --num-prompts 8 --random-input-len 64 --random-output-len 128 \
    --max-concurrency 4 --seed 8 | pick "Median ITL|P99 ITL|Mean ITL" | tr '\n' ' '
  echo
  wait $LOAD || true
done
