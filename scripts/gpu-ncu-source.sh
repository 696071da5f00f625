#!/usr/bin/env bash
# Nsight Compute stall sampling per SASS instruction of one kernel: which instructions the warps
# wait at, and why (the source page's stall_* columns), for reading a kernel's loop against its
# machine code. Runs one launch of the first kernel matching KERNEL_REGEX in
# `strata gpu bench --only prefill` (8K-token prompt of the Llama-3.1-8B shape, 2 layers).
# Usage: scripts/gpu-ncu-source.sh KERNEL_REGEX OUTDIR; env STRATA, NCU_LEN (default 8192), NCU_CMD
# (another command to profile, e.g. "$STRATA gpu bench --only sampling").
# Writes OUTDIR/ncu-source.csv (one row per instruction) and OUTDIR/ncu-source.txt (the
# summary of scripts/ncu_stalls.py).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
REGEX=${1:?kernel regex}
OUT=${2:-/tmp/ncu-source}
LEN=${NCU_LEN:-8192}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee "$OUT/ncu-source.txt"; exit 0; }
. scripts/gpu-env.sh
timeout 200 "$NCU" --section SourceCounters --section WarpStateStats --section SpeedOfLight \
  -k "regex:$REGEX" -c 1 -o "$OUT/ncu-source" -f \
  ${NCU_CMD:-"$STRATA" gpu bench --only prefill --prefill-lens "$LEN" --decode-batches 1 --layers 2} > "$OUT/ncu-run.log" 2>&1
"$NCU" -i "$OUT/ncu-source.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu-source.csv" 2>&1
rm -f "$OUT/ncu-source.ncu-rep"
python3 scripts/ncu_stalls.py "$OUT/ncu-source.csv" | tee "$OUT/ncu-source.txt"
