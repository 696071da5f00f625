#!/usr/bin/env bash
# PD disaggregation, one device call: a colocated server, a prefill server and a decode server,
# the Strata router in front of each setup. On one GPU they share it; when `nvidia-smi -L` lists
# two or more, the decode runs on GPU 1 (--base-gpu-id 1) and the others on GPU 0, so the decode
# opens the prefill's pool across the peer link (or falls back to the staged path, with a log
# line, when the GPUs cannot reach each other).
# For each model shape (SIZES, made with random bf16 weights):
#  - greedy: 6 prompts one at a time through the PD router must give the colocated answer
#    (identical ids); 8 concurrent ones are reported as a count (the bf16 runner is not batch
#    invariant yet, issue 14);
#  - TTFT at concurrency 1 (2K-token prompts, 16 out), PD vs colocated, both through a router;
#  - KV transfer: which path each transfer took (CUDA IPC device to device / same-host copy /
#    socket; staged through host memory or not), the time per transfer and its rate, timed by
#    the decode per KV header (each part and the final one, header to pages landed: with
#    per-chunk push the prefill's later chunks are not transfer time), the CUDA IPC copies split
#    into the host's control path (header to copy queued), the wait (queued to seen complete)
#    and the copy's own device time (its events); against the raw device-to-device copy of one
#    copy's bytes (`gpu bench --only pd-copy`, which also times the decode's pool-to-pool copy
#    kernel alone) and the TCP loopback copy rate;
#  - KV transfer throughput with 1, 4 and 16 transfers in flight (concurrent 2K-token prompts):
#    the decode's received bytes over the wall time with at least one part's pages between their
#    header and their landing, against the same raw d2d memcpy rate;
#  - decode ITL under mixed load (4 decode streams while 8K-token prefills arrive), PD vs colocated;
#  - a prefill killed (-9) mid CUDA IPC copy: the decode restarted with
#    --disaggregation-test-stall-ms 1500 (it waits 1.5 s after the final KV header before it copies
#    the pages out of the prefill's GPU pool), a long prompt's legs sent straight to both servers,
#    the prefill killed in that window; the decode must answer that leg with a clear error within
#    the heartbeat window (10 s), its pool must go back to idle, and after a new prefill starts
#    on the same ports the next PD request must give the colocated answer. One PASS/FAIL line.
#    With PD_PUSH=1 (the prefill copies into the decode's pool) the prefill is the one restarted
#    with the stall (its copy queued, 1.5 s before it reports), and a second test kills the
#    decode in that window: the prefill's leg must fail clearly and the prefill keep serving.
# Usage: scripts/gpu-pd-check.sh [OUTDIR]; env STRATA, SIZES ("llama-3.2-1b llama-3.1-8b"),
# PD_IPC (1; 0 runs the pair with STRATA_PD_IPC=0: the staged path, for comparison), PD_PUSH
# (0; 1 runs the pair with STRATA_PD_PUSH=1: the prefill copies into the decode's pool), PD_CHUNK
# (1024: --chunked-prefill-size of every server; 0 leaves the server default), PD_PREFILL_MPS_PRIORITY
# (under MPS: the prefill's CUDA_MPS_CLIENT_PRIORITY, 1 = below normal, so the decode's kernels go first),
# PD_PREFILL_SM_PCT / PD_DECODE_SM_PCT (under MPS: each server's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, the
# share of the GPU's SMs its kernels may use; 100 = all, the default), PD_SERVE_ARGS (extra flags
# for every server, e.g. --enable-deterministic-inference).
set -uo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
OUTDIR=${1:-${OUT:-/tmp/strata-gpu}}
SIZES=${SIZES:-llama-3.2-1b llama-3.1-8b}
mkdir -p "$OUTDIR"
. scripts/gpu-env.sh
export PYTHONUNBUFFERED=1 # cuBLASLt tuning on: its machine-wide table keeps processes consistent
W=${PD_WORK:-/tmp/strata-hb}
mkdir -p "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; pids=(); sleep 1; }
trap cleanup EXIT
fail=0
start() { # name port args...; LASTPID is the server's pid
  local name=$1 port=$2; shift 2
  "$STRATA" "$@" >> "$OUTDIR/pd-$name.log" 2>&1 & pids+=($!)
  local pid=$!
  LASTPID=$pid
  for _ in $(seq 600); do
    curl -sf localhost:$port/health > /dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  echo "FAIL: $name did not start"; tail -20 "$OUTDIR/pd-$name.log"; return 1
}
NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
DGPU=0
[ "${NGPU:-0}" -ge 2 ] && DGPU=1
echo "# $NGPU GPU(s): prefill and colocated on GPU 0, decode on GPU $DGPU"
for size in $SIZES; do
  echo "=== $size"
  [ -f "$W/$size/config.json" ] || "$STRATA" make-model --out "$W/$size" --arch llama --size "$size" --dtype bf16 > /dev/null 2>&1 \
    || { echo "FAIL: make-model"; fail=1; continue; }
  S=(serve --model-path "$W/$size" --page-size 64 --max-total-tokens 65536 --context-length 16384)
  # Chunked prefill on every server (the same chunking keeps greedy answers comparable): the
  # prefill sends each finished chunk's pages as a part, so the 1,000- and 2,500-token greedy
  # prompts and the 8K load exercise the per-chunk push over CUDA IPC. PD_CHUNK=0: server default.
  [ "${PD_CHUNK:-1024}" != 0 ] && S+=(--chunked-prefill-size ${PD_CHUNK:-1024})
  # Extra flags for every server (e.g. --enable-deterministic-inference).
  # shellcheck disable=SC2206
  S+=(${PD_SERVE_ARGS:-})
  start colo 32101 "${S[@]}" --log-level warn --port 32101 || { fail=1; cleanup; continue; }
  export STRATA_PD_IPC=${PD_IPC:-1} STRATA_PD_PUSH=${PD_PUSH:-0}
  for n in colo prefill decode router-pd router-colo; do : > "$OUTDIR/pd-$n.log"; done
  PF=("${S[@]}" --log-level warn --port 32102 --disaggregation-mode prefill --disaggregation-bootstrap-port 32199)
  DC=("${S[@]}" --port 32103 --disaggregation-mode decode --base-gpu-id $DGPU --log-level info)
  CUDA_MPS_CLIENT_PRIORITY=${PD_PREFILL_MPS_PRIORITY:-0} CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_PREFILL_SM_PCT:-100} start prefill 32102 "${PF[@]}" || { fail=1; cleanup; continue; }
  PREFILL_PID=$LASTPID
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_DECODE_SM_PCT:-100} start decode 32103 "${DC[@]}" || { fail=1; cleanup; continue; }
  DECODE_PID=$LASTPID
  start router-pd 32110 router --pd-disaggregation --prefill http://127.0.0.1:32102 32199 \
    --decode http://127.0.0.1:32103 --port 32110 --prometheus-port 32111 --log-level warn || { fail=1; cleanup; continue; }
  start router-colo 32120 router --worker-urls http://127.0.0.1:32101 --port 32120 --prometheus-port 32121 --log-level warn \
    || { fail=1; cleanup; continue; }
  python3 - <<'PY' 2>&1 | tee "$OUTDIR/pd-greedy-$size.txt"
