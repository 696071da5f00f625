#!/usr/bin/env python3
"""transformers baseline for scripts/gpu-serve-bench.sh: the same checkpoint (bf16, SDPA), greedy
`generate` of batches of `conc` random prompts of `in` tokens for `out` new tokens (min = max, so
lengths are exact). Output tokens/s = conc * out / wall time of the whole generate (prefill
included, as the served throughput is); prefill time = one forward of one `in`-token prompt.

Usage: hf-serve-bench.py --model DIR --concs 1,16,64 --shapes 1024:256,8192:128 [--json OUT]"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--concs", default="1,16,64")
ap.add_argument("--shapes", default="1024:256,8192:128")
ap.add_argument("--json")
a = ap.parse_args()

t0 = time.time()
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                             attn_implementation="sdpa").cuda().eval()
vocab = model.config.vocab_size
print(f"hf: {a.model} loaded in {time.time() - t0:.1f}s on {torch.cuda.get_device_name()}, "
      f"transformers {__import__('transformers').__version__}, torch {torch.__version__}", flush=True)


def timed(f):
    torch.cuda.synchronize()
    t = time.time()
    with torch.no_grad():
        r = f()
    torch.cuda.synchronize()
    return time.time() - t, r


rows = []
g = torch.Generator(device="cuda").manual_seed(0)
for shape in a.shapes.split(","):
    n_in, n_out = (int(x) for x in shape.split(":"))
    ids1 = torch.randint(0, vocab, (1, n_in), device="cuda", generator=g)
    timed(lambda: model(ids1))
    pre = min(timed(lambda: model(ids1))[0] for _ in range(3))
    print(f"hf prefill {n_in}: {pre * 1e3:.1f} ms", flush=True)
    rows.append({"kind": "prefill", "in": n_in, "ms": pre * 1e3})
    for c in (int(x) for x in a.concs.split(",")):
        ids = torch.randint(0, vocab, (c, n_in), device="cuda", generator=g)
        try:
            wall, out = timed(lambda: model.generate(ids, attention_mask=torch.ones_like(ids),
                                                     max_new_tokens=n_out, min_new_tokens=n_out,
                                                     do_sample=False, pad_token_id=0))
        except torch.OutOfMemoryError:
            print(f"hf generate in={n_in} out={n_out} c={c}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        tps = c * n_out / wall
        rows.append({"kind": "generate", "in": n_in, "out": n_out, "conc": c, "wall_s": wall,
                     "output_tok_s": tps})
        print(f"hf generate in={n_in} out={n_out} c={c}: {wall:.2f}s, {tps:.0f} output tok/s", flush=True)
        del out
        torch.cuda.empty_cache()
if a.json:
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.json, "w"), indent=1)
