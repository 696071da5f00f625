#!/usr/bin/env bash
# Runs fio and then `strata bench engine` on the same file system, block size and queue depth, one
# after the other, and prints engine/fio ratios. Usage:
#   scripts/bench-engine-vs-fio.sh [DIR] [SIZES...]        (default: . and 64k 256k 1m 4m)
# Environment: QD (default 16), TOTAL (bytes written per size, default 1g), STRATA (binary path).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.}; shift || true
SIZES=${*:-64k 256k 1m 4m}
QD=${QD:-16}
TOTAL=${TOTAL:-1g}
STRATA=${STRATA:-target/release/strata}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
[ -x "$STRATA" ] || cargo build --release -q -p strata-tools
FILE="$DIR/.fio-bench.dat"
STORE="$DIR/.strata-bench.dat"
trap 'rm -f "$FILE" "$STORE"' EXIT

bytes() { python3 -c "import sys;u={'k':1<<10,'m':1<<20,'g':1<<30};s=sys.argv[1].lower();print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))" "$1"; }
fio_bw() { # job-file rw-key
  FILE=$FILE BS=$BS QD=$QD SIZE=$TOTAL RUNTIME=${RUNTIME:-8} fio --output-format=json "fio-profiles/$1.fio" \
    | python3 -c "import json,sys;j=json.load(sys.stdin);print(j['jobs'][0]['$2']['bw_bytes']/1e9)"
}

printf '%-6s %10s %10s %7s %10s %10s %7s %9s %9s\n' size fio_write put ratio fio_rread get ratio p50_us p99_us
for BS in $SIZES; do
  rm -f "$FILE" "$STORE"
  W=$(fio_bw seq-write write)
  R=$(fio_bw rand-read read)
  rm -f "$FILE"
  VB=$(bytes "$BS"); CAP=$(( $(bytes "$TOTAL") * 2 + (256 << 20) ))
  SEG=$(( VB * 8 > 64 << 20 ? VB * 8 : 64 << 20 ))
  J=$("$STRATA" bench engine --path "$STORE" --capacity "$CAP" --segment-size "$SEG" --value-size "$VB" \
        --total "$TOTAL" --threads 2 --batch $((QD / 2)) --read-passes 1 --json)
  rm -f "$STORE"
  python3 - "$BS" "$W" "$R" "$J" <<'PY'
import json, sys
bs, w, r, j = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
print(f"{bs:<6} {w:10.3f} {j['put_gbps']:10.3f} {j['put_gbps']/w:7.2f} {r:10.3f} {j['get_gbps']:10.3f} {j['get_gbps']/r:7.2f} {j['get_p50_us']:9.1f} {j['get_p99_us']:9.1f}")
PY
done
echo "(GB/s; put/get count value bytes; QD=$QD; engine: 2 threads x batch $((QD / 2)); recovery in --json output)"
