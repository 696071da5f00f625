#!/usr/bin/env bash
# Nsight Compute look at the prefill gate_up GEMM (8K-token prompt of the Llama-3.1-8B shape):
# the wgmma gate_up + SiLU kernel beside the cuBLAS kernels of a
# forward's four projections (their names carry cuBLAS' tile and cluster shapes). Speed of
# light, memory workload (L2 / DRAM throughput), warp stall reasons, scheduler issue.
# Usage: scripts/gpu-ncu-gemm.sh OUTFILE; env STRATA.
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTFILE=${1:-/tmp/ncu-gemm.txt}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee "$OUTFILE"; exit 0; }
. scripts/gpu-env.sh
sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section LaunchStats"
run() { timeout 200 "$NCU" $sections "$@" "$STRATA" gpu bench --only prefill --prefill-lens 8192 --decode-batches 1 --layers 1; }
{ run -k regex:gemm_gate_silu_wg -c 1
  STRATA_FUSION_OFF=gate_gemm run -k 'regex:^(?!gemm_gate|paged|rmsnorm|rope|silu|embedding|argmax|fill|gemv).*' -c 4
} > "$OUTFILE" 2>&1
grep -vE "^==PROF==|^prefill|^  prefill" "$OUTFILE" | grep -E "^  [a-zA-Z_0-9]+.*\(|Duration|Throughput|Pipe|Issue|Stall|stall|Warp Cycles|Eligible|Active Warps|Registers|Executed Ipc|Cluster|L2 Hit|Mem Busy|Max Bandwidth|SM Frequency|One or More|No Eligible|----" | head -150
