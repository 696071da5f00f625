#!/usr/bin/env bash
# Nsight Compute look at the decode kernels (speed of light, occupancy) on a 2-layer stack:
# batch 1 (GEMV + split attention) and batch 32 (attention), then where the batch-1 cluster
# attention's warps wait (warp state and scheduler sections: its ~6 us for 2 MB of KV at 1B).
# Usage: scripts/gpu-ncu.sh OUTFILE
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTFILE=${1:-/tmp/ncu.txt}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee "$OUTFILE"; exit 0; }
. scripts/gpu-env.sh
sections="--section SpeedOfLight --section Occupancy --section LaunchStats"
{
  echo "== b1: gemv + attention =="
  timeout 150 "$NCU" $sections -k 'regex:paged_attention|gemv_bf16|attention_combine' -c 6 \
    "$STRATA" gpu bench --only decode --decode-batches 1 --layers 2
  echo "== b32: attention =="
  timeout 150 "$NCU" $sections -k 'regex:paged_attention' -c 1 \
    "$STRATA" gpu bench --only decode --decode-batches 32 --layers 2
  echo "== b1 1B: cluster attention, warp stalls =="
  timeout 150 "$NCU" $sections --section WarpStateStats --section SchedulerStats \
    -k 'regex:paged_attention_decode2c' -c 2 \
    "$STRATA" gpu bench --only decode --shape llama-3.2-1b --decode-batches 1 --layers 2
} > "$OUTFILE" 2>&1
grep -E "==|paged_attention|gemv_bf16|attention_combine|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Theoretical Occupancy|Block Limit|Stall|Warp Cycles|Eligible|Issued Warp" "$OUTFILE" | head -120
