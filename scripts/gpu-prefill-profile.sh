#!/usr/bin/env bash
# Where the 8K prefill forward's time goes inside the forward (not each op alone): runs
# `strata gpu bench --only prefill` at PROFILE_LEN tokens (default 8192) under Nsight Systems when
# `nsys` exists, splits the kernel trace into forwards at the `embedding` kernel, and prints for
# the fastest whole forward the time per kernel class (GEMM, attention, row ops, ...) and the idle
# gaps between kernels; beside it, the SM clock and power sampled by nvidia-smi during the run
# (does the clock drop under a sustained tensor-core load?).
# Usage: scripts/gpu-prefill-profile.sh [OUTDIR]; env STRATA, PROFILE_LEN.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
LEN=${PROFILE_LEN:-8192}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader -lms 100 \
  > "$OUTDIR/profile-smi.csv" 2>/dev/null & smi=$!
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  "$NSYS" profile -t cuda --force-overwrite true -o "$OUTDIR/prefill" "$STRATA" gpu bench --only prefill \
    --prefill-lens "$LEN" --decode-batches 1 > "$OUTDIR/profile-bench.log" 2>&1
  "$NSYS" stats -q --report cuda_gpu_trace --format csv --output "$OUTDIR/prefill" "$OUTDIR/prefill.nsys-rep" \
    > /dev/null 2>&1
  python3 scripts/prefill_trace_split.py "$OUTDIR"/prefill_cuda_gpu_trace.csv
else
  echo "no nsys on this machine; the bench alone:"
  "$STRATA" gpu bench --only prefill --prefill-lens "$LEN" --decode-batches 1 > "$OUTDIR/profile-bench.log" 2>&1
fi
kill $smi 2>/dev/null
grep -E "^prefill|forward split|attention alone|row ops|GEMMs" "$OUTDIR/profile-bench.log" | cut -c1-300
python3 - "$OUTDIR/profile-smi.csv" <<'PY'
import sys
rows = [l.split(", ") for l in open(sys.argv[1]) if l.count(",") >= 4]
sm = [float(r[1].split()[0]) for r in rows if r[1].split()[0].replace('.', '').isdigit()]
pw = [float(r[3].split()[0]) for r in rows if r[3].split()[0].replace('.', '').isdigit()]
if sm:
    busy = [s for s, p in zip(sm, pw) if p > 250]
    print(f"smi: {len(sm)} samples; SM clock min {min(sm):.0f} max {max(sm):.0f} MHz; "
          f"under load (>250 W) median {sorted(busy)[len(busy)//2] if busy else float('nan'):.0f} MHz; power max {max(pw):.0f} W")
PY