import json, random, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
def gen(port, ids, n=24):
    r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate",
        data=json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}).encode()), timeout=300)
    return json.loads(r.read())["output_ids"]
rng = random.Random(3)
P = [[rng.randrange(10, 120000) for _ in range(rng.choice([40, 300, 1000, 2500]))] for _ in range(14)]
same = sum(gen(32110, p) == gen(32120, p) for p in P[:6])
print(f"sequential: {same}/6 PD answers equal the colocated answer")
with ThreadPoolExecutor(8) as ex:
    pd = list(ex.map(lambda p: gen(32110, p), P[6:]))
    co = list(ex.map(lambda p: gen(32120, p), P[6:]))
print(f"8 concurrent: {sum(a == b for a, b in zip(pd, co))}/8 equal")
sys.exit(0 if same == 6 else 1)
PY
  [ "${PIPESTATUS[0]}" = 0 ] || fail=1
  bench() { "$STRATA" bench serve --tokenizer "$W/$size" "$@"; }
  pick() { grep -E "$1" | tr -s ' ' | sed 's/^ //'; }
  echo "## TTFT, concurrency 1, 2048-token prompts, 16 out"
  for mode in colo pd; do
    port=$([ $mode = pd ] && echo 32110 || echo 32120)
    printf "%-5s " $mode
    bench --base-url http://127.0.0.1:$port --num-prompts 10 --random-input-len 2048 --random-output-len 16 \
      --max-concurrency 1 --seed 5 | pick "Median TTFT|Mean TTFT|Median ITL" | tr '\n' ' '
    echo
  done
  m() { curl -s localhost:32102/metrics | awk -v k="sglang:$1" '$1 == k {print $2}'; }
  md() { curl -s localhost:32103/metrics | awk -v k="sglang:$1" '$1 == k {print $2}'; }
  B=$(m pd_transfer_bytes_total) T=$(m pd_transfer_seconds_total) N=$(m pd_transfers_total)
  echo "## KV transfer paths: $N transfers: $(m pd_transfers_cuda_ipc_total) CUDA IPC (decode: $(md pd_received_cuda_ipc_total)), $(m pd_transfers_same_host_total) same-host copy, $(m pd_transfers_staged_total) staged through host memory; $(m pd_transfer_parts_total) chunk parts sent ahead (decode: $(md pd_received_parts_total)); $(md pd_bootstrap_connections_total) bootstrap connections"
  grep -hE "KV transfers on this connection take|no CUDA IPC with this prefill|over the peer link" "$OUTDIR/pd-decode.log" | sed 's/^.*PD: /  decode log: /' | sort | uniq -c
  # The decode times each KV header (part or final) to its pages landed; the prefill's counters
  # run from the final header to the ACK (parts are not timed there).
  DB=$(md pd_received_bytes_total) DT=$(md pd_receive_seconds_total) DN=$(md pd_received_transfers_total)
  IC=$(md pd_received_cuda_ipc_copies_total) IB=$(md pd_received_cuda_ipc_bytes_total)
  IQ=$(md pd_receive_cuda_ipc_enqueue_seconds_total) IW=$(md pd_receive_cuda_ipc_wait_seconds_total) ID=$(md pd_receive_cuda_ipc_device_seconds_total)
  # Pushes (the prefill copies into the decode's pool): the prefill times them.
  PC=$(m pd_push_copies_total) PB=$(m pd_push_bytes_total) PQ=$(m pd_push_enqueue_seconds_total)
  PW=$(m pd_push_wait_seconds_total) PDV=$(m pd_push_device_seconds_total)
  f() { python3 -c "import sys; print(float(sys.argv[1] or 0))" "${1:-0}"; }
  DB=$(f "$DB") DT=$(f "$DT") DN=$(f "$DN") IC=$(f "$IC") IB=$(f "$IB") IQ=$(f "$IQ") IW=$(f "$IW") ID=$(f "$ID")
  PC=$(f "$PC") PB=$(f "$PB") PQ=$(f "$PQ") PW=$(f "$PW") PDV=$(f "$PDV")
  echo "## pushed by the prefill: $PC copies; decode headers PUSHED: $(md pd_received_pushed_total)"
  python3 -c "
