#!/usr/bin/env python3
"""Seeded non-greedy sampling on a served bf16 CUDA runner: determinism and distribution sanity.

Usage: gpu_sampling_compare.py URL_A URL_B [--n N] [--new-tokens T] [--conc C] [--json OUT]
                               [--expect-identical]
URL_A is a `strata serve` on the bf16 CUDA runner; URL_B is either a CPU server on the same model
(`--device cpu`) or a second CUDA server (then pass --expect-identical).

1. Determinism: N requests (random-word prompts, temperature 0.7, top_p 0.9, top_k 50, min_p 0.05,
   frequency 0.3, presence 0.2, repetition 1.1, sampling_seed 1000+i, ignore_eos; every fourth
   with return_logprob + top_logprobs_num 5) are sent to A twice at concurrency C, the prefix
   cache flushed before each run (a cached prefix changes the bf16 arithmetic, not the sampler):
   every output (ids and logprobs) must be identical between the two runs (exit 1 otherwise).
2. Seeds matter: one prompt with 48 different seeds on A must give more than one distinct
   continuation (exit 1 otherwise: the sampler would be ignoring the draw; the distinct first
   tokens are reported); two requests with the same seed must be identical (exit 1 otherwise).
3. A vs B: the same N requests and the 48 seeded first tokens on B. Reported: identical outputs,
   mean first differing position, first-token agreement per seed, and the total variation
   distance between A's and B's first-token distributions. With --expect-identical any difference
   is a failure; against a CPU server the numbers are reported only (bf16 logits differ from f32).
Sanity of logprobs (A): one per output token, all <= 0, top lists sorted and containing the
sampled token when it is likely. Bursts of 3, 5 and 6 concurrent requests on A (padded CUDA-graph
buckets) must succeed. Any failed request: exit 1. Standard library only."""
import argparse
import collections
import json
import random
import sys
import threading
import urllib.request

PARAMS = {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "min_p": 0.05,
          "frequency_penalty": 0.3, "presence_penalty": 0.2, "repetition_penalty": 1.1,
          "ignore_eos": True}


