#!/usr/bin/env python3
"""Sends the same greedy requests to two running `strata serve` instances and requires identical
output. Usage: gpu_serve_compare.py CUDA_URL CPU_URL OUT_JSON. Standard library only.

Requests: the smoke request (default max_new_tokens), a few short prompts, one prompt spanning many
KV pages, and a batch of 8 concurrent requests (sent to each server at once so they share batches).
Exit status 1 when any output differs or a request fails."""
import json
import sys
import threading
import urllib.request

SMOKE = {"text": "Let me tell you a long story ", "sampling_params": {"temperature": 0}}
SHORT = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
LONG = " ".join(f"item {i} is followed by item {i + 1}." for i in range(60))


def post(url, body):
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def greedy(text, n=32):
    return {"text": text, "sampling_params": {"temperature": 0, "max_new_tokens": n}}


def run_batch(url, bodies):
    out = [None] * len(bodies)

    def one(i):
        try:
            out[i] = post(url, bodies[i])
        except Exception as e:  # recorded, compared as a failure
            out[i] = {"error": str(e)}

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def main():
    cuda, cpu, out_path = sys.argv[1:4]
    cases = [("smoke", SMOKE)] + [(f"short{i}", greedy(p)) for i, p in enumerate(SHORT)]
    cases.append(("long", greedy(LONG, 48)))
    batch = [greedy(f"Request {i}: {SHORT[i % len(SHORT)]}", 24 + i) for i in range(8)]
    results, ok = [], True
    for name, body in cases:
        a, b = post(cuda, body), post(cpu, body)
        same = a.get("text") == b.get("text")
        ok &= same
        results.append({"case": name, "equal": same, "cuda": a.get("text"), "cpu": b.get("text"),
                        "prompt_tokens": a.get("meta_info", {}).get("prompt_tokens")})
    ba, bb = run_batch(cuda, batch), run_batch(cpu, batch)
    for i, (a, b) in enumerate(zip(ba, bb)):
        same = "text" in a and a.get("text") == b.get("text")
        ok &= same
        results.append({"case": f"batch{i}", "equal": same, "cuda": a.get("text"), "cpu": b.get("text")})
    for r in results:
        print(f"{'SAME' if r['equal'] else 'DIFF'} {r['case']:8} prompt_tokens={r.get('prompt_tokens')} "
              f"cuda={r['cuda']!r:.70}")
    json.dump(results, open(out_path, "w"), indent=1)
    print(f"serve compare: {sum(r['equal'] for r in results)}/{len(results)} identical")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
