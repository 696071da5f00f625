#!/usr/bin/env python3
"""The bf16 CUDA runner against Hugging Face transformers (bf16, SDPA) on the same weights.

For each model directory: seeded random token prompts of the given lengths, run through
`strata gpu runner-logits` whole and in chunks over the cached prefix (--chunk), and through
transformers' forward. Per model and chunking: top-1 agreement over every position, the same
restricted to positions where transformers' top-1/top-2 margin exceeds `--margin` (a near-tie
between two logits closer than bf16 rounding can flip either way), and on the dumped rows the
logits error max|d| / max|ref| and the mean |d|. The same metrics between transformers bf16 and
transformers fp32 give the bf16 noise floor: passes when the runner is as close to fp32 as
transformers' own bf16 forward is (top-1 within one point, logits error within 1.5x) and its
logits error against transformers bf16 is <= --tol; top-1 agreement with transformers bf16 below
--min-agree is reported (the issue's 99% target) but random-weight models have near-ties; a
model directory with eval_prompts.json (a checkpoint trained by scripts/train_tiny_llama.py) is
fed those held-out text prompts instead of random tokens, and there the target applies.

Usage: hf_runner_compare.py --strata BIN --models DIR[,DIR..] --json OUT [--lens 16,...]"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--strata", required=True)
ap.add_argument("--models", required=True)
ap.add_argument("--lens", default="16,100,512,1024,2048,4096")
ap.add_argument("--chunks", default="0,333")
ap.add_argument("--json")
ap.add_argument("--tol", type=float, default=0.05)
ap.add_argument("--margin", type=float, default=0.1)
ap.add_argument("--min-agree", type=float, default=0.99)
ap.add_argument("--workdir", default="/tmp/hf-compare")
a = ap.parse_args()
os.makedirs(a.workdir, exist_ok=True)


def dump_positions(n, every=64):
    return [p for p in range(n) if p % every == 0 or p == n - 1]


def hf_run(model_dir, prompts, dtype):
    """Per prompt: argmax over every position, the top-1/top-2 margin, and the dump rows."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                 attn_implementation="sdpa").cuda().eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            lg = model(torch.tensor([p], device="cuda")).logits[0].float()
            top2 = torch.topk(lg, 2, dim=-1).values
            out.append({"argmax": lg.argmax(-1).cpu().numpy(),
                        "margin": (top2[:, 0] - top2[:, 1]).cpu().numpy(),
                        "rows": lg[dump_positions(len(p))].cpu().numpy()})
            del lg
    del model
    torch.cuda.empty_cache()
    return out


def compare(a_runs, ref_runs, margin):
    """Top-1 agreement of a vs ref (all positions, and where ref's margin > margin) and the
    logits error on the dump rows: max |d| / max |ref| and mean |d|."""
    agree = total = agree_m = total_m = 0
    rel, mad = 0.0, []
    for x, r in zip(a_runs, ref_runs):
        same = x["argmax"] == r["argmax"]
        agree += int(same.sum())
        total += len(same)
        clear = r["margin"] > margin
        agree_m += int(same[clear].sum())
        total_m += int(clear.sum())
        d = np.abs(x["rows"] - r["rows"])
        rel = max(rel, float((d.max(axis=1) / np.maximum(np.abs(r["rows"]).max(axis=1), 1e-6)).max()))
        mad.append(float(d.mean()))
    return {"top1": agree / total, "top1_clear": agree_m / max(total_m, 1), "positions": total,
            "clear_positions": total_m, "max_rel_err": rel, "mean_abs_err": float(np.mean(mad))}


def fmt(c):
    return (f"top-1 {100 * c['top1']:.2f}% (clear margin {100 * c['top1_clear']:.2f}%), "
            f"max rel err {c['max_rel_err']:.4f}, mean |d| {c['mean_abs_err']:.4f}")


report, ok = [], True
for model_dir in a.models.split(","):
    name = os.path.basename(model_dir.rstrip("/"))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    vocab = cfg["vocab_size"]
    rng = np.random.default_rng(1234)
    lens = [int(x) for x in a.lens.split(",")]
    evalp = os.path.join(model_dir, "eval_prompts.json")
    if os.path.exists(evalp):  # a trained checkpoint (scripts/train_tiny_llama.py): held-out text
        prompts = json.load(open(evalp))
        print(f"{name}: held-out text prompts of {[len(p) for p in prompts]} tokens", flush=True)
    else:
        prompts = [rng.integers(0, vocab, n).tolist() for n in lens]
    pfile = os.path.join(a.workdir, f"{name}-prompts.json")
    json.dump(prompts, open(pfile, "w"))
    t0 = time.time()
    hf16 = hf_run(model_dir, prompts, torch.bfloat16)
    hf32 = hf_run(model_dir, prompts, torch.float32)
    floor = compare(hf16, hf32, a.margin)
    print(f"{name}: transformers bf16 vs fp32 (the bf16 noise floor): {fmt(floor)} "
          f"[{time.time() - t0:.1f}s]", flush=True)
    for chunk in [int(c) for c in a.chunks.split(",")]:
        out = os.path.join(a.workdir, f"{name}-c{chunk}.json")
        r = subprocess.run([a.strata, "gpu", "runner-logits", "--model-path", model_dir,
                            "--prompts", pfile, "--out", out, "--chunk", str(chunk)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL {name} chunk {chunk}: runner-logits exited {r.returncode}\n{r.stderr[-3000:]}")
            ok = False
            report.append({"model": name, "chunk": chunk, "error": r.stderr[-3000:]})
            continue
        js = json.load(open(out))
        rows = np.fromfile(out.replace(".json", ".bin"), dtype=np.float32).reshape(-1, vocab)
        ours, k = [], 0
        for p, o in zip(prompts, js["prompts"]):
            n = len(o["dump_positions"])
            ours.append({"argmax": np.array(o["argmax"]), "rows": rows[k:k + n]})
            k += n
        vs16, vs32 = compare(ours, hf16, a.margin), compare(ours, hf32, a.margin)
        # Pass: as close to fp32 as transformers' own bf16 is (top-1 within 1 point, logits error
        # within 1.5x), and the logits error under --tol against transformers bf16.
        passed = (vs32["top1"] >= floor["top1"] - 0.01
                  and vs32["max_rel_err"] <= 1.5 * floor["max_rel_err"] + 1e-3
                  and vs16["max_rel_err"] <= a.tol)
        ok &= passed
        issue_target = vs16["top1"] >= a.min_agree
        report.append({"model": name, "chunk": chunk, "vs_hf_bf16": vs16, "vs_hf_fp32": vs32,
                       "hf_bf16_vs_fp32": floor, "pass": passed,
                       "top1_vs_hf_bf16_meets_target": issue_target})
        print(f"{'PASS' if passed else 'FAIL'} {name} chunk={chunk}: vs transformers bf16: {fmt(vs16)}"
              f"{'' if issue_target else f' (below the {100 * a.min_agree:.0f}% target)'}; "
              f"vs fp32: {fmt(vs32)}", flush=True)
if a.json:
    json.dump({"device": torch.cuda.get_device_name(), "results": report}, open(a.json, "w"), indent=1)
print(f"== hf compare: {'PASS' if ok else 'FAIL'} ==")
sys.exit(0 if ok else 1)
