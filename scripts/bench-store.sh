#!/usr/bin/env bash
# Runs the real Mooncake Store (0.3.13.post1, installed into a venv under /tmp) and then Strata on the
# same workload (../shared/peers/mooncake_store_bench.py vs `strata bench store`), one after the other,
# in both shapes (store process + separate client; colocated), plus a plain single-stream loopback
# TCP copy, and prints Strata/Mooncake ratios. The separate-client shape runs twice per system: with
# its default same-host path (Mooncake auto-enables a memcpy path on one host; Strata uses its Unix
# socket + cross-memory copies) and with TCP forced (Mooncake --no-memcpy, STRATA_SAME_HOST=0), where
# every byte crosses the loopback TCP stack.
#
#   scripts/bench-store.sh            # everything
#   SKIP_MOONCAKE=1 scripts/bench-store.sh
#   STRATA_DEVICE_DIR=/dev/shm scripts/bench-store.sh   # store the pages on tmpfs instead of disk
#   STRATA_WRITE_BACK=1GiB scripts/bench-store.sh        # Strata acknowledges puts from DRAM
#                                                       # (durable at the next sync), like Mooncake
#
# Everything binds 127.0.0.1; every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=${PEERS:-$ROOT/../shared/peers}
[ -f "$PEERS/mooncake_store_bench.py" ] || PEERS=/work/shared/peers
VENV=${MOONCAKE_VENV:-/tmp/mooncake-env}
OUT=${OUT:-/tmp/strata-bench-store}
DEVDIR=${STRATA_DEVICE_DIR:-$OUT}
WB=${STRATA_WRITE_BACK:-0}
rm -rf "$OUT" && mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

if [ -z "${STRATA_BIN:-}" ]; then
  cargo build --release -q -p strata-tools
  STRATA_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/strata
fi
echo "machine: $(nproc) vCPU, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); strata write-back: $WB"

# ---------------------------------------------------------------- Mooncake
if [ -z "${SKIP_MOONCAKE:-}" ]; then
  if [ ! -x "$VENV/bin/mooncake_master" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q mooncake-transfer-engine-non-cuda==0.3.13.post1
  fi
  export MC_TCP_BIND_ADDRESS=127.0.0.1
  "$VENV/bin/mooncake_master" --enable_http_metadata_server=true --http_metadata_server_host=127.0.0.1 \
      --rpc_address=127.0.0.1 --metrics_host=127.0.0.1 > "$OUT/mc-master.log" 2>&1 &
  PIDS+=($!); MCM=$!
  wait_port 50051; wait_port 8080
  "$VENV/bin/python" "$PEERS/mooncake_store_bench.py" --role server --segment-mb 1024 --serve-seconds 300 \
      > "$OUT/mc-server.log" 2>&1 &
  PIDS+=($!); MCS=$!
  sleep 3
  echo "== Mooncake: store process + separate client (TCP)"
  "$VENV/bin/python" "$PEERS/mooncake_store_bench.py" --role client --verify | tee "$OUT/mc-client.txt"
  echo "== Mooncake: store process + separate client, Transfer Engine TCP forced (--no-memcpy)"
  "$VENV/bin/python" "$PEERS/mooncake_store_bench.py" --role client --verify --no-memcpy | tee "$OUT/mc-client-tcp.txt"
  kill $MCS 2>/dev/null || true
  echo "== Mooncake: colocated (single)"
  "$VENV/bin/python" "$PEERS/mooncake_store_bench.py" --role single --verify | tee "$OUT/mc-single.txt"
  kill $MCM 2>/dev/null || true
  sleep 1
fi

# ---------------------------------------------------------------- Strata
"$STRATA_BIN" master --rpc-port 50051 --metrics-port 9003 --state-file "$OUT/master.json" \
    > "$OUT/st-master.log" 2>&1 &
PIDS+=($!); STM=$!
wait_port 50051
"$STRATA_BIN" store --master 127.0.0.1:50051 --device "$DEVDIR/strata-store.dev" --capacity 2GiB \
    --memory 1GiB --write-back "$WB" > "$OUT/st-store.log" 2>&1 &
PIDS+=($!); STS=$!
# Ready once registered (a write-back node first maps its buffer memory).
for _ in $(seq 300); do grep -q "strata store ready" "$OUT/st-store.log" && break; sleep 0.1; done
sleep 0.5
echo "== Strata: store process + separate client (TCP)"
"$STRATA_BIN" bench store --role client --master 127.0.0.1:50051 --verify | tee "$OUT/st-client.txt"
echo "== Strata: store process + separate client, TCP forced (STRATA_SAME_HOST=0)"
STRATA_SAME_HOST=0 "$STRATA_BIN" bench store --role client --master 127.0.0.1:50051 --verify | tee "$OUT/st-client-tcp.txt"
# The store node leaves the membership on SIGTERM; wait for it, so that the colocated run's client
# does not place keys on a node that is going away.
kill $STS 2>/dev/null || true
wait $STS 2>/dev/null || true
echo "== Strata: colocated (single)"
"$STRATA_BIN" bench store --role single --master 127.0.0.1:50051 --device "$DEVDIR/strata-single.dev" \
    --write-back "$WB" --verify | tee "$OUT/st-single.txt"
kill $STM 2>/dev/null || true
rm -f "$DEVDIR/strata-store.dev" "$DEVDIR/strata-single.dev"

echo "== plain single-stream loopback TCP copy"
"$STRATA_BIN" bench store --role tcp-copy | tee "$OUT/tcp-copy.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- ratios
python3 - "$OUT" <<'PY'
import os, re, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return {}
    r = {}
    for line in open(p):
        f = line.split()
        if len(f) >= 10 and f[0].isdigit():
            r[int(f[0])] = dict(put=float(f[2]), get=float(f[3]), ex=float(f[6]),
                                p1=[float(x) for x in re.findall(r"[\d.]+", " ".join(f[7:-1]))])
    return r
copy = re.search(r"= ([\d.]+) GB/s", open(os.path.join(out, "tcp-copy.txt")).read())
copy = float(copy.group(1)) if copy else float("nan")
for shape in ("client", "client-tcp", "single"):
    mc, st = rows(f"mc-{shape}.txt"), rows(f"st-{shape}.txt")
    print(f"\n-- {shape}: Strata/Mooncake ratios (>1 = Strata better; latency ratios are Mooncake/Strata)")
    print(f"{'size':>8} {'PUT x':>7} {'GET x':>7} {'put p99 x':>9} {'get p99 x':>9} {'PUT/copy':>9} {'GET/copy':>9}")
    for size in sorted(st):
        s = st[size]; m = mc.get(size)
        def ratio(a, b):
            return f"{a / b:.2f}" if b else "-"
        put_x = ratio(s["put"], m["put"]) if m else "-"
        get_x = ratio(s["get"], m["get"]) if m else "-"
        p99p = ratio(m["p1"][1], s["p1"][1]) if m else "-"
        p99g = ratio(m["p1"][3], s["p1"][3]) if m else "-"
        print(f"{size:>8} {put_x:>7} {get_x:>7} {p99p:>9} {p99g:>9} {s['put'] / copy:>9.2f} {s['get'] / copy:>9.2f}")
print(f"\nloopback single-stream TCP copy: {copy:.2f} GB/s")
PY
