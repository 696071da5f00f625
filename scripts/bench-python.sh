#!/usr/bin/env bash
# The Python client side by side, in one run, on the peer script's workload
# (../shared/peers/mooncake_store_bench.py, its import line rewritten for Strata at run time):
#   1. Mooncake's own Python client (mooncake-transfer-engine-non-cuda 0.3.13.post1) on its master + store process
#   2. Strata's Python client (`from strata import MooncakeDistributedStore`) on `strata master` + `strata store`
#   3. Strata's Rust client (`strata bench store`, the same workload and columns) on the same store
# in the "store process + separate client" shape, then the colocated shape (`--role single`), and
# prints the ratios Strata Python / Mooncake Python and Strata Python / Strata Rust.
# Then the Python layer against the Rust client alone (the Python side with the Rust bench's buffer
# memory: scripts/bench_python_layer.py), in ROUNDS alternating rounds (default 5) on a
# store node with a 1 GiB write-back buffer (puts acknowledged from DRAM, so that device latency does
# not swamp the difference): 1 MiB values (throughput, medians) and 4 KiB single-key put/get
# (--lat-ops 2000; the p50 a Python call adds, medians), the order of the two clients flipped every round.
#
#   scripts/bench-python.sh                  # builds the strata binary and the wheel if needed
#   ROUND_MB=64 scripts/bench-python.sh      # smaller rounds (default 256, the peer script's)
#   SKIP_MOONCAKE=1 scripts/bench-python.sh
#   STRATA_WRITE_BACK=1GiB ROUNDS=0 scripts/bench-python.sh  # Strata acknowledges puts from DRAM (its store
#                                                           # node and the colocated segments), as Mooncake
#                                                           # does; ROUNDS=0 skips the layer comparison
#
# Everything binds 127.0.0.1; every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=${PEERS:-$ROOT/../shared/peers}
[ -f "$PEERS/mooncake_store_bench.py" ] || PEERS=/work/shared/peers
VENV=${PY_VENV:-/tmp/strata-py-bench-env}
OUT=${OUT:-/tmp/strata-bench-python}
ROUND_MB=${ROUND_MB:-256}
ROUNDS=${ROUNDS:-5}
WB=${STRATA_WRITE_BACK:-0}
export STRATA_WRITE_BACK=$WB   # the Python client's colocated segment reads it
rm -rf "$OUT" && mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${STRATA_BIN:-}" ]; then
  cargo build --release -q -p strata-tools
  STRATA_BIN=$TARGET/release/strata
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'maturin>=1.5,<2' mooncake-transfer-engine-non-cuda==0.3.13.post1
fi
(cd engine/python && "$VENV/bin/maturin" build --release -o "$OUT/wheels" > "$OUT/maturin.log" 2>&1)
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$OUT"/wheels/strata_kv-*.whl
PY=$VENV/bin/python
IMPORT="from mooncake.store import MooncakeDistributedStore"
sed "s/^\(\s*\)$IMPORT/\1from strata import MooncakeDistributedStore/" "$PEERS/mooncake_store_bench.py" > "$OUT/bench_strata.py"
grep -q "from strata import MooncakeDistributedStore" "$OUT/bench_strata.py"
ARGS=(--verify --round-mb "$ROUND_MB")
echo "machine: $(nproc) vCPU, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD); strata write-back: $WB"

if [ -z "${SKIP_MOONCAKE:-}" ]; then
  export MC_TCP_BIND_ADDRESS=127.0.0.1
  "$VENV/bin/mooncake_master" --enable_http_metadata_server=true --http_metadata_server_host=127.0.0.1 \
      --rpc_address=127.0.0.1 --metrics_host=127.0.0.1 > "$OUT/mc-master.log" 2>&1 &
  PIDS+=($!); MCM=$!
  wait_port 50051; wait_port 8080
  $PY "$PEERS/mooncake_store_bench.py" --role server --segment-mb 1024 --serve-seconds 600 > "$OUT/mc-server.log" 2>&1 &
  PIDS+=($!); MCS=$!
  sleep 3
  echo "== Mooncake Python client: store process + separate client"
  $PY "$PEERS/mooncake_store_bench.py" --role client "${ARGS[@]}" 2>/dev/null | tee "$OUT/mc-client.txt"
  kill $MCS 2>/dev/null || true
  echo "== Mooncake Python client: colocated (single)"
  $PY "$PEERS/mooncake_store_bench.py" --role single "${ARGS[@]}" 2>/dev/null | tee "$OUT/mc-single.txt"
  kill $MCM 2>/dev/null || true
  sleep 1
fi

"$STRATA_BIN" master --rpc-port 50051 --metrics-port 9003 --state-file "$OUT/master.json" > "$OUT/st-master.log" 2>&1 &
PIDS+=($!); STM=$!
wait_port 50051
"$STRATA_BIN" store --master 127.0.0.1:50051 --device "$OUT/strata-store.dev" --capacity 2GiB --memory 1GiB \
    --write-back "$WB" > "$OUT/st-store.log" 2>&1 &