pb, pt, pn = float('${B:-0}' or 0), float('${T:-0}' or 0), max(float('${N:-0}' or 0), 1)
print(f'## KV transfer, prefill side: {pb/pn/1e6:.1f} MB per transfer, final header to ACK {pt/pn*1e3:.3f} ms')
db, dt, dn = $DB, $DT, max($DN, 1)
print(f'## KV transfer, all paths (decode, each header to its pages landed): {db/dn/1e6:.1f} MB per transfer in {dt/dn*1e3:.3f} ms = {db/max(dt,1e-9)/1e9:.2f} GB/s')
ic, ib, iq, iw, idv = $IC, $IB, $IQ, $IW, $ID
if ic: print(f'## KV transfer, CUDA IPC: {ic:.0f} copies (parts and finals), {ib/ic/1e6:.1f} MB per copy, header to landed {(iq+iw)/ic*1e3:.3f} ms = {ib/max(iq+iw,1e-9)/1e9:.1f} GB/s; header to copy queued {iq/ic*1e3:.3f} ms, queued to seen complete {iw/ic*1e3:.3f} ms, of which the copy on the device {idv/ic*1e3:.3f} ms')
pc, pb, pq, pw, pdv = $PC, $PB, $PQ, $PW, $PDV
if pc: print(f'## KV transfer, CUDA IPC push (prefill side): {pc:.0f} copies (parts and finals), {pb/pc/1e6:.1f} MB per copy, start to landed {(pq+pw)/pc*1e3:.3f} ms = {pb/max(pq+pw,1e-9)/1e9:.1f} GB/s; copy queued in {pq/pc*1e3:.3f} ms, queued to seen complete {pw/pc*1e3:.3f} ms, of which the copy on the device {pdv/pc*1e3:.3f} ms')"
  # The raw copy is measured at the size of the copies being compared (IPC ones when any).
  MBX=$(python3 -c "print(round(($PB / $PC if $PC else $IB / $IC if $IC else $DB / max($DN, 1)) / 1e6, 1))")
  timeout 60 "$STRATA" gpu bench --only pd-copy --shape $size --pd-copy-mb $MBX 2> /dev/null | grep "^pd-copy" | head -1 | tee "$OUTDIR/pd-copy-$size.txt"
  python3 -c "
