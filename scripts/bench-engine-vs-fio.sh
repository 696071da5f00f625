#!/usr/bin/env bash
# Runs fio and then `strata bench engine` on the same file system, block size and queue depth,
# alternating them ROUNDS times per size (the virtio disk here swings by 2x from one run to the next),
# and prints the medians and the engine/fio ratios of the medians. Usage:
#   scripts/bench-engine-vs-fio.sh [DIR] [SIZES...]        (default: . and 64k 256k 1m 4m)
# Environment: QD (default 16), TOTAL (bytes written per size, default 1g), ROUNDS (default 3),
# STRATA (binary path).
# fio's buffers are plain malloc'd 4 KiB pages by default; the engine maps its buffers as huge pages
# (see engine/src/io/buf.rs), so when hugetlb pages can be reserved (root) each round also runs
# fio's random read with --iomem=mmaphuge and prints that column and ratio too (the stricter peer).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.}; shift || true
SIZES=${*:-64k 256k 1m 4m}
QD=${QD:-16}
TOTAL=${TOTAL:-1g}
ROUNDS=${ROUNDS:-3}
STRATA=${STRATA:-target/release/strata}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
[ -x "$STRATA" ] || cargo build --release -q -p strata-tools
FILE="$DIR/.fio-bench.dat"
STORE="$DIR/.strata-bench.dat"
trap 'rm -f "$FILE" "$STORE"' EXIT

bytes() { python3 -c "import sys;u={'k':1<<10,'m':1<<20,'g':1<<30};s=sys.argv[1].lower();print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))" "$1"; }
HUGE_FIO=0
if [ -w /proc/sys/vm/nr_hugepages ]; then
  NEED=$(( QD * 4 + 16 ))  # 2 MiB pages for fio's QD buffers of up to 4 MiB, plus slack
  [ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$NEED" ] || echo "$NEED" > /proc/sys/vm/nr_hugepages
  [ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$NEED" ] && HUGE_FIO=1
fi
fio_bw() { # job-file rw-key [extra fio args]
  FILE=$FILE BS=$BS QD=$QD SIZE=$TOTAL fio --output-format=json "${@:3}" "fio-profiles/$1.fio" \
    | python3 -c "import json,sys;j=json.load(sys.stdin);print(j['jobs'][0]['$2']['bw_bytes']/1e9)"
}

engine() {
  "$STRATA" bench engine --path "$STORE" --capacity "$CAP" --segment-size "$SEG" --value-size "$VB" \
    --total "$TOTAL" --threads 2 --batch "${BATCH:-256}" --queue-depth $((QD / 2)) --read-passes 1 --json
}

echo "$(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); QD=$QD, $ROUNDS rounds, medians"
printf '%-6s %10s %10s %7s %10s %10s %7s %9s %9s %9s %11s %7s\n' size fio_write put ratio fio_rread get ratio p50_us p99_us recov_ms fio_rd_huge ratio
for BS in $SIZES; do
  VB=$(bytes "$BS"); CAP=$(( $(bytes "$TOTAL") * 2 + (256 << 20) ))
  SEG=$(( VB * 8 > 64 << 20 ? VB * 8 : 64 << 20 ))
  RESULTS=()
  for round in $(seq "$ROUNDS"); do
    rm -f "$FILE" "$STORE"
    # The virtual disk's throughput drifts within a round (bursts, host caching), so fio and the
    # engine take turns going first.
    fio_all() {
      W=$(fio_bw seq-write write); R=$(fio_bw rand-read read); H=0
      [ "$HUGE_FIO" = 1 ] && H=$(fio_bw rand-read read --iomem=mmaphuge)
      rm -f "$FILE"
    }
    if [ $((round % 2)) -eq 1 ]; then
      fio_all; J=$(engine); rm -f "$STORE"
    else
      J=$(engine); rm -f "$STORE"; fio_all
    fi
    RESULTS+=("$W $R $H $J")
  done
  python3 - "$BS" "${RESULTS[@]}" <<'PY'
import json, sys, statistics as st
bs, rows = sys.argv[1], sys.argv[2:]
w = st.median(float(r.split(' ', 3)[0]) for r in rows)
r = st.median(float(x.split(' ', 3)[1]) for x in rows)
h = st.median(float(x.split(' ', 3)[2]) for x in rows)
js = [json.loads(x.split(' ', 3)[3]) for x in rows]
m = lambda k: st.median(j[k] for j in js)
hs = f"{h:11.3f} {m('get_gbps')/h:7.2f}" if h > 0 else f"{'-':>11} {'-':>7}"
print(f"{bs:<6} {w:10.3f} {m('put_gbps'):10.3f} {m('put_gbps')/w:7.2f} {r:10.3f} {m('get_gbps'):10.3f} {m('get_gbps')/r:7.2f} {m('get_p50_us'):9.1f} {m('get_p99_us'):9.1f} {m('recovery_ms'):9.1f} {hs}")
PY
done
echo "(GB/s; put/get count value bytes; engine: io_uring, 2 threads, batches of ${BATCH:-256} with $((QD / 2)) in flight per thread, reads into registered buffers)"
