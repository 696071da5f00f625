#!/usr/bin/env python3
"""Summarises the batch-invariance cases of a `strata gpu check --json` file: per op and mode
(det / default), how many cases had rows whose bits differ and how many rows in all.
Usage: det_check_summary.py CHECK_JSON. Standard library only."""
import collections
import json
import sys

d = json.load(open(sys.argv[1]))
agg = collections.OrderedDict()
for c in d["checks"]:
    if c["op"] not in ("gemm_rows", "attn_decode_rows", "attn_extend_rows"):
        continue
    mode = c["shape"].split()[0]
    a = agg.setdefault((c["op"], mode), [0, 0, 0])
    m = c["metric"]  # null (NaN in the checker): the case errored
    a[0] += 1
    if m is None or m != m or m > 0:
        a[1] += 1
        a[2] += int(m) if m is not None and m == m else 0
for (op, mode), (n, bad, rows) in agg.items():
    print(f"{op} {mode}: {n} cases, {bad} with differing rows ({rows} rows differ)")