import re
ic, ib, t = $IC, $IB, $IQ + $IW
if $PC: ic, ib, t = $PC, $PB, $PQ + $PW
if not ic: ic, ib, t = max($DN, 1), $DB, $DT
m = re.search(r'raw d2d memcpy ([0-9.]+) ms', open('$OUTDIR/pd-copy-$size.txt').read())
if m and t > 0: print(f'## transfer (header to landed) / raw d2d copy of the same bytes: {float(m.group(1)) / (t / ic * 1e3):.2f}x (target >= 0.7x)')"
  echo "## KV transfer throughput with N in flight (N concurrent 2048-token prompts, 1 out; decode counters: bytes / wall time with >= 1 part or final header's pages between the header and their landing; pushed: the prefill's bytes / wall time with >= 1 push between its start and its header sent), vs the raw d2d memcpy above"
  python3 - "$OUTDIR/pd-copy-$size.txt" <<'PY' 2>&1 | tee "$OUTDIR/pd-throughput-$size.txt"
import json, random, re, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
m = re.search(r'raw d2d memcpy [0-9.]+ ms = ([0-9.]+) GB/s', open(sys.argv[1]).read() if sys.argv[1] else '')
raw = float(m.group(1)) if m else 0.0
rng = random.Random(17)
def metrics():
    v = {}
    for port in (32103, 32102):
        t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        v.update({l.split()[0]: float(l.split()[1]) for l in t.splitlines() if l.startswith("sglang:pd_")})
    g = lambda k: v.get("sglang:" + k, 0.0)
    return [g("pd_received_bytes_total"), g("pd_receive_busy_seconds_total"), g("pd_received_transfers_total"),
            g("pd_receive_seconds_total"), g("pd_received_cuda_ipc_total"), g("pd_received_cuda_ipc_copies_total"),
            g("pd_receive_cuda_ipc_enqueue_seconds_total"), g("pd_receive_cuda_ipc_wait_seconds_total"),
            g("pd_receive_cuda_ipc_device_seconds_total"), g("pd_push_copies_total"), g("pd_push_bytes_total"),
            g("pd_push_busy_seconds_total"), g("pd_push_enqueue_seconds_total"), g("pd_push_wait_seconds_total"),
            g("pd_push_device_seconds_total")]
def ask(_):
    ids = [rng.randrange(10, 120000) for _ in range(2048)]
    r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:32110/generate",
        data=json.dumps({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1}}).encode()), timeout=300)
    return json.loads(r.read())["meta_info"]["finish_reason"]["type"] != "abort"
