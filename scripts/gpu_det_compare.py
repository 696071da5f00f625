#!/usr/bin/env python3
"""Served batch invariance of the bf16 CUDA runner (docs/gpu.md, "Batch-invariant mode").

Usage: gpu_det_compare.py LABEL GRAPH_URL NOGRAPH_URL OUT_JSON [N_PROMPTS] [NEW_TOKENS]
Two servers of the same model and mode: GRAPH_URL with CUDA graphs, NOGRAPH_URL with
--disable-cuda-graph. Comparisons (each counted against a reference, printed as
"LABEL name: same/of"):
- batch: N greedy prompts (20..400 words, ignore_eos) one at a time on the graph server (the
  reference), then 8 and 32 at a time on it, then 1 and 32 at a time on the no-graph server.
  Repeats hit the prefix cache (a whole prompt but its last token), so they also test extend.
- extend: 8 fresh prompts A+B: A alone (4 tokens) then A+B (8 at once) on the graph server, whose
  A+B prefill extends over A's cached pages, vs A+B sent whole to the no-graph server (which has
  never seen A).
- seeded: 4 seeded sampling requests (temperature 0.8, top_p 0.9) sent twice to the graph server
  (the second time over the cached prompt) and once to the no-graph server, 4 at once; then N
  seeded requests with varied sampling parameters (penalties too) 32 at a time on both servers; then N requests
  (greedy and seeded) with output logprobs (top 3 and two named ids), 32 at a time on both:
  ids and every logprob equal.
Exit status 1 when any comparison differs. Standard library only."""
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


CACHED = {}  # url -> prompt tokens served from the prefix cache, summed over its requests


def with_logprobs(r):
    m = r.get("meta_info") or {}
    return [r.get("output_ids"), m.get("output_token_logprobs"), m.get("output_top_logprobs"),
            m.get("output_token_ids_logprobs")]


def run(url, bodies, conc, pick=lambda r: r.get("output_ids")):
    out = [None] * len(bodies)

    def one(i):
        try:
            r = post(url, bodies[i])
            out[i] = pick(r)
            CACHED[url] = CACHED.get(url, 0) + int((r.get("meta_info") or {}).get("cached_tokens") or 0)
        except Exception as e:  # reported as a difference
            out[i] = f"error: {e}"

    for s in range(0, len(bodies), conc):
        ts = [threading.Thread(target=one, args=(i,)) for i in range(s, min(s + conc, len(bodies)))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return out


def compare(ref, outs):
    same, firsts = 0, []
    for a, b in zip(ref, outs):
        if a == b and isinstance(a, list):
            same += 1
        else:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a or [], b or [])) if x != y), None))
    return same, firsts


def text(rnd, lo, hi):
    words = "the of and to in is was for on that with as by at from his her an which it".split()
    return " ".join(rnd.choice(words) for _ in range(rnd.randint(lo, hi)))


def main():
    label, g, ng, out_path = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    new = int(sys.argv[6]) if len(sys.argv) > 6 else 48
    rnd = random.Random(11)
    greedy = {"temperature": 0, "max_new_tokens": new, "ignore_eos": True}
    bodies = [{"text": text(rnd, 20, 400), "sampling_params": greedy} for _ in range(n)]
    results = {}
    ref = run(g, bodies, 1)
    for name, url, conc in [("batch graph c8", g, 8), ("batch graph c32", g, 32),
                            ("batch nograph c1", ng, 1), ("batch nograph c32", ng, 32)]:
        results[name] = (compare(ref, run(url, bodies, conc)), n)
    # Prefix extend: A cached on the graph server, A+B extends it; the no-graph server computes
    # A+B whole. Prompts distinct from the batch ones (another seed), A long enough for pages.
    ext = random.Random(12)
    pairs = [(text(ext, 200, 400), text(ext, 10, 120)) for _ in range(8)]
    run(g, [{"text": a, "sampling_params": {**greedy, "max_new_tokens": 4}} for a, _ in pairs], 8)
    ab = [{"text": a + " " + b, "sampling_params": greedy} for a, b in pairs]
    before = CACHED.get(g, 0)
    extended = run(g, ab, 8)
    print(f"{label} extend: {CACHED.get(g, 0) - before} prompt tokens of the 8 A+B requests came "
          "from the prefix cache (A's pages)")
    whole = run(ng, ab, 8)
    results["extend over cached prefix vs whole"] = (compare(whole, extended), len(ab))
    # Seeded sampling, repeated over the cache and on the other server.
    sd = random.Random(13)
    seeded = [{"text": text(sd, 30, 200),
               "sampling_params": {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": new,
                                   "ignore_eos": True, "sampling_seed": 1000 + i}}
              for i in range(4)]
    first = run(g, seeded, 4)
    results["seeded repeat (cached)"] = (compare(first, run(g, seeded, 4)), 4)
    results["seeded other server"] = (compare(first, run(ng, seeded, 4)), 4)
    # Seeded sampling in a batch, parameters varied per request (temperature, top-k/p, min-p,
    # a logit bias, min_new_tokens, output penalties sampled and greedy): the graph server
    # samples them on the device (queued steps under overlap scheduling, a penalised row's
    # newest token counted from the replay's input ids), the no-graph one in its eager forwards.
    kinds = [{"temperature": 0.7}, {"temperature": 1.0, "top_k": 20}, {"temperature": 0.9, "min_p": 0.05},
             {"temperature": 0.8, "top_p": 0.8, "logit_bias": {"13": 2.0}, "min_new_tokens": 5},
             {"temperature": 0.8, "frequency_penalty": 0.6, "presence_penalty": 0.3},
             {"temperature": 0, "repetition_penalty": 1.3, "frequency_penalty": 0.2}]
    mixed = [{"text": text(sd, 20, 300),
              "sampling_params": {**kinds[i % len(kinds)], "max_new_tokens": new, "ignore_eos": True,
                                  "sampling_seed": 2000 + i}}
             for i in range(n)]
    results["seeded batch graph c32 vs nograph c32"] = (compare(run(ng, mixed, 32), run(g, mixed, 32)), n)
    # Output logprobs in a batch (greedy and seeded): queued under overlap scheduling on the
    # graph server, their words read back with the tokens.
    lp = [{**b, "return_logprob": True, "top_logprobs_num": 3, "token_ids_logprob": [13, 100]}
          for b in mixed[: n // 2] + bodies[: n - n // 2]]
    results["logprobs batch graph c32 vs nograph c32"] = (
        compare(run(ng, lp, 32, with_logprobs), run(g, lp, 32, with_logprobs)), n)
    ok, report = True, {}
    for name, ((same, firsts), of) in results.items():
        ok &= same == of
        report[name] = {"identical": same, "of": of, "first_diff_positions": firsts}
        print(f"{label} {'SAME' if same == of else 'DIFF'} {name}: {same}/{of} identical"
              + (f"; first differing token positions {firsts}" if firsts else ""))
    json.dump(report, open(out_path, "w"), indent=1)
    print(f"{label} == served batch invariance: {'PASS' if ok else 'FAIL'} ==")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