PIDS+=($!); STS=$!
for _ in $(seq 300); do grep -q "strata store ready" "$OUT/st-store.log" && break; sleep 0.1; done
sleep 0.5
echo "== Strata Python client: store process + separate client"
$PY "$OUT/bench_strata.py" --role client "${ARGS[@]}" | tee "$OUT/py-client.txt"
echo "== Strata Rust client: store process + separate client"
"$STRATA_BIN" bench store --role client --master 127.0.0.1:50051 "${ARGS[@]}" | tee "$OUT/rs-client.txt"
kill $STS 2>/dev/null || true
wait $STS 2>/dev/null || true
echo "== Strata Python client: colocated (single)"
STRATA_SEGMENT_DIR=$OUT $PY "$OUT/bench_strata.py" --role single --segment-mb 1024 "${ARGS[@]}" | tee "$OUT/py-single.txt"
echo "== Strata Rust client: colocated (single)"
"$STRATA_BIN" bench store --role single --master 127.0.0.1:50051 --device "$OUT/strata-single.dev" --write-back "$WB" \
    "${ARGS[@]}" \
    | tee "$OUT/rs-single.txt"

# The colocated Rust client's segment left without unregistering: let the master time it out.
sleep 4
echo "== Python layer vs Rust client: $ROUNDS alternating rounds, separate client, write-back node"
"$STRATA_BIN" store --master 127.0.0.1:50051 --device "$OUT/strata-wb.dev" --capacity 2GiB --memory 1GiB \
    --write-back 1GiB > "$OUT/st-store-wb.log" 2>&1 &
PIDS+=($!); STW=$!
for _ in $(seq 300); do grep -q "strata store ready" "$OUT/st-store-wb.log" && break; sleep 0.1; done
sleep 0.5
# Small-op rounds first (a 1 MiB round leaves the node's flusher busy), the order flipped every round.
# The Python side runs scripts/bench_python_layer.py: the same workload and columns with the Rust
# bench's memory (huge pages, faulted in before timing), so that only the layer differs.
py_4k() { $PY scripts/bench_python_layer.py --sizes 4096 --round-mb 16 --lat-ops 2000 > "$OUT/ab-py-4k-$1.txt"; }
rs_4k() { "$STRATA_BIN" bench store --role client --master 127.0.0.1:50051 --sizes 4096 --round-mb 16 --lat-ops 2000 \
            > "$OUT/ab-rs-4k-$1.txt"; }
py_1m() { $PY scripts/bench_python_layer.py --verify --sizes 1048576 --lat-ops 50 > "$OUT/ab-py-1m-$1.txt"; }
rs_1m() { "$STRATA_BIN" bench store --role client --master 127.0.0.1:50051 --verify --sizes 1048576 --lat-ops 50 \
            > "$OUT/ab-rs-1m-$1.txt"; }
for size in 4k 1m; do
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then py_$size $r; rs_$size $r; else rs_$size $r; py_$size $r; fi
  done
  echo "$size rounds done (load $(cut -d' ' -f1 /proc/loadavg))"
done
kill $STW 2>/dev/null || true
wait $STW 2>/dev/null || true
kill $STM 2>/dev/null || true
rm -f "$OUT"/*.dev "$OUT"/strata-py-segment-*
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$ROUNDS" <<'PY'
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
            lat = [float(x) for x in re.findall(r"[\d.]+", " ".join(f[7:-1]))]
            r[int(f[0])] = dict(put=float(f[2]), get=float(f[3]), p1=lat, fails=int(f[-1]))
    return r
def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"
for shape in ("client", "single"):
    mc, py, rs = rows(f"mc-{shape}.txt"), rows(f"py-{shape}.txt"), rows(f"rs-{shape}.txt")
    print(f"\n-- {shape}: Strata Python vs Mooncake Python (x > 1: Strata faster) and vs Strata Rust")
    print(f"{'size':>8} {'PUT py/mc':>9} {'GET py/mc':>9} {'PUT py/rs':>9} {'GET py/rs':>9} "
          f"{'put +us p50':>11} {'get +us p50':>11}")
    for size in sorted(py):
        p, m, r = py[size], mc.get(size), rs.get(size)
        print(f"{size:>8} {ratio(p['put'], m['put']) if m else '-':>9} {ratio(p['get'], m['get']) if m else '-':>9} "
              f"{ratio(p['put'], r['put']) if r else '-':>9} {ratio(p['get'], r['get']) if r else '-':>9} "
              f"{p['p1'][0] - r['p1'][0] if r else float('nan'):>11.0f} {p['p1'][2] - r['p1'][2] if r else float('nan'):>11.0f}")

import statistics as st
rounds = int(sys.argv[2])
def col(kind, size, key, i=None):
    vals = []
    for r in range(1, rounds + 1):
        row = rows(f"ab-{kind}-{r}.txt").get(size)
        if row:
            vals.append(row[key] if i is None else row[key][i])
    return vals
if rounds == 0:
    sys.exit(0)
fails = sum(rows(f"ab-{k}-{r}.txt").get(s, {}).get("fails", 1)
            for k, s in (("py-1m", 1048576), ("rs-1m", 1048576), ("py-4k", 4096), ("rs-4k", 4096))
            for r in range(1, rounds + 1))
print(f"\n-- Python layer vs Rust client, separate client, write-back node: medians of {rounds} alternating rounds (failed ops: {fails})")
for what, key in (("PUT GB/s", "put"), ("GET GB/s", "get")):
    py, rs = col("py-1m", 1048576, key), col("rs-1m", 1048576, key)
    print(f"1 MiB {what}: python {st.median(py):.2f} {py}, rust {st.median(rs):.2f} {rs}, python/rust {st.median(py) / st.median(rs):.2f}")
for what, i in (("put", 0), ("get", 2)):
    py, rs = col("py-4k", 4096, "p1", i), col("rs-4k", 4096, "p1", i)
    print(f"4 KiB 1-key {what} p50 us: python {st.median(py):.0f} {py}, rust {st.median(rs):.0f} {rs}, added {st.median(py) - st.median(rs):.0f} us")
PY