for c in (1, 4, 16):
    for attempt in range(2):  # the first opens the connections (their first transfer is staged)
        before = metrics()
        with ThreadPoolExecutor(c) as ex:
            ok = sum(ex.map(ask, range(c)))
        d = [a - b for a, b in zip(metrics(), before)]
    b, busy, n, secs, ipc, copies, enq, wait, dev, pc, pb, pbusy, penq, pwait, pdev = d
    if pc:  # pushed: the prefill's copies are the transfer (the decode only counts them landed)
        rate = pb / pbusy / 1e9 if pbusy > 0 else 0.0
        copies, enq, wait, dev = pc, penq, pwait, pdev
    else:
        rate = b / busy / 1e9 if busy > 0 else 0.0
    ratio = f"{rate / raw:.3f}x the raw d2d memcpy ({raw:.0f} GB/s)" if raw else "no raw rate"
    per = (f"; per IPC copy ({copies:.0f}{', pushed by the prefill' if pc else ''}): queued {enq / copies * 1e3:.3f} ms, waited {wait / copies * 1e3:.3f} ms, "
           f"device {dev / copies * 1e3:.3f} ms") if copies else ""
    print(f"{c:2d} in flight: {ok}/{c} ok, {n:.0f} transfers ({ipc:.0f} CUDA IPC), {b / max(n, 1) / 1e6:.1f} MB each, "
          f"aggregate {rate:.2f} GB/s = {ratio}; per transfer {secs / max(n, 1) * 1e3:.3f} ms headers to landed{per}")
PY
  MB=$(python3 -c "print(max(1, round(float('${B:-0}' or 0) / max(float('${N:-0}' or 0), 1) / 1048576)))")
  "$STRATA" bench store --role tcp-copy --copy-mb $MB --batch-bytes-mb $MB 2> /dev/null | tail -n 1
  echo "## decode ITL under mixed load (decode: 128 in / 128 out x 4 at a time; prefills: 8192 in / 1 out x 2)"
  for mode in colo pd; do
    port=$([ $mode = pd ] && echo 32110 || echo 32120)
    bench --base-url http://127.0.0.1:$port --num-prompts 12 --random-input-len 8192 --random-output-len 1 \
      --max-concurrency 2 --seed 9 > /dev/null & LOAD=$!
    printf "%-5s " $mode
    bench --base-url http://127.0.0.1:$port --num-prompts 12 --random-input-len 128 --random-output-len 128 \
      --max-concurrency 4 --seed 8 | pick "Median ITL|P99 ITL|Mean ITL" | tr '\n' ' '
    echo
    wait $LOAD || true
  done
  # Which server copies: the decode pulls out of the prefill's pool (default), or the prefill
  # pushes into the decode's (PD_PUSH=1). The server that copies is restarted with --disaggregation-test-stall-ms
  # 1500 (it waits 1.5 s with its copy queued, or before it copies), and a server is killed in
  # that window: the prefill (then the decode's leg must fail clearly and its pool go idle) and,
  # with push, the decode too (then the prefill's leg must fail clearly, the prefill keep
  # serving and its pool go idle).
  if [ "${PD_PUSH:-0}" = 1 ]; then
    STALLED=prefill; kill $PREFILL_PID 2> /dev/null; wait $PREFILL_PID 2> /dev/null
    CUDA_MPS_CLIENT_PRIORITY=${PD_PREFILL_MPS_PRIORITY:-0} CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_PREFILL_SM_PCT:-100} start prefill 32102 "${PF[@]}" --disaggregation-test-stall-ms 1500 || { fail=1; cleanup; continue; }
    PREFILL_PID=$LASTPID
  else
    STALLED=decode; kill $DECODE_PID 2> /dev/null; wait $DECODE_PID 2> /dev/null
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_DECODE_SM_PCT:-100} start decode 32103 "${DC[@]}" --disaggregation-test-stall-ms 1500 || { fail=1; cleanup; continue; }
    DECODE_PID=$LASTPID
  fi
  echo "## prefill killed mid CUDA IPC copy ($STALLED restarted with --disaggregation-test-stall-ms 1500)"
  kill_test() { # victim (prefill|decode) pid room prompt_len stalled_side
    python3 - "$@" <<'PY' 2>&1 | tee -a "$OUTDIR/pd-kill-$size.txt"
import json, os, random, signal, sys, threading, time, urllib.request
victim, pid, room, plen, stalled_side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
other = "decode" if victim == "prefill" else "prefill"
port = {"prefill": 32102, "decode": 32103}
rng = random.Random(room)
def post(p, body, timeout=120):
    try:
        r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{p}/generate",
            data=json.dumps(body).encode()), timeout=timeout)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:  # the killed server's leg
        return 0, str(e)
