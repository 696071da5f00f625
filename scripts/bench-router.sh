#!/usr/bin/env bash
# Router benchmark: the same fixed-answer nginx mock workers measured directly, through
# sglang-router 0.3.2 and through `strata router`, in one run, regular and PD mode.
#
# Both routers run side by side (on ports 8001 and 8002) and are loaded one at a time, in
# interleaved rounds (direct, sglang-router, strata, direct, ...), so that a noisy machine hits
# all three alike; the medians of the rounds are reported. Per point: wrk with 1 connection
# (p50/p99 latency), wrk with $CONNS connections (req/s, p50/p99), the router's CPU time per
# request during the $CONNS-connection run (from /proc, a noise-robust cost measure), and its
# resident memory at the end.
#
# Needs root for apt-get (nginx-light, wrk) and PyPI access (sglang-router) on first use.
# Env: PEERS (default ../shared/peers), STRATA (binary), DUR (wrk duration, 5s), CONNS (32),
# ROUNDS (3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
STRATA=${STRATA:-$TARGET/release/strata}
DUR=${DUR:-5s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
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
    "$PEERS/mock-worker-nginx.conf" >"$WORK/nginx-bench.conf"
nginx -c "$WORK/nginx-bench.conf"
sleep 0.5

wait_http() { # url
    for _ in $(seq 1 300); do
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

# run_wrk URL CONNS -> "p50_us p99_us rps requests"
run_wrk() {
    local out
    out=$(wrk -t1 -c"$2" -d"$DUR" --latency -s "$LUA" "$1/generate")
    local p50 p99 rps n
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$(to_us "$p50") $(to_us "$p99") $rps $n"
}

tree_pids() { echo "$1" $(pgrep -P "$1" || true); }
cpu_ticks() { # pid -> utime+stime of the process and its children, in clock ticks
    local t=0 p
    for p in $(tree_pids "$1"); do
        t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0)))
    done
    echo "$t"
}
rss_mb() {
    local total=0 p
    for p in $(tree_pids "$1"); do
        total=$((total + $(awk '/^VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)))
    done
    awk -v k="$total" 'BEGIN {printf "%.1f", k / 1024}'
}
HZ=$(getconf CLK_TCK)

declare -A VALS
measure() { # name url pid
    local p50 p99 rps1 n1 cp50 cp99 rps n t0 t1 cpu="-"
    wrk -t1 -c4 -d1s -s "$LUA" "$2/generate" >/dev/null # warm-up
    read -r p50 p99 rps1 n1 <<<"$(run_wrk "$2" 1)"
    [ -n "$3" ] && t0=$(cpu_ticks "$3")
    read -r cp50 cp99 rps n <<<"$(run_wrk "$2" "$CONNS")"
    if [ -n "$3" ]; then
        t1=$(cpu_ticks "$3")
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    fi
    printf '  %-14s 1c p50 %7.1f us p99 %8.1f us %7.0f req/s | %sc %7.0f req/s p50 %7.1f us p99 %8.1f us | CPU %s us/req\n' \
        "$1" "$p50" "$p99" "$rps1" "$CONNS" "$rps" "$cp50" "$cp99" "$cpu"
    VALS[$1]="${VALS[$1]:-} $p50:$p99:$rps:$cpu"
}

median() { # field-index values... -> median of that field
    local i=$1
    shift
    printf '%s\n' "$@" | awk -F: -v i="$i" '{print $i}' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'
}

W1=http://127.0.0.1:31901
W2=http://127.0.0.1:31902
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 $DUR per point, $ROUNDS rounds"
for mode in regular pd; do
    echo "## $mode mode"
    if [ "$mode" = regular ]; then
        ARGS=(--worker-urls "$W1")
    else
        ARGS=(--pd-disaggregation --prefill "$W1" --decode "$W2")
    fi
    "$VENV/bin/python" -m sglang_router.launch_router "${ARGS[@]}" \
        --host 127.0.0.1 --port 8001 --log-level warn --prometheus-port 29000 >"$WORK/sglang.log" 2>&1 &
    SG=$!
    PIDS+=("$SG")
    "$STRATA" router "${ARGS[@]}" \
        --host 127.0.0.1 --port 8002 --log-level warn --prometheus-port 29001 >"$WORK/strata.log" 2>&1 &
    ST=$!
    PIDS+=("$ST")
    wait_http http://127.0.0.1:8001/health
    wait_http http://127.0.0.1:8002/health
    sleep 1
    VALS=()
    for round in $(seq 1 "$ROUNDS"); do
        echo " round $round"
        measure direct "$W2" ""
        measure sglang-router http://127.0.0.1:8001 "$SG"
        measure strata http://127.0.0.1:8002 "$ST"
    done
    SRSS=$(rss_mb "$SG")
    TRSS=$(rss_mb "$ST")
    kill "$SG" "$ST" 2>/dev/null || true
    wait "$SG" "$ST" 2>/dev/null || true
    sleep 1
    # shellcheck disable=SC2086
    {
        d50=$(median 1 ${VALS[direct]}); d99=$(median 2 ${VALS[direct]}); drps=$(median 3 ${VALS[direct]})
        s50=$(median 1 ${VALS[sglang-router]}); s99=$(median 2 ${VALS[sglang-router]})
        srps=$(median 3 ${VALS[sglang-router]}); scpu=$(median 4 ${VALS[sglang-router]})
        t50=$(median 1 ${VALS[strata]}); t99=$(median 2 ${VALS[strata]})
        trps=$(median 3 ${VALS[strata]}); tcpu=$(median 4 ${VALS[strata]})
    }
    awk -v m="$mode" -v c="$CONNS" -v d50="$d50" -v d99="$d99" -v drps="$drps" \
        -v s50="$s50" -v s99="$s99" -v srps="$srps" -v scpu="$scpu" -v srss="$SRSS" \
        -v t50="$t50" -v t99="$t99" -v trps="$trps" -v tcpu="$tcpu" -v trss="$TRSS" 'BEGIN {
        printf "%s medians: direct p50 %.0f us p99 %.0f us, %.0f req/s at %d conns\n", m, d50, d99, drps, c
        printf "%s   sglang-router: p50 %.0f us (+%.0f), p99 %.0f us (+%.0f), %.0f req/s, %.1f CPU us/req, RSS %s MB\n", m, s50, s50 - d50, s99, s99 - d99, srps, scpu, srss
        printf "%s   strata router: p50 %.0f us (+%.0f), p99 %.0f us (+%.0f), %.0f req/s, %.1f CPU us/req, RSS %s MB\n", m, t50, t50 - d50, t99, t99 - d99, trps, tcpu, trss
        printf "%s   strata/sglang: added p50 %.2f, added p99 %.2f, req/s %.2fx, CPU/req %.2f, RSS %.2f\n", m, (t50 - d50) / (s50 - d50), (t99 - d99) / (s99 - d99), trps / srps, tcpu / scpu, trss / srss
    }'
done
