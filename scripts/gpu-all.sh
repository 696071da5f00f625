#!/usr/bin/env bash
# One device call that runs the system checks on the GPU machine, each step time-boxed, with the
# stripped binary carried in .devbin/ (no Rust toolchain there):
#   check    `strata gpu check` (every kernel against the CPU reference)
#   serve    scripts/gpu-serve-check.sh on the llama tiny model (f32 path vs CPU; logprobs f32 and bf16)
#   hc1b     scripts/gpu-hicache-check.sh (1B shape: L2 load-back and L3 answers byte-exact)
#   hc8b     scripts/gpu-hicache-bench.sh (8B shape: L3-hit TTFT vs recompute at 8K..32K)
#   mt       scripts/gpu-hicache-multiturn.sh (multiturn bench, four HiCache configurations)
#   pd       scripts/gpu-pd-check.sh (PD on one GPU, or decode on GPU 1 when there are two:
#            greedy, TTFT, transfer paths and rate, throughput with 1/4/16 in flight, mixed-load ITL)
#   pdcopy   `gpu check --only pd_copy` + `gpu bench --only pd-copy` (the decode's pool-to-pool
#            IPC copy kernel: byte-exact, and timed beside a raw d2d memcpy of the same bytes)
#   pdxfer   `strata bench pd-transfer --transports cuda-ipc,cuda-push` on the 8B KV geometry at 2K
#            and 8K tokens, 1/4/16 in flight: the PD transfer path without a model (two processes,
#            CUDA IPC, the byte check) against a raw d2d memcpy of the same bytes (env XFER_TOKENS)
#   runner   scripts/gpu-runner-check.sh (bf16 runner vs transformers, greedy consistency, bench;
#            env RUNNER_STEPS picks its steps)
#   sampling scripts/gpu-sampling-check.sh (GPU sampler: bench, served determinism, two servers)
#   sbench   scripts/gpu-serve-bench.sh (raw `gpu bench` + served speed; env SB_SIZES, SB_SHAPES,
#            SB_CONCS, HF; the runner's step profile lines come from the server log)
#   prefill  `gpu check --only attention,silu_mul,rmsnorm,rope,rope_kv_write` (every tensor-core
#            prefill kernel and wgmma form, 8K prompts, pages 1, 7, 16 and 64), `gpu bench --only
#            gemm,prefill` at 2K and 8K (the forward with each kernel / wgmma form forced, the
#            default vs the cp.async form alternated, attention alone, 2048-token chunks) and
#            transformers' forward at 2K and 8K (PREFILL_HF=0: not)
#   ttft     served TTFT at concurrency 1 of 2K and 8K prompts on the 8B shape (make-model + serve +
#            bench serve, default chunked-prefill size; compare with the prefill step's raw lines)
#   detcheck `gpu check --only gemm,fixed_decode_plan,gemm_rows,attn_decode_rows,attn_extend_rows`
#            (the batch-invariance cases: exact in det mode, default-mode counts reported)
#   decode   (DECODE_CHECK=0: without this check) `gpu check` of every kernel the decode-speed work changed (argmax, GEMMs incl. the det
#            GEMV fallback, the fused gate_up+SiLU and qkv+RoPE GEMVs, o + norm2 + gate, attention, row ops), then
#            `gpu bench --only decode` at batch 1 and 32 (DECODE_BATCHES), ctx 1024, for the 8B and
#            1B shapes (DECODE_BATCHES=1,2,4,8 also times the few-row GEMVs, off by default, and
#            `gpu check --only few_rows` checks them): graph step with and without PDL, with and without each single-row epilogue
#            fusion, cluster vs split attention, each layer op's share of the graph step, the eager per-op breakdown,
#            attention by split count and cluster size, per-shape GEMV paths
#   grammar  `gpu check --only sampling` (the GPU sampler against the host's, allow masks
#            included) and scripts/gpu-grammar-bench.sh (served ITL of JSON-schema requests vs
#            unconstrained ones on the 1B shape, and CONC constrained requests at once; GRAMMAR_B=
#            another binary served beside it, ENV_B=environment of that second server, e.g.
#            STRATA_OVERLAP_GRAMMAR=0: the same binary without overlap for grammar rows)
#   api      scripts/gpu-api-smoke.sh (n > 1, streamed batches, tools and the request flags on the
#            bf16 runner, made 1B shape; output ids compared, PASS/FAIL)
#   weights  scripts/gpu-weights-check.sh (/update_weights_from_disk on the bf16 runner: A updated
#            to B answers as a server on B, singles and a batch; another shape refused)
#   embed    scripts/gpu-embed-check.sh (--is-embedding on the bf16 runner vs the CPU's f32: cosine
#            >= 0.999, singles, one batch, prefix-cache repeats)
#   lora     scripts/gpu-lora-check.sh (LoRA adapters on the bf16 runner vs the CPU's f32: teacher-forced
#            logprobs within 0.15 with the adapter, which moves them further; a mixed batch)
#   itl      scripts/gpu-itl-ab.sh (served ITL at c=1 on two identical servers vs the raw graph
#            step, with the runner's step profile; env SIZE)
#   overlap  overlap scheduling on vs off: scripts/gpu-det-check.sh in batch-invariant mode on the
#            1B shape twice (overlap on both servers; off on the graph one), then A/B served runs
#            of the 1B shape (gpu-itl-ab.sh, B with STRATA_OVERLAP_SCHEDULE=0) at c=64 greedy and
#            sampled (temperature 0.7, top-p 0.9; 3 rounds, no retractions) and c=1 (with the raw
#            graph step); OVERLAP_RUNS="CONC NP ROUNDS RAW greedy|sampled|penalised|logprobs;..." picks the runs
#            (penalised: + frequency 0.5 / presence 0.2; logprobs: top 5 greedy). Export
#            STRATA_OVERLAP_WIDE=0 to keep penalised and logprob rows out of queued replays
#   head     `gpu check --only head_argmax,argmax_rows` (the LM head with the greedy pick in its
#            epilogue vs the GEMV and argmax_rows), the 1B and 8B b1 step with it on and off (two
#            rounds; each in a process with the grouped tickets and one with
#            STRATA_HEAD_TICKETS=0, HEAD_TICKETS="1 0"), served 1B ITL at c=1 with it on (A) and
#            off (B, STRATA_FUSION_OFF=head_argmax) and A's greedy outputs against B's (the `nograph_c1` line: B one at a time; the c=8 /
#            32 lines compare batch sizes, which the default mode does not keep invariant)
#   readback the tokens brought back by a kernel's stores into mapped pinned memory (the default)
#            against a copy-engine transfer (STRATA_READBACK_COPY=1): the 1B and 8B b1 step in
#            processes of each form (two rounds; RB_SHAPES), served 1B ITL at c=1 (A stores, B
#            copies) and B's greedy outputs against A's (the `nograph_c1` line)
#   lean     the lean one-row step (the default: per replay one copy of the metadata, the host
#            cell and the tiles, the LM head storing its pick into the readback slot and the next
#            input id) against the separate copies and readback kernel (STRATA_LEAN_STEP=0):
#            `gpu check --only head_argmax` (with the stores), the b1 step's pipelined line with
#            the lean step beside the runner's copies (LEAN_SHAPES, default the 1B), served 1B
#            ITL at c=1 (A lean, B not; three rounds) and B's greedy outputs against A's
#   halves   the register cluster attention split by query heads (two clusters per row and KV
#            head, each with half the group; the default at head_dim 64; STRATA_DEC2R_HALVES=1 /
#            0 forces it on / off) against the unsplit form: `gpu check` of the "decode hcl"
#            cases (each also bit for bit against the unsplit form), the b1 graph step at
#            1K-1.25K contexts in processes of each form (HALVES_RUNS="SHAPE CTX ..."), served
#            1B ITL at c=1 (A default, B =0) and B's greedy outputs against A's
#   cand     both above in one call: `gpu check` of the head's stores and the "decode
#            hcl" cases, the b1 graph step at 1K and 1.25K keys (CAND_RUNS) in processes with and
#            without the head split (each also printing the pipelined line's lean step), served 1B
#            ITL at c=1 with both (A, the default) against neither (B) and B's greedy outputs vs A's
#   ring     the register cluster attention with three iterations of keys in flight (the default)
#            against two (STRATA_DEC2R_RING3=0): `gpu check` of its cases, the b1 graph step at
#            1K-1.25K contexts (RING_RUNS="SHAPE CTX ..."), served 1B ITL at c=1 (A: 3, B: 2)
#   dp       scripts/gpu-dp-check.sh (--dp-size 2 against one replica: greedy answers equal in
#            batch-invariant mode, c=64 tok/s side by side; needs two GPUs, SKIPs on one)
#   lptop    scripts/gpu-logprobs-top.sh (top-N logprobs: gpu check and bench of the sampler with
#            top 5 / 20 / 33, the made 1B shape served with top 20: lists checked, c=64 tok/s)
#   trained  scripts/train_tiny_llama.py trains a small Llama on the machine (TRAIN_S seconds, default
#            90; no downloads) and scripts/hf_runner_compare.py compares the bf16 runner with
#            transformers on it over held-out text prompts of 16..4096 tokens (the top-1 target on
#            a model with real logit margins; made models have flat logits)
#   handoff  `gpu bench --only handoff`: one kernel boundary of the decode chain under each way of
#            waiting for the predecessor (PDL wait after / before the trigger, arrival counters
#            with full fences or release / acquire alone; first to run before a persistent kernel)
#   stream   `gpu bench --only copy,stream`: the weight-streaming rate of grid shapes with the GEMVs'
#            loads (the qkv GEMV's 192 blocks vs 128 blocks of 256-1024 threads, one and two per
#            SM) on the 1B qkv / gate_up and 8B qkv matrices, beside the d2d copy rate
#   chain    the decode chain's compile-time defaults (evict-first weight loads, the early PDL
#            trigger) against both off (STRATA_W_EVICT_FIRST=0 STRATA_PDL_EARLY=0): `gpu bench
#            --only decode` at batch 1 on the 1B and 8B shapes in alternating processes (two
#            rounds, graph step and its subsets), then served 1B ITL at c=1 (gpu-itl-ab.sh, B off)
#   targets  issue 14's open targets in one call (first on an H200): the decode cluster cases of
#            `gpu check` (STRATA_CHECK_CASES), `gpu bench --only decode` at batch 1 on the 1B and
#            8B shapes, served 1B ITL at c=1 (gpu-itl-ab.sh: A this binary, B the same with
#            TARGETS_B_ENV, default STRATA_LEAN_STEP=0 STRATA_DEC2R_HALVES=0: without the lean
#            step and the head-split attention; TARGETS_ITL_S its time limit, 150 s; GREEDY
#            passed on), `gpu bench --only gemm,prefill` at 2K and 8K and transformers' forward
#            at 2K and 8K (TARGET_SHAPES: the decode shapes; PREFILL_HF=0: without transformers)
#   tprefill the prefill part of `targets`: `gpu bench --only gemm,prefill` at 2K and 8K and
#            transformers' forward at 2K and 8K
#   binab    this binary against others (BIN_B, space-separated, default .devbin/strata.base, e.g.
#            the build before a kernel change; NAME.xz is unpacked): `gpu bench --only decode` at
#            batch 1 on the shapes of AB_SHAPES (llama-3.2-1b llama-3.1-8b) in alternating
#            processes (AB_ROUNDS, 2), then served 1B ITL at c=1 (gpu-itl-ab.sh, B the first of
#            BIN_B; AB_ITL=0: not)
#   decmma   decode batches on the tensor cores (the decode MMA kernel; the prefill kernel) vs
#            decode2: gpu check of all, raw steps side by side (8B b8/32/64 at 1K, 1B b32, 8B b32
#            at 4K) and served 1B at c=32, the decode MMA kernel against the prefill kernel
#   ncudecode scripts/gpu-ncu.sh (Nsight Compute on the decode kernels, and the warp stalls of the
#            batch-1 cluster attention)
#   ncuprefill scripts/gpu-ncu-prefill.sh (Nsight Compute on the wgmma prefill attention kernel:
#            stall reasons, pipe use; when ncu exists on the machine)
#   profile  scripts/gpu-prefill-profile.sh (the 8K prefill forward under Nsight Systems when nsys
#            exists: time per kernel class and idle gaps inside one forward; SM clock and power)
#   pdmps    the `pd` step with an MPS control daemon running for the call (the prefill and decode
#            processes then share the GPU's SMs instead of time-slicing it; the prefill runs at MPS
#            client priority PD_PREFILL_MPS_PRIORITY, default 1 = below normal, and may use
#            PD_PREFILL_SM_PCT % of the SMs, default 100; stopped afterwards)
#   det      scripts/gpu-det-check.sh (batch-invariant mode, also with STRATA_DET_ATTN=prefill, vs
#            default: served greedy at c=1/8/32, graphs on/off, prefix extend, seeded repeats;
#            decode bench c=1/16 in each mode; 1B and 8B; raw 1B and 8B decode steps with and
#            without the mode; `cost` lines and a final PASS/FAIL; give it DET_TIMEOUT=560 alone)
# Usage: scripts/gpu-all.sh "STEP..." (default "check serve hc1b hc8b pd"); output in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export STRATA=${STRATA:-$PWD/.devbin/strata}
RESULT=${OUT:-/tmp/strata-gpu}
# Every step's logs go to one folder that comes back as one archive (a device call returns few files).
OUT=$RESULT/logs
mkdir -p "$OUT"
. scripts/gpu-env.sh
STEPS=${1:-check serve hc1b hc8b pd}
declare -A rcs
START=$(date +%s)
BUDGET=${BUDGET:-570} # seconds for all steps (a device call is cut at 600)
left() { local l=$(( BUDGET - ($(date +%s) - START) )); [ "$l" -lt "$1" ] && echo $(( l > 5 ? l : 5 )) || echo "$1"; }
# decode_b1 LOG SHAPE [BIN]: `gpu bench --only decode` at batch 1 on SHAPE (of BIN, default
# $STRATA; environment given before the call reaches it), its step lines printed.
decode_b1() {
  timeout $(left 90) "${3:-$STRATA}" gpu bench --only decode --shape "$2" --decode-batches 1 > "$1" 2>&1 \
    || { echo "bench rc=$?"; return 1; }
  grep -E "^decode b1|b1 graph step (with PDL|waited)|minus each|subset" "$1"
}
# decode_env_ab TAG VAR "VALUES" "SHAPES": decode_b1 on each shape in a process per value of the
# environment variable VAR, alternated, two rounds, with the LM head's fused-vs-apart line.
decode_env_ab() {
  local r shape v rc=0
  for r in 1 2; do for shape in $4; do for v in $3; do
    echo "== $shape, $2=$v, round $r"
    ( export "$2=$v"; decode_b1 "$OUT/$1-$shape-$v-$r.log" $shape ) || rc=1
    grep -E "argmax in lm_head" "$OUT/$1-$shape-$v-$r.log"
  done; done; done
  return $rc
}
# decode_ctx_ab TAG VAR "SHAPE CTX"...: the b1 graph step of each shape at each context, in a
# process with VAR=1 and one with VAR=0.
decode_ctx_ab() {
  local tag=$1 var=$2 run v rc=0
  shift 2
  for run in "$@"; do
    set -- $run
    for v in 1 0; do
      env "$var=$v" timeout $(left 90) "$STRATA" gpu bench --only decode --shape $1 --decode-batches 1 \
        --decode-ctx $2 > "$OUT/$tag-$1-$2-$v.log" 2>&1 || rc=1
      echo "$1 ctx $2 $var=$v: $(grep -E "b1 graph step waited" "$OUT/$tag-$1-$2-$v.log" | cut -c1-260)"
    done
  done
  return $rc
}
# prefill_bench TAG: `gpu bench --only gemm,prefill` at 2K and 8K and (PREFILL_HF=0: not)
# transformers' forward at the same lengths, logs $OUT/TAG-bench.log and $OUT/TAG-hf.log.
prefill_bench() {
  local r=0
  timeout $(left 150) "$STRATA" gpu bench --only gemm,prefill --prefill-lens 2048,8192 --decode-batches 1 \
    --json "$OUT/$1-bench.json" > "$OUT/$1-bench.log" 2>&1 || r=1
  grep -A30 "== summary" "$OUT/$1-bench.log" | grep -vE "cuBLASLt tuning" || tail -20 "$OUT/$1-bench.log"
  if [ "${PREFILL_HF:-1}" = 1 ]; then
    timeout $(left 150) python3 scripts/hf-llama-bench.py --batches "" --prefill 2048,8192 \
      --json "$OUT/$1-hf.json" > "$OUT/$1-hf.log" 2>&1 || r=1
    grep -E "^hf" "$OUT/$1-hf.log" || tail -5 "$OUT/$1-hf.log"
  fi
  return $r
}
for s in $STEPS; do
  t0=$(date +%s)
  echo "######## $s"
  case $s in
    check) timeout $(left 200) "$STRATA" gpu check --json "$OUT/check.json" > "$OUT/check.log" 2>&1
      rc=$?; grep -E "FAIL|gpu check:" "$OUT/check.log" | tail -15 ;;
    serve) ARCHS=llama timeout $(left 150) scripts/gpu-serve-check.sh "$OUT" > "$OUT/serve-check.log" 2>&1
      rc=$?; grep -E "SAME|DIFF|PASS|FAIL|agree|within|max \||output ids|gpu-serve-check" "$OUT/serve-check.log" | tail -20 ;;
    hc1b) timeout $(left 200) scripts/gpu-hicache-check.sh "$OUT" > "$OUT/hc1b.log" 2>&1; rc=$?; tail -8 "$OUT/hc1b.log" ;;
    hc8b) timeout $(left ${HC8B_TIMEOUT:-330}) scripts/gpu-hicache-bench.sh "$OUT" > "$OUT/hc8b.log" 2>&1; rc=$?; grep -vE "^\s*$" "$OUT/hc8b.log" | tail -30 ;;
    mt) timeout $(left ${MT_TIMEOUT:-200}) scripts/gpu-hicache-multiturn.sh "$OUT" > "$OUT/mt.log" 2>&1; rc=$?; cat "$OUT/mt.log" ;;
    pd) timeout $(left ${PD_TIMEOUT:-300}) scripts/gpu-pd-check.sh "$OUT" > "$OUT/pd.log" 2>&1; rc=$?; tail -40 "$OUT/pd.log" ;;
    pdcopy) timeout $(left 120) "$STRATA" gpu check --only pd_copy > "$OUT/pdcopy.log" 2>&1; rc=$?
      timeout $(left 60) "$STRATA" gpu bench --only pd-copy --pd-copy-mb 55,230 >> "$OUT/pdcopy.log" 2>&1; r2=$?
      grep -E "pd_pool_copy|FAIL|gpu check:|^pd-copy" "$OUT/pdcopy.log" | tail -20; [ $rc -eq 0 ] && rc=$r2 ;;
    pdxfer) rc=0; for t in ${XFER_TOKENS:-2048 8192}; do
        timeout $(left 150) "$STRATA" bench pd-transfer --transports cuda-ipc,cuda-push --layers 32 --kv-dim 1024 \
          --page-size 64 --tokens $t --concurrency 1,4,16 --rounds ${XFER_ROUNDS:-10} --pool-mib 4096 > "$OUT/pdxfer-$t.log" 2>&1 || rc=$?
        cat "$OUT/pdxfer-$t.log" | cut -c1-400 | tail -12
      done ;;
    sampling) timeout $(left 200) scripts/gpu-sampling-check.sh "$OUT" > "$OUT/sampling.log" 2>&1; rc=$?; tail -30 "$OUT/sampling.log" ;;
    prefill) timeout $(left 150) "$STRATA" gpu check --only attention,gate_gemm,silu_mul,rmsnorm,rope,rope_kv_write --json "$OUT/check-attention.json" > "$OUT/prefill-check.log" 2>&1
      rc=$?; grep -E "FAIL|prefill|extend|silu|SiLU|rmsnorm|rope|gpu check:" "$OUT/prefill-check.log" | tail -40
      prefill_bench prefill || rc=1 ;;
    sbench) SIZES=${SB_SIZES:-llama-3.1-8b} HF=${HF:-0} SHAPES=${SB_SHAPES:-1024:256} CONCS=${SB_CONCS:-1 16} \
      timeout $(left ${SB_TIMEOUT:-300}) scripts/gpu-serve-bench.sh "$OUT" > "$OUT/sbench.log" 2>&1; rc=$?; tail -40 "$OUT/sbench.log" ;;
    ttft) SIZES=llama-3.1-8b RAW=0 HF=0 SHAPES="2048:32 8192:32" CONCS=1 timeout $(left 250) \
        scripts/gpu-serve-bench.sh "$OUT/ttft" > "$OUT/ttft.log" 2>&1
      rc=$?; grep -vE "^\s*$" "$OUT/ttft.log" | tail -20 ;;
    detcheck) timeout $(left 150) "$STRATA" gpu check --only gemm,fixed_decode_plan,gemm_rows,attn_decode_rows,attn_extend_rows \
        --json "$OUT/check-det.json" > "$OUT/check-det.log" 2>&1
      rc=$?; grep -E "FAIL|error|gpu check:" "$OUT/check-det.log" | tail -30
      python3 scripts/det_check_summary.py "$OUT/check-det.json" ;;
    det) timeout $(left ${DET_TIMEOUT:-400}) scripts/gpu-det-check.sh "$OUT" > "$OUT/det.log" 2>&1; rc=$?
      grep -E "SAME|DIFF|bench|raw|PASS|FAIL|batch-invariant|prefix cache|error|^cost|^==" "$OUT/det.log" | tail -70 ;;
    dp) timeout $(left 450) scripts/gpu-dp-check.sh "$OUT/dp" > "$OUT/dp.log" 2>&1; rc=$?; cat "$OUT/dp.log" ;;
    lptop) timeout $(left 400) scripts/gpu-logprobs-top.sh "$OUT" > "$OUT/lptop.log" 2>&1; rc=$?; cat "$OUT/lptop.log" ;;
    trained) timeout $(left $(( ${TRAIN_S:-90} + 150 ))) python3 scripts/train_tiny_llama.py \
        --out /tmp/strata-models/trained --seconds ${TRAIN_S:-90} > "$OUT/trained.log" 2>&1
      rc=$?; grep -E "corpus|tokenizer:|trained|saved|Error" "$OUT/trained.log"
      timeout $(left 200) python3 scripts/hf_runner_compare.py --strata "$STRATA" --models /tmp/strata-models/trained \
        --json "$OUT/trained-compare.json" 2>&1 | grep -v Warning > "$OUT/trained-compare.log"
      r2=${PIPESTATUS[0]}; cat "$OUT/trained-compare.log"; [ $rc -eq 0 ] && rc=$r2 ;;
    decode) rc=0; [ "${DECODE_CHECK:-1}" = 1 ] && { timeout $(left 150) "$STRATA" gpu check --only argmax_rows,head_argmax,gemm,silu_linear,gate_silu,qkv_rope,few_rows,rmsnorm_add2,o_norm_gate,rmsnorm,rope,rope_kv_write,attention,fixed_decode_plan \
        --json "$OUT/check-decode.json" > "$OUT/check-decode.log" 2>&1
      rc=$?; grep -E "FAIL|error|gpu check:" "$OUT/check-decode.log" | tail -30; }
      for shape in ${DECODE_SHAPES:-llama-3.1-8b llama-3.2-1b}; do
        timeout $(left 200) "$STRATA" gpu bench --only decode --shape "$shape" --decode-batches ${DECODE_BATCHES:-1,32} \
          --decode-ctx 1024 --json "$OUT/decode-$shape.json" > "$OUT/decode-$shape.log" 2>&1 || { echo "bench $shape rc=$?"; rc=1; }
        echo "== $shape"
        grep -E "^decode b|graph step|op breakdown|attention (as|cluster|at)|decode MMA|GemvT1 |GemvT1Pipe|GemvRows|CublasLt |CublasLtDet|DetGemv|d2d copy" "$OUT/decode-$shape.log" | cut -c1-400
      done ;;
    decmma) timeout $(left 100) "$STRATA" gpu check --only attention,fixed_decode_plan --json "$OUT/check-decmma.json" \
        > "$OUT/check-decmma.log" 2>&1
      rc=$?; grep -E "FAIL|error|gpu check:|on-mma|dmma|Prefill|DecodeMma" "$OUT/check-decmma.log" | tail -30
      for run in "llama-3.1-8b 8,32,64 1024" "llama-3.2-1b 32 1024" "llama-3.1-8b 32 4096"; do
        set -- $run
        timeout $(left 150) "$STRATA" gpu bench --only decode --shape $1 --decode-batches $2 --decode-ctx $3 \
          > "$OUT/decmma-$1-$3.log" 2>&1 || { echo "bench $run rc=$?"; rc=1; }
        echo "== $run"
        grep -E "^decode b|graph step with decode attention|prefill kernel|decode MMA kernel|attention as planned" "$OUT/decmma-$1-$3.log" | cut -c1-300
      done
      SIZE=llama-3.2-1b CONC=32 NP=64 ROUNDS=1 RAW=0 ITL_B_ENV=STRATA_DECODE_DMMA=0 \
        timeout $(left 150) scripts/gpu-itl-ab.sh "$OUT/decmma-served" > "$OUT/decmma-served.log" 2>&1 || rc=1
      cat "$OUT/decmma-served.log" ;;
    ncuprefill) timeout $(left 250) scripts/gpu-ncu-prefill.sh "$OUT/ncu-prefill.txt"; rc=$? ;;
    ncudecode) timeout $(left 400) scripts/gpu-ncu.sh "$OUT/ncu-decode.txt"; rc=$? ;;
    profile) timeout $(left 200) scripts/gpu-prefill-profile.sh "$OUT" > "$OUT/profile.log" 2>&1; rc=$?; cat "$OUT/profile.log" ;;
    pdmps) export CUDA_MPS_PIPE_DIRECTORY=/tmp/strata-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/strata-mps-log
      mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
      if nvidia-cuda-mps-control -d; then
        echo "MPS control daemon started"
        PD_PREFILL_MPS_PRIORITY=${PD_PREFILL_MPS_PRIORITY:-1} timeout $(left ${PD_TIMEOUT:-300}) scripts/gpu-pd-check.sh "$OUT/mps" > "$OUT/pdmps.log" 2>&1; rc=$?; tail -40 "$OUT/pdmps.log"
        echo quit | nvidia-cuda-mps-control; sleep 2
      else echo "MPS control daemon did not start"; rc=1; fi
      cp -r $CUDA_MPS_LOG_DIRECTORY "$OUT/mps-log" 2>/dev/null
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    grammar) timeout $(left 120) "$STRATA" gpu check --only sampling > "$OUT/check-sampling.log" 2>&1; rc=$?
      grep -E "FAIL|gpu check:|sampling" "$OUT/check-sampling.log" | tail -12
      STRATA_B=${GRAMMAR_B:-} timeout $(left 200) scripts/gpu-grammar-bench.sh "$OUT" > "$OUT/grammar.log" 2>&1 || rc=1
      cat "$OUT/grammar.log" ;;
    lora) timeout $(left 300) scripts/gpu-lora-check.sh "$OUT" > "$OUT/lora.log" 2>&1; rc=$?; grep -E "PASS|FAIL|==|mixed|RESULT" "$OUT/lora.log" ;;
    embed) timeout $(left 300) scripts/gpu-embed-check.sh "$OUT/embed" > "$OUT/embed.log" 2>&1; rc=$?; cat "$OUT/embed.log" ;;
    weights) timeout $(left 240) scripts/gpu-weights-check.sh "$OUT/weights" > "$OUT/weights.log" 2>&1; rc=$?; cat "$OUT/weights.log" ;;
    api) timeout $(left 200) scripts/gpu-api-smoke.sh "$OUT/api" > "$OUT/api.log" 2>&1; rc=$?; cat "$OUT/api.log" ;;
    itl) timeout $(left ${ITL_TIMEOUT:-200}) scripts/gpu-itl-ab.sh "$OUT" > "$OUT/itl.log" 2>&1; rc=$?; cat "$OUT/itl.log" ;;
    handoff) timeout $(left 60) "$STRATA" gpu bench --only handoff > "$OUT/handoff.log" 2>&1; rc=$?
      grep -E "^handoff|rror" "$OUT/handoff.log" ;;
    stream) timeout $(left 60) "$STRATA" gpu bench --only copy,stream > "$OUT/stream.log" 2>&1; rc=$?
      grep -E "d2d copy|stream |rror" "$OUT/stream.log" ;;
    chain) rc=0
      for r in 1 2; do for shape in llama-3.2-1b llama-3.1-8b; do for e in 1 0; do
        echo "== $shape, chain defaults $([ $e = 1 ] && echo on || echo off), round $r"
        STRATA_W_EVICT_FIRST=$e STRATA_PDL_EARLY=$e decode_b1 "$OUT/chain-$shape-$e-$r.log" $shape || rc=1
      done; done; done
      SIZE=llama-3.2-1b RAW=0 ITL_B_ENV="STRATA_W_EVICT_FIRST=0 STRATA_PDL_EARLY=0" timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/chain-itl" > "$OUT/chain-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/chain-itl.log" | tail -8 ;;
    head) rc=0
      timeout $(left 90) "$STRATA" gpu check --only head_argmax,argmax_rows > "$OUT/check-head.log" 2>&1 || rc=1
      grep -E "FAIL|error|gpu check:|lm_head" "$OUT/check-head.log" | tail -8
      decode_env_ab head STRATA_HEAD_TICKETS "${HEAD_TICKETS:-1 0}" "llama-3.2-1b llama-3.1-8b" || rc=1
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 GREEDY="16 64" ITL_B_ENV=STRATA_FUSION_OFF=head_argmax timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/head-itl" > "$OUT/head-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/head-itl.log" | tail -12 ;;
    readback) rc=0
      decode_env_ab rb STRATA_READBACK_COPY "0 1" "${RB_SHAPES:-llama-3.2-1b llama-3.1-8b}" || rc=1
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 GREEDY="16 64" ITL_B_ENV=STRATA_READBACK_COPY=1 timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/rb-itl" > "$OUT/rb-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/rb-itl.log" | tail -12 ;;
    lean) rc=0
      timeout $(left 60) "$STRATA" gpu check --only head_argmax > "$OUT/check-lean.log" 2>&1 || rc=1
      grep -E "gpu check:|FAIL" "$OUT/check-lean.log"
      for shape in ${LEAN_SHAPES:-llama-3.2-1b}; do decode_b1 "$OUT/lean-$shape.log" $shape || rc=1; done
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 GREEDY="16 64" ITL_B_ENV=STRATA_LEAN_STEP=0 timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/lean-itl" > "$OUT/lean-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/lean-itl.log" | tail -12 ;;
    halves) rc=0
      STRATA_CHECK_CASES="decode hcl" timeout $(left 90) "$STRATA" gpu check --only attention > "$OUT/check-halves.log" 2>&1 || rc=1
      grep -E "FAIL|error|gpu check:" "$OUT/check-halves.log" | tail -8
      decode_ctx_ab halves STRATA_DEC2R_HALVES \
        ${HALVES_RUNS:-"llama-3.2-1b 1024" "llama-3.2-1b 1280" "llama-3.1-8b 1024"} || rc=1
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 GREEDY="16 64" ITL_B_ENV=STRATA_DEC2R_HALVES=0 timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/halves-itl" > "$OUT/halves-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/halves-itl.log" | tail -12 ;;
    cand) rc=0
      STRATA_CHECK_CASES="decode hcl" timeout $(left 90) "$STRATA" gpu check --only attention,head_argmax \
        > "$OUT/check-cand.log" 2>&1 || rc=1
      grep -E "FAIL|error|gpu check:" "$OUT/check-cand.log" | tail -8
      decode_ctx_ab cand STRATA_DEC2R_HALVES ${CAND_RUNS:-"llama-3.2-1b 1024" "llama-3.2-1b 1280"} || rc=1
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 GREEDY="16 64" ITL_B_ENV="STRATA_LEAN_STEP=0 STRATA_DEC2R_HALVES=0" \
        timeout $(left 200) scripts/gpu-itl-ab.sh "$OUT/cand-itl" > "$OUT/cand-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/cand-itl.log" | tail -12 ;;
    ring) rc=0
      STRATA_CHECK_CASES="decode cl,decode rcl" timeout $(left 90) "$STRATA" gpu check --only attention > "$OUT/check-ring.log" 2>&1 || rc=1
      grep -E "FAIL|error|gpu check:" "$OUT/check-ring.log" | tail -8
      decode_ctx_ab ring STRATA_DEC2R_RING3 \
        ${RING_RUNS:-"llama-3.2-1b 1024" "llama-3.2-1b 1152" "llama-3.2-1b 1280" "llama-3.1-8b 1152"} || rc=1
      SIZE=llama-3.2-1b RAW=0 ROUNDS=3 ITL_B_ENV=STRATA_DEC2R_RING3=0 timeout $(left 200) \
        scripts/gpu-itl-ab.sh "$OUT/ring-itl" > "$OUT/ring-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/ring-itl.log" | tail -9 ;;
    targets) rc=0
      STRATA_CHECK_CASES="decode cl,decode rcl,decode hcl" timeout $(left 90) "$STRATA" gpu check --only attention,head_argmax \
        > "$OUT/targets-check.log" 2>&1 || rc=1
      grep -E "gpu check:|FAIL" "$OUT/targets-check.log"
      for shape in ${TARGET_SHAPES:-llama-3.2-1b llama-3.1-8b}; do decode_b1 "$OUT/targets-decode-$shape.log" $shape || rc=1; done
      SIZE=llama-3.2-1b RAW=0 ITL_B_ENV=${TARGETS_B_ENV:-"STRATA_LEAN_STEP=0 STRATA_DEC2R_HALVES=0"} timeout $(left ${TARGETS_ITL_S:-150}) scripts/gpu-itl-ab.sh "$OUT/targets-itl" > "$OUT/targets-itl.log" 2>&1 || rc=1
      grep -vE "^\s*$" "$OUT/targets-itl.log" | tail -12
      prefill_bench targets-prefill || rc=1 ;;
    tprefill) prefill_bench targets-prefill; rc=$? ;;
    binab) rc=0; BS=(${BIN_B:-$PWD/.devbin/strata.base}); B=${BS[0]}
      for b in "${BS[@]}"; do  # (a binary carried as NAME.xz is unpacked first)
        [ -x "$b" ] || { [ -f "$b.xz" ] && xz -dk "$b.xz" && chmod +x "$b"; }
      done
      for r in $(seq ${AB_ROUNDS:-2}); do for shape in ${AB_SHAPES:-llama-3.2-1b llama-3.1-8b}; do for bin in "$STRATA" "${BS[@]}"; do
        echo "== $shape, $(basename "$bin"), round $r"
        decode_b1 "$OUT/binab-$shape-$(basename "$bin")-$r.log" $shape "$bin" || rc=1
      done; done; done
      if [ "${AB_ITL:-1}" = 1 ]; then
        SIZE=llama-3.2-1b RAW=0 ITL_B_STRATA="$B" timeout $(left 200) scripts/gpu-itl-ab.sh "$OUT/binab-itl" \
          > "$OUT/binab-itl.log" 2>&1 || rc=1
        grep -vE "^\s*$" "$OUT/binab-itl.log" | tail -8
      fi ;;
    overlap) rc=0
      for ga in "" "--disable-overlap-schedule"; do
        echo "== det, graph server [${ga}]"
        DET_MODES=det DET_SIZES=llama-3.2-1b DET_BENCH=0 DET_RAW=0 DET_GRAPH_ARGS="$ga" timeout $(left 200) \
          scripts/gpu-det-check.sh "$OUT/det-ov${ga:+-off}" > "$OUT/det-ov${ga:+-off}.log" 2>&1 || rc=1
        grep -E "SAME|DIFF|PASS|FAIL|error" "$OUT/det-ov${ga:+-off}.log" | tail -9
      done
      IFS=';' read -ra runs <<< "${OVERLAP_RUNS:-64 128 3 0 greedy;64 128 3 0 sampled;1 4 2 1 greedy}"
      for run in "${runs[@]}"; do
        set -- $run
        extra=""; [ "$5" = sampled ] && extra='{"sampling_params": {"temperature": 0.7, "top_p": 0.9}}'
        [ "$5" = penalised ] && extra='{"sampling_params": {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.5, "presence_penalty": 0.2}}'
        [ "$5" = logprobs ] && extra='{"return_logprob": true, "top_logprobs_num": 5}'
        echo "== 1B c=$1 $5: A overlap, B STRATA_OVERLAP_SCHEDULE=0"
        SIZE=llama-3.2-1b CONC=$1 NP=$2 ROUNDS=$3 RAW=$4 MAX_TOTAL=262144 ITL_B_ENV=STRATA_OVERLAP_SCHEDULE=0 \
          EXTRA="$extra" timeout $(left 150) scripts/gpu-itl-ab.sh "$OUT/ov-c$1-$5" 2>&1 | grep -v "profile:" || rc=1
        for ab in A B; do
          echo "   $ab $(grep -h "back-to-back" "$OUT/ov-c$1-$5/itl-$ab.log" | tail -1 | sed 's/.*steps=/steps=/')"
        done
      done ;;
    runner) STEPS="${RUNNER_STEPS:-check hf greedy f32 bench}" timeout $(left 400) scripts/gpu-runner-check.sh "$OUT" > "$OUT/runner.log" 2>&1; rc=$?; tail -40 "$OUT/runner.log" ;;
    *) echo "unknown step $s"; rc=2 ;;
  esac
  rcs[$s]=$rc
  echo "######## $s rc=$rc in $(( $(date +%s) - t0 )) s"
done
for s in $STEPS; do printf "%s=%s " "$s" "${rcs[$s]}"; done; echo
tar czf "$RESULT/logs.tgz" -C "$RESULT" logs && rm -rf "$OUT"
