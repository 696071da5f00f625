"""Splits an Nsight Systems kernel trace (cuda_gpu_trace CSV) of `strata gpu bench --only prefill`
into forwards at the `embedding` kernel and prints, for the fastest forward that contains the
LM head, the time per kernel class and the idle time between kernels. Used by
scripts/gpu-prefill-profile.sh."""
import csv
import sys


def kind(name):
    n = name.lower()
    if "gemm" in n or "sm90_xmma" in n or "cutlass" in n or "gemv" in n or "nvjet" in n:
        return "gemm"
    for k in ("attention", "rmsnorm", "rope", "silu", "embedding", "argmax", "combine", "kv_write"):
        if k in n:
            return k
    return "other:" + name[:40]


def main(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            name = r.get("Name") or r.get("name") or ""
            start = r.get("Start (ns)") or r.get("Start")
            dur = r.get("Duration (ns)") or r.get("Duration")
            if not start or not dur or "[CUDA mem" in name:
                continue
            rows.append((int(start), int(dur), name))
    rows.sort()
    fwds, cur = [], None
    for s, d, n in rows:
        if n.startswith("embedding"):
            if cur:
                fwds.append(cur)
            cur = []
        if cur is not None:
            cur.append((s, d, n))
    if cur:
        fwds.append(cur)
    # a forward = kernels up to a gap of > 5 ms (the bench's host work between iterations)
    whole = []
    for f in fwds:
        out = [f[0]]
        for k in f[1:]:
            if k[0] - (out[-1][0] + out[-1][1]) > 5_000_000:
                break
            out.append(k)
        whole.append(out)
    whole = [f for f in whole if len(f) > 100]
    if not whole:
        print("trace: no whole forward found")
        return
    span = lambda f: (f[-1][0] + f[-1][1] - f[0][0]) / 1e6
    best = min(whole, key=span)
    per, busy = {}, 0
    for s, d, n in best:
        k = kind(n)
        c = per.setdefault(k, [0, 0, set()])
        c[0] += d
        c[1] += 1
        c[2].add(n[:60])
        busy += d
    print(f"trace: {len(whole)} forwards of {[len(f) for f in whole]} kernels; fastest {span(best):.1f} ms "
          f"span, kernels busy {busy/1e6:.1f} ms, gaps {span(best) - busy/1e6:.1f} ms")
    for k, (d, c, names) in sorted(per.items(), key=lambda x: -x[1][0]):
        print(f"  {k:28s} {d/1e6:8.2f} ms  {c:5d} launches  e.g. {sorted(names)[:3]}")


if __name__ == "__main__":
    main(sys.argv[1])
