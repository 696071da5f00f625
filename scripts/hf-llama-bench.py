#!/usr/bin/env python3
"""Hugging Face transformers baseline for `strata gpu bench`: a Llama-3-8B-shaped model with
random bf16 weights made on the GPU (no download), greedy generation from a 1024-token random
prompt at batch 1 and 32. Decode step time = (time for 1+N new tokens - time for 1) / N, so the
prefill is excluded, matching strata's per-step decode number at ctx 1024.
--prefill 2048,8192: one forward of one random prompt of each length (SDPA attention; best of 3
after a warm-up), with logits for every position (what `model(ids)` does) and for the last only
(as `strata gpu bench` prefill computes); --batches "" skips the decode part."""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--json")
ap.add_argument("--batches", default="1,32")
ap.add_argument("--prompt", type=int, default=1024)
ap.add_argument("--new", type=int, default=32)
ap.add_argument("--prefill", default="")
a = ap.parse_args()

cfg = LlamaConfig(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    bos_token_id=None, eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
torch.set_default_dtype(torch.bfloat16)
t0 = time.time()
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model.eval()
torch.cuda.synchronize()
print(f"hf: model ready in {time.time() - t0:.1f}s on {torch.cuda.get_device_name()}, "
      f"transformers {__import__('transformers').__version__}, torch {torch.__version__}")


def gen(ids, n):
    torch.cuda.synchronize()
    t = time.time()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n
    return time.time() - t


rows = []
for n in [int(x) for x in a.prefill.split(",") if x]:
    ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
    best = {}
    for keep, label in [(0, "all"), (1, "last")]:
        def fwd():
            torch.cuda.synchronize()
            t = time.time()
            with torch.no_grad():
                model(ids, logits_to_keep=keep)
            torch.cuda.synchronize()
            return time.time() - t
        fwd()
        best[label] = min(fwd() for _ in range(3)) * 1e3
        torch.cuda.empty_cache()
    rows.append({"prefill": n, "ms_all_logits": best["all"], "ms_last_logits": best["last"]})
    print(f"hf prefill {n}: {best['all']:.1f} ms (logits of every position), "
          f"{best['last']:.1f} ms (last position only)", flush=True)
for b in [int(x) for x in a.batches.split(",") if x]:
    ids = torch.randint(0, cfg.vocab_size, (b, a.prompt), device="cuda")
    gen(ids, 2)  # warm-up
    t1 = min(gen(ids, 1) for _ in range(2))
    tn = min(gen(ids, 1 + a.new) for _ in range(2))
    step = (tn - t1) / a.new * 1e3
    rows.append({"batch": b, "prompt": a.prompt, "step_ms": step, "tokens_per_s": b / step * 1e3,
                 "prefill_plus_first_ms": t1 * 1e3})
    print(f"hf decode b{b} ctx{a.prompt}: {step:.2f} ms/step, {b / step * 1e3:.0f} tok/s "
          f"(prefill+1st token {t1 * 1e3:.0f} ms)")
if a.json:
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.json, "w"), indent=1)
