#!/usr/bin/env bash
# Router benchmark: the same fixed-answer nginx mock workers measured directly, through
# sglang-router 0.3.2 and through `strata router`, one after the other in one run, in regular and
# PD mode. Prints p50/p99 latency at 1 connection, req/s and latency at 32 connections, resident
# memory, and the ratios against sglang-router.
#
# Needs root for apt-get (nginx-light, wrk) and network access to PyPI (sglang-router) on first
# use. Env: PEERS (default ../shared/peers), STRATA (the strata binary), DUR (wrk duration, 8s),
# CONNS (32).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
STRATA=${STRATA:-$TARGET/release/strata}
DUR=${DUR:-8s}
CONNS=${CONNS:-32}
VENV=/tmp/router-env
WORK=/tmp/mock-worker
LUA=$PEERS/wrk-generate.lua

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sglang_router' 2>/dev/null; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q sglang-router==0.3.2
fi
if [ ! -x "$STRATA" ]; then
    (cd "$ROOT" && cargo build --release -p strata-tools)
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

# Two mock workers (prefill 31901, decode 31902 in PD mode) from the peers' config.
mkdir -p "$WORK"
if [ -f "$WORK/nginx.pid" ] && kill -0 "$(cat "$WORK/nginx.pid")" 2>/dev/null; then
    kill "$(cat "$WORK/nginx.pid")" && sleep 0.5 # a mock left by an earlier run
fi
sed 's/listen 127.0.0.1:31901;/listen 127.0.0.1:31901; listen 127.0.0.1:31902;/' \
    "$PEERS/mock-worker-nginx.conf" > "$WORK/nginx-bench.conf"
nginx -c "$WORK/nginx-bench.conf"
sleep 0.5

wait_http() { # url
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "not up: $1" >&2
    return 1
}

to_us() { # "65.00us" | "1.20ms" | "1.00s" -> microseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
        else print v }'
}

# run_wrk URL CONNS -> "p50_us p99_us rps"
run_wrk() {
    local out
    out=$(wrk -t1 -c"$2" -d"$DUR" --latency -s "$LUA" "$1/generate")
    local p50 p99 rps
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    echo "$(to_us "$p50") $(to_us "$p99") $rps"
}

rss_mb() { # pid -> resident MB of the process and its children
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)))
    done
    awk -v k="$total" 'BEGIN {printf "%.1f", k / 1024}'
}

declare -A R
measure() { # name url pid
    wrk -t1 -c4 -d1s -s "$LUA" "$2/generate" >/dev/null # warm-up
    read -r p50 p99 _ <<<"$(run_wrk "$2" 1)"
    read -r _ _ rps1 <<<"$(run_wrk "$2" 1)"
    read -r cp50 cp99 rps <<<"$(run_wrk "$2" "$CONNS")"
    local rss="-"
    [ -n "$3" ] && rss=$(rss_mb "$3")
    R[$1]="$p50 $p99 $rps1 $rps $cp50 $cp99 $rss"
    printf '%-22s p50 %8.1f us  p99 %8.1f us  1c %8.0f req/s | %sc %8.0f req/s p50 %8.1f us p99 %8.1f us | RSS %s MB\n' \
        "$1" "$p50" "$p99" "$rps1" "$CONNS" "$rps" "$cp50" "$cp99" "$rss"
}

start() { # command... ; sets PID
    "$@" >"$WORK/router.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}

stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    sleep 1
}

W1=http://127.0.0.1:31901
W2=http://127.0.0.1:31902
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r); wrk $DUR per point"
for mode in regular pd; do
    echo "## $mode mode"
    measure "$mode/direct" "$W2" ""
    if [ "$mode" = regular ]; then
        SG_ARGS=(--worker-urls "$W1")
        ST_ARGS=(--worker-urls "$W1")
    else
        SG_ARGS=(--pd-disaggregation --prefill "$W1" --decode "$W2")
        ST_ARGS=(--pd-disaggregation --prefill "$W1" --decode "$W2")
    fi
    start "$VENV/bin/python" -m sglang_router.launch_router "${SG_ARGS[@]}" \
        --host 127.0.0.1 --port 8001 --log-level warn --prometheus-port 29000
    wait_http http://127.0.0.1:8001/health
    sleep 1
    measure "$mode/sglang-router" http://127.0.0.1:8001 "$PID"
    stop
    start "$STRATA" router "${ST_ARGS[@]}" \
        --host 127.0.0.1 --port 8002 --log-level warn --prometheus-port 29001
    wait_http http://127.0.0.1:8002/health
    sleep 1
    measure "$mode/strata" http://127.0.0.1:8002 "$PID"
    stop
    read -r d50 d99 _ <<<"${R[$mode/direct]}"
    read -r s50 s99 _ srps _ _ srss <<<"${R[$mode/sglang-router]}"
    read -r t50 t99 _ trps _ _ trss <<<"${R[$mode/strata]}"
    awk -v d50="$d50" -v d99="$d99" -v s50="$s50" -v s99="$s99" -v t50="$t50" -v t99="$t99" \
        -v srps="$srps" -v trps="$trps" -v srss="$srss" -v trss="$trss" -v m="$mode" 'BEGIN {
        printf "%s: added p50 sglang %.0f us, strata %.0f us (ratio %.2f); added p99 sglang %.0f us, strata %.0f us (ratio %.2f)\n",
            m, s50 - d50, t50 - d50, (t50 - d50) / (s50 - d50), s99 - d99, t99 - d99, (t99 - d99) / (s99 - d99)
        printf "%s: req/s strata/sglang %.2fx; RSS sglang %s MB, strata %s MB\n", m, trps / srps, srss, trss
    }'
done
