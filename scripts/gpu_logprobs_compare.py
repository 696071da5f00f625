#!/usr/bin/env python3
"""Log-probabilities on the GPU: sends the same greedy requests with `return_logprob`,
`logprob_start_len: 0`, `top_logprobs_num: 3` and `token_ids_logprob` to a CUDA and a CPU
`strata serve` and requires the same output ids and every input, output, top and token-id
log-probability within TOL (the CPU run is checked against log-softmax of reference logits by
server/tests/logprobs.rs). Usage: gpu_logprobs_compare.py CUDA_URL CPU_URL [--bf16].
With --bf16 the CUDA server is the bf16 runner: its arithmetic differs from the f32 CPU path, so
greedy continuations may part; only the prompt (input) positions are compared, teacher-forced,
within BF16_TOL (bf16 keeps 8 significant bits: a logit of magnitude ~10 carries ~0.04 of
rounding, and log-softmax adds the log-sum-exp's), and the output ids are reported, not
required. Standard library only. Exit status 1 on any difference or failed request."""
import json
import sys
import urllib.request

TOL = 2e-3
BF16_TOL = 0.15
BF16 = "--bf16" in sys.argv
PROMPTS = ["The capital of France is", " ".join(f"item {i} follows {i - 1}." for i in range(40))]


def post(url, body):
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def close(a, b, what):
    if a is None or b is None:
        if a != b:
            raise AssertionError(f"{what}: {a} vs {b}")
        return
    if abs(a - b) > TOL:
        raise AssertionError(f"{what}: {a} vs {b}")


def compare(cu, cp):
    worst = 0.0
    for i, text in enumerate(PROMPTS):
        body = {"text": text, "return_logprob": True, "logprob_start_len": 0,
                "top_logprobs_num": 3, "token_ids_logprob": [5, 17],
                "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}}
        a, b = post(cu, body), post(cp, body)
        if BF16:
            worst = max(worst, bf16_inputs(i, a["meta_info"], b["meta_info"]))
            print(f"prompt {i}: output ids {'equal' if a['output_ids'] == b['output_ids'] else 'differ'}")
            continue
        if a["output_ids"] != b["output_ids"]:
            raise AssertionError(f"prompt {i}: ids {a['output_ids']} vs {b['output_ids']}")
        ma, mb = a["meta_info"], b["meta_info"]
        for key in ["input_token_logprobs", "output_token_logprobs"]:
            if len(ma[key]) != len(mb[key]):
                raise AssertionError(f"prompt {i} {key}: lengths")
            for k, (x, y) in enumerate(zip(ma[key], mb[key])):
                if x[1] != y[1]:
                    raise AssertionError(f"prompt {i} {key}[{k}] ids {x} {y}")
                close(x[0], y[0], f"prompt {i} {key}[{k}]")
                if x[0] is not None:
                    worst = max(worst, abs(x[0] - y[0]))
        for key in ["input_top_logprobs", "output_top_logprobs",
                    "input_token_ids_logprobs", "output_token_ids_logprobs"]:
            for k, (xs, ys) in enumerate(zip(ma[key], mb[key])):
                if xs is None or ys is None:
                    if xs != ys:
                        raise AssertionError(f"prompt {i} {key}[{k}]")
                    continue
                for x, y in zip(xs, ys):
                    close(x[0], y[0], f"prompt {i} {key}[{k}]")
        print(f"prompt {i}: {len(ma['input_token_logprobs'])} input and "
              f"{len(ma['output_token_logprobs'])} output positions agree")
    print(f"max |cuda - cpu| over token logprobs: {worst:.2e} (tolerance {BF16_TOL if BF16 else TOL})")


def bf16_inputs(i, ma, mb):
    """Teacher-forced prompt positions of the bf16 run against the f32 CPU run."""
    worst = 0.0
    xs, ys = ma["input_token_logprobs"], mb["input_token_logprobs"]
    if len(xs) != len(ys):
        raise AssertionError(f"prompt {i} input_token_logprobs: lengths")
    for k, (x, y) in enumerate(zip(xs, ys)):
        if x[1] != y[1] or (x[0] is None) != (y[0] is None):
            raise AssertionError(f"prompt {i} input[{k}]: {x} vs {y}")
        if x[0] is not None:
            d = abs(x[0] - y[0])
            worst = max(worst, d)
            if d > BF16_TOL:
                raise AssertionError(f"prompt {i} input[{k}]: {x[0]} vs {y[0]} (bf16 tolerance {BF16_TOL})")
    print(f"prompt {i}: {len(xs)} input positions within {BF16_TOL} (max {worst:.3f})")
    return worst


if __name__ == "__main__":
    try:
        compare(sys.argv[1], sys.argv[2])
    except Exception as e:  # noqa: BLE001 - one line, non-zero exit
        print(f"FAIL: {e}")
        sys.exit(1)
    print("PASS")
