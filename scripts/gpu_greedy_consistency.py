#!/usr/bin/env python3
"""Greedy continuations of the bf16 CUDA runner across batch sizes and with/without CUDA graphs.

Usage: gpu_greedy_consistency.py GRAPH_URL NOGRAPH_URL OUT_JSON [N_PROMPTS] [NEW_TOKENS]
                                 [NOOVERLAP_URL]
The same N greedy requests (random-text prompts of 20..400 tokens, ignore_eos) are sent to the
server with graphs one at a time (batch 1), 8 at a time and 32 at a time, to the server
without graphs one at a time and 32 at a time, and (when given) to a server with graphs and
--disable-overlap-schedule 32 at a time. Each run's output token ids are compared with the
batch-1 graph run's: identical count, and for differing ones the first differing position.
Exit status 1 when any output differs. Standard library only."""
import json
import random
import sys
import threading
import urllib.request


def post(url, body):
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def run(url, bodies, conc):
    out = [None] * len(bodies)

    def one(i):
        try:
            out[i] = post(url, bodies[i]).get("output_ids")
        except Exception as e:
            out[i] = f"error: {e}"

    for s in range(0, len(bodies), conc):
        ts = [threading.Thread(target=one, args=(i,)) for i in range(s, min(s + conc, len(bodies)))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return out


def main():
    g, ng, out_path = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    new = int(sys.argv[5]) if len(sys.argv) > 5 else 48
    rnd = random.Random(7)
    words = "the of and to in is was for on that with as by at from his her an which it".split()
    bodies = [{"text": " ".join(rnd.choice(words) for _ in range(rnd.randint(20, 400))),
               "sampling_params": {"temperature": 0, "max_new_tokens": new, "ignore_eos": True}}
              for _ in range(n)]
    ref = run(g, bodies, 1)
    runs = {"graph_c8": run(g, bodies, 8), "graph_c32": run(g, bodies, 32),
            "nograph_c1": run(ng, bodies, 1), "nograph_c32": run(ng, bodies, 32)}
    if len(sys.argv) > 6:
        runs["nooverlap_c32"] = run(sys.argv[6], bodies, 32)
    ok, report = True, {}
    for name, outs in runs.items():
        same, firsts = 0, []
        for a, b in zip(ref, outs):
            if a == b and isinstance(a, list):
                same += 1
            else:
                k = next((i for i, (x, y) in enumerate(zip(a or [], b or [])) if x != y), None)
                firsts.append(k)
        ok &= same == n
        report[name] = {"identical": same, "of": n, "first_diff_positions": firsts}
        print(f"{'SAME' if same == n else 'DIFF'} {name}: {same}/{n} identical to graph batch-1"
              + (f"; first differing token positions {firsts}" if firsts else ""))
    json.dump(report, open(out_path, "w"), indent=1)
    print(f"== greedy consistency: {'PASS' if ok else 'FAIL'} ==")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