def legs(room, ids, n=8):
    b = {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True},
         "bootstrap_host": "127.0.0.1", "bootstrap_port": 32199, "bootstrap_room": room}
    out = {}
    ts = {k: threading.Thread(target=lambda k=k: out.__setitem__(k, post(port[k], b))) for k in port}
    for t in ts.values(): t.start()
    return ts, out
def metric(p, k):
    t = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics").read().decode()
    return sum(float(l.split()[1]) for l in t.splitlines() if l.split() and l.split()[0] == "sglang:" + k)
def failed(s, v):
    return s != 200 or (isinstance(v, dict) and v.get("meta_info", {}).get("finish_reason", {}).get("type") == "abort")
def state(p):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{p}/get_server_info").read())["internal_states"][0]
# Warm-up: a new connection's first transfer is staged; it opens the pools for the next ones.
ts, out = legs(room, [rng.randrange(10, 120000) for _ in range(300)])
for t in ts.values(): t.join()
warm = out["decode"][0] == 200 and out["prefill"][0] == 200
ids = [rng.randrange(10, 120000) for _ in range(plen)]
copies0 = metric(32103, "pd_received_cuda_ipc_copies_total") + metric(32102, "pd_push_copies_total")
queued0 = metric(32102, "pd_push_queued_total")
prompt0 = metric(32102, "prompt_tokens_total")
ts, out = legs(room + 1, ids)
# Pushing: once the prefill queued its last push (one per 1024-token chunk) it sits in the
# stall with that copy queued. Pulling: once the prefill has no request left running, the
# final header went out and the decode sits in its stall before the copy. Kill then.
deadline, seen_busy, ready = time.time() + 60, False, False
while time.time() < deadline and other not in out:
    if stalled_side == "prefill":
        ready = metric(32102, "pd_push_queued_total") - queued0 >= -(-plen // 1024)
    else:
        st = state(32102)
        busy = st["num_running_reqs"] + st["num_waiting_reqs"] > 0
        # A fast prefill (the 1B shape) may finish between two polls: its admitted prompt
        # tokens say it ran.
        seen_busy |= busy or metric(32102, "prompt_tokens_total") - prompt0 >= plen
        ready = not busy and seen_busy
    if ready:
        break
    time.sleep(0.005)
time.sleep(0.2)
copies = metric(32103, "pd_received_cuda_ipc_copies_total") + metric(32102, "pd_push_copies_total") - copies0
stalled = ready and other not in out
os.kill(pid, signal.SIGKILL)
killed = time.time()
ts[other].join(30)
took = time.time() - killed
s, v = out.get(other, (None, None))
msg = json.dumps(v) if not isinstance(v, str) else v
clear = s is not None and failed(s, v) and (victim in msg or "PD transfer failed" in msg)
print(f"  {victim} killed: warm-up ok: {warm}; killed in the copy window: {stalled} ({copies:.0f} part copies landed before)")
print(f"  {other} leg after the kill: status {s} in {took:.2f} s: {msg[:300]}")
idle, st = False, {}
for _ in range(300):
    st = state(port[other])
    n = lambda k: st.get(k, -1)
    if n("num_running_reqs") == 0 and n("num_waiting_reqs") == 0 and n("free_pages") + n("cached_pages") == n("total_pages"):
        idle = True
        break
    time.sleep(0.1)
print(f"  {other} pool idle: {idle} (free {st.get('free_pages')} + cached {st.get('cached_pages')} of {st.get('total_pages')})")
ok = warm and stalled and clear and took < 10 and idle
sys.exit(0 if ok else 1)
PY
    return ${PIPESTATUS[0]}
  }
  kill_test prefill $PREFILL_PID 7001 2048 $STALLED
  KILL_RC=$?
  DKILL_RC=0
  if [ "$STALLED" = prefill ]; then
    echo "## decode killed mid CUDA IPC push (prefill with --disaggregation-test-stall-ms 1500)"
    CUDA_MPS_CLIENT_PRIORITY=${PD_PREFILL_MPS_PRIORITY:-0} CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_PREFILL_SM_PCT:-100} start prefill 32102 "${PF[@]}" --disaggregation-test-stall-ms 1500 || { fail=1; cleanup; continue; }
    PREFILL_PID=$LASTPID
    kill_test decode $DECODE_PID 7101 300 prefill; DKILL_RC=$?
    curl -sf localhost:32102/health > /dev/null || { echo "  the prefill stopped serving after the decode was killed"; DKILL_RC=1; }
    kill $PREFILL_PID 2> /dev/null; wait $PREFILL_PID 2> /dev/null
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_DECODE_SM_PCT:-100} start decode 32103 "${DC[@]}" || { fail=1; cleanup; continue; }
    DECODE_PID=$LASTPID
  fi
  CUDA_MPS_CLIENT_PRIORITY=${PD_PREFILL_MPS_PRIORITY:-0} CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${PD_PREFILL_SM_PCT:-100} start prefill 32102 "${PF[@]}" || { fail=1; cleanup; continue; }
  PREFILL_PID=$LASTPID
  python3 - <<'PY' 2>&1 | tee -a "$OUTDIR/pd-kill-$size.txt"