def post(url, body):
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def flush(url):
    """Empties the server's prefix cache: a prompt computed from a cached prefix takes another
    arithmetic path (bf16 rounding differs), which is not what the determinism check is about."""
    req = urllib.request.Request(url + "/flush_cache", b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def run(url, bodies, conc):
    """Outputs in order; raises on any failed request."""
    out, errs = [None] * len(bodies), []

    def one(i):
        try:
            out[i] = post(url, bodies[i])
        except Exception as e:  # noqa: BLE001 - report every failure
            errs.append(f"request {i} to {url}: {e}")

    for s in range(0, len(bodies), conc):
        ts = [threading.Thread(target=one, args=(i,)) for i in range(s, min(s + conc, len(bodies)))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    if errs:
        raise RuntimeError("; ".join(errs[:5]))
    return out


def key(r):
    """What must be identical between two runs: ids and any logprobs."""
    m = r.get("meta_info", {})
    return json.dumps([r.get("output_ids"), m.get("output_token_logprobs"),
                       m.get("output_top_logprobs")])


def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                None if len(a) == len(b) else min(len(a), len(b)))


def logprob_problems(r):
    m = r.get("meta_info", {})
    ids, lps = r.get("output_ids") or [], m.get("output_token_logprobs")
    if lps is None:
        return ["no output_token_logprobs"]
    bad = []
    if len(lps) != len(ids):
        bad.append(f"{len(lps)} logprobs for {len(ids)} tokens")
    for k, (lp, tok) in enumerate(zip(lps, ids)):
        if lp[1] != tok or lp[0] is None or lp[0] > 1e-6:
            bad.append(f"token {k}: {lp} for id {tok}")
    for k, top in enumerate(m.get("output_top_logprobs") or []):
        vals = [x[0] for x in top or []]
        if vals != sorted(vals, reverse=True) or len(vals) != 5:
            bad.append(f"top list {k} not 5 sorted values: {top}")
        elif lps and k < len(lps) and lps[k][0] > vals[-1] and lps[k][1] not in [x[1] for x in top]:
            bad.append(f"token {k}: sampled id more likely than the 5th but not listed")
    return bad[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url_a")
    ap.add_argument("url_b")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--json")
    ap.add_argument("--expect-identical", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(14)
    words = "the of and to in is was for on that with as by at from his her an which it".split()
    bodies = []
    for i in range(a.n):
        b = {"text": " ".join(rnd.choice(words) for _ in range(rnd.randint(20, 300))),
             "sampling_params": dict(PARAMS, max_new_tokens=a.new_tokens, sampling_seed=1000 + i)}
        if i % 4 == 0:
            b.update(return_logprob=True, top_logprobs_num=5)
        bodies.append(b)
    prompt = "Once upon a time, in a small village by the sea, there lived"
    seeded = [{"text": prompt, "sampling_params": dict(PARAMS, max_new_tokens=8, sampling_seed=s)}
              for s in range(48)]
    ok, report = True, {}
    try:
        flush(a.url_a)
        r1 = run(a.url_a, bodies, a.conc)
        flush(a.url_a)
        r2 = run(a.url_a, bodies, a.conc)
        flush(a.url_a)
        s1 = run(a.url_a, seeded, a.conc)
        flush(a.url_a)
        s1 += run(a.url_a, seeded[:2], 1)
        flush(a.url_b)
        rb = run(a.url_b, bodies, a.conc)
        flush(a.url_b)
        sb = run(a.url_b, seeded, a.conc)
        # Decode batches of 3, 5 and 6 replay CUDA-graph buckets of 4 and 8 with padded rows (the
        # sampler must leave the padding alone); only success is required here (a batch's
        # composition may change bf16 logits, so no identity is asserted).
        for k in (3, 5, 6):
            run(a.url_a, bodies[:k], k)
    except RuntimeError as e:
        print(f"FAIL request: {e}")
        sys.exit(1)

    same = sum(key(x) == key(y) for x, y in zip(r1, r2))
    report["determinism"] = {"identical": same, "of": a.n}
    print(f"{'OK  ' if same == a.n else 'FAIL'} determinism on A: {same}/{a.n} identical outputs "
          "(ids and logprobs) across two runs")
    ok &= same == a.n
    if s1[48]["output_ids"] != s1[0]["output_ids"] or s1[49]["output_ids"] != s1[1]["output_ids"]:
        print("FAIL same seed, same prompt, different output on A")
        ok = False
    conts = collections.Counter(json.dumps(r["output_ids"]) for r in s1[:48])
    firsts_a = [r["output_ids"][0] for r in s1[:48]]
    dist_a = collections.Counter(firsts_a)
    report["seeds"] = {"distinct_continuations": len(conts), "distinct_first_tokens": len(dist_a)}
    # A made model with random weights can be peaked after the prompt (one first token above
    # min_p's cut for every seed); the continuations must still differ.
    print(f"{'OK  ' if len(conts) > 1 else 'FAIL'} seeds on A: 48 seeds give "
          f"{len(conts)} distinct continuations, {len(dist_a)} distinct first tokens "
          f"(most common {dist_a.most_common(3)})")
    ok &= len(conts) > 1
    problems = [(i, p) for i, r in enumerate(r1) if i % 4 == 0 for p in logprob_problems(r)]
    print(f"{'OK  ' if not problems else 'FAIL'} logprobs on A: {len(problems)} problems "
          + (str(problems[:3]) if problems else ""))
    ok &= not problems

    ident = sum(x["output_ids"] == y["output_ids"] for x, y in zip(r1, rb))
    diffs = [first_diff(x["output_ids"], y["output_ids"]) for x, y in zip(r1, rb)]
    diffs = [d for d in diffs if d is not None]
    firsts_b = [r["output_ids"][0] for r in sb]
    agree = sum(x == y for x, y in zip(firsts_a, firsts_b))
    dist_b = collections.Counter(firsts_b)
    tvd = 0.5 * sum(abs(dist_a[t] - dist_b[t]) for t in set(dist_a) | set(dist_b)) / 48
    report["a_vs_b"] = {"identical": ident, "of": a.n, "first_diff_positions": diffs,
                        "first_token_agreement": agree, "first_token_tvd": tvd}
    mean = sum(diffs) / len(diffs) if diffs else None
    print(f"A vs B: {ident}/{a.n} identical outputs; first differing position mean {mean} "
          f"over {len(diffs)}; seeded first tokens agree {agree}/48; first-token TVD {tvd:.3f}")
    if a.expect_identical and (ident != a.n or agree != 48):
        print("FAIL --expect-identical: the two servers differ")
        ok = False
    if a.json:
        json.dump(report, open(a.json, "w"), indent=1)
    print(f"== GPU sampling compare: {'PASS' if ok else 'FAIL'} ==")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
