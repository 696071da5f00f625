#!/usr/bin/env bash
# Nsight Compute look at the wgmma prefill attention kernel (8K-token prompt of the Llama-3.1-8B
# shape, one layer's launch): speed of light, warp stall reasons, pipe utilisation, issue slots.
# Usage: scripts/gpu-ncu-prefill.sh OUTFILE; env STRATA, NCU_LEN (default 8192).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTFILE=${1:-/tmp/ncu-prefill.txt}
LEN=${NCU_LEN:-8192}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee "$OUTFILE"; exit 0; }
. scripts/gpu-env.sh
sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats --section Occupancy --section LaunchStats"
timeout 240 "$NCU" $sections -k 'regex:paged_attention_wg' -c 1 \
  "$STRATA" gpu bench --only prefill --prefill-lens "$LEN" --decode-batches 1 --layers 2 > "$OUTFILE" 2>&1
grep -vE "^==PROF==|^prefill|^  prefill" "$OUTFILE" | grep -E "paged_attention|Duration|Throughput|Pipe|Issue|Stall|stall|Warp Cycles|Eligible|Active Warps|Registers|Executed Ipc|Occupancy|Block Limit|One or More|No Eligible|----" | head -90