import json, random, sys, threading, urllib.request
rng = random.Random(29)
ids = [rng.randrange(10, 120000) for _ in range(300)]
def post(port, extra={}):
    b = {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}, **extra}
    try:
        r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=json.dumps(b).encode()), timeout=120)
        return r.status, json.loads(r.read())
    except Exception as e:
        return 0, str(e)
cs, cv = post(32101)
if cs != 200:
    print(f"  the colocated server did not answer: {cs} {cv}")
    sys.exit(1)
want = cv["output_ids"]
boot = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 32199, "bootstrap_room": 7003}
out = {}
ts = [threading.Thread(target=lambda k=k, p=p: out.__setitem__(k, post(p, boot))) for k, p in (("prefill", 32102), ("decode", 32103))]
for t in ts: t.start()
for t in ts: t.join()
(ps, pv), (ds, dv) = out["prefill"], out["decode"]
same = ps == 200 and ds == 200 and isinstance(dv, dict) and dv.get("output_ids") == want
print(f"  next PD request after a new prefill started (legs straight to both servers): prefill {ps}, decode {ds}, "
      f"{'equals' if same else 'DIFFERS from'} the colocated answer")
sys.exit(0 if same else 1)
PY
  NEXT_RC=${PIPESTATUS[0]}
  if [ "$KILL_RC" = 0 ] && [ "$NEXT_RC" = 0 ]; then
    echo "## prefill killed mid CUDA IPC copy ($STALLED copying): PASS (clear error within the heartbeat window, decode pool idle, next PD request served)"
  else
    echo "## prefill killed mid CUDA IPC copy ($STALLED copying): FAIL (see the lines above)"; fail=1
  fi
  if [ "$STALLED" = prefill ]; then
    if [ "$DKILL_RC" = 0 ] && [ "$NEXT_RC" = 0 ]; then
      echo "## decode killed mid CUDA IPC push: PASS (prefill leg failed clearly, prefill kept serving, its pool idle, next PD request served)"
    else
      echo "## decode killed mid CUDA IPC push: FAIL (see the lines above)"; fail=1
    fi
  fi
  grep -hiE "panic|error" "$OUTDIR"/pd-*.log | head -5
  cleanup
done
echo "== gpu-pd-check: $([ $fail = 0 ] && echo PASS || echo FAIL) =="
exit $fail
