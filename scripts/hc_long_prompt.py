"""One seeded random prompt of N tokens, sent once to a HiCache server (one-token /generate);
prints "<prefetch bytes> <prefetch seconds>" of that request, read from the server's
sglang:prefetch_bytes_total / prefetch_seconds_total before and after.
Usage: hc_long_prompt.py SEED N PORT [ID_BOUND (1000)]: token ids are drawn from [3, ID_BOUND).
Used by scripts/bench-hicache.sh and scripts/gpu-hicache-multiturn.sh (L3 read rate)."""
import json, random, re, sys, urllib.request

seed, n, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
bound = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
rnd = random.Random(seed)
ids = [rnd.randrange(3, bound) for _ in range(n)]


def m():
    t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    g = lambda k: float(re.search(r"^sglang:%s (\S+)" % k, t, re.M).group(1))
    return g("prefetch_bytes_total"), g("prefetch_seconds_total")


b0, s0 = m()
body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate",
    data=json.dumps(body).encode(), headers={"content-type": "application/json"})).read()
b1, s1 = m()
print(int(b1 - b0), s1 - s0)
