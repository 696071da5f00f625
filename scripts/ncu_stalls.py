#!/usr/bin/env python3
"""Summarises Nsight Compute's per-instruction source page (CSV, `ncu -i REP --page source --csv
--print-source sass`, as scripts/gpu-ncu-source.sh writes it): the stall reasons over the whole
kernel, the instructions with the most samples and each one's leading reasons, and the share of
samples between consecutive synchronisation points (barriers, wgmma waits, cp.async waits), which
divides a loop into its phases.

Usage: scripts/ncu_stalls.py FILE.csv [TOP]
"""
import csv
import sys

SYNC = ("BAR.SYNC", "DEPBAR", "WARPGROUP.ARRIVE", "LDGDEPBAR", "SYNCS", "VOTE")


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    rows = list(csv.reader(open(path)))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr, data = rows[start], [r for r in rows[start + 1 :] if len(r) == len(rows[start])]
    col = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]

    def num(r, k):
        try:
            return float(r[col[k]] or 0)
        except (KeyError, ValueError):
            return 0.0

    samples = "Warp Stall Sampling (All Samples)"
    total = sum(num(r, samples) for r in data) or 1.0
    print(f"{len(data)} instructions, {total:.0f} stall samples")
    by_reason = {k: sum(num(r, k) for r in data) for k in reasons}
    print("reasons: " + ", ".join(f"{k[6:]} {100 * v / total:.1f}%" for k, v in sorted(by_reason.items(), key=lambda x: -x[1])[:10]))
    print(f"\ntop {top} instructions (address, % of samples, executions, instruction, leading reasons):")
    for r in sorted(data, key=lambda r: -num(r, samples))[:top]:
        lead = sorted(((k, num(r, k)) for k in reasons), key=lambda x: -x[1])[:3]
        why = " ".join(f"{k[6:]}={v:.0f}" for k, v in lead if v > 0)
        print(f"  {r[0][-6:]:>6} {100 * num(r, samples) / total:5.1f}% {num(r, 'Instructions Executed'):>10.0f}  {r[1].strip()[:64]:64s} {why}")
    print("\nsamples between synchronisation points (cumulative %, the point closing each span):")
    acc = last = 0.0
    for r in data:
        acc += num(r, samples)
        src = r[1].strip()
        if any(s in src for s in SYNC) and acc - last > 0.005 * total:
            print(f"  {r[0][-6:]:>6} {100 * (acc - last) / total:5.1f}% (to {100 * acc / total:5.1f}%)  {src[:60]}")
            last = acc


if __name__ == "__main__":
    main()
