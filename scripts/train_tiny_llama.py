#!/usr/bin/env python3
"""Trains a small Llama-architecture checkpoint on the GPU machine, with no downloads, so the bf16
runner can be compared with transformers on a TRAINED model: made (random-weight) models have
flat logits, where bf16 rounding alone flips the top-1 token on ~5 % of positions (transformers'
own bf16 forward against its fp32 one), so a top-1 agreement target is only meaningful on a
model whose logits have real margins.

Corpus: the .py files of the machine's Python standard library and site-packages (sorted, at most
--max-files; every 20th file held out for evaluation). Tokenizer: byte-level BPE trained on the
corpus with `tokenizers`, saved as tokenizer.json (what `strata serve` loads). Model: Llama (default
8 layers, hidden 1024, GQA 8/2 heads of 128), trained with AdamW in bf16 autocast for a fixed time
budget, saved as bf16 safetensors. Also writes eval_prompts.json: held-out token slices of the
requested lengths, which scripts/hf_runner_compare.py uses instead of random tokens when the file
exists.

Usage: train_tiny_llama.py --out DIR [--seconds 90] [--lens 16,100,512,1024,2048,4096]"""
import argparse
import glob
import json
import math
import os
import sysconfig
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--seconds", type=float, default=90.0)
ap.add_argument("--vocab", type=int, default=8192)
ap.add_argument("--hidden", type=int, default=1024)
ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--head-dim", type=int, default=128)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--lens", default="16,100,512,1024,2048,4096")
ap.add_argument("--seed", type=int, default=1234)
ap.add_argument("--max-files", type=int, default=6000)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
torch.manual_seed(a.seed)
print(f"train_tiny_llama: seed {a.seed}", flush=True)

t0 = time.time()
roots = [sysconfig.get_paths()[k] for k in ("stdlib", "purelib")]
files = sorted({f for r in roots for f in glob.glob(os.path.join(r, "**", "*.py"), recursive=True)})
files = files[:a.max_files]
train_txt, eval_txt = [], []
for i, f in enumerate(files):
    try:
        s = open(f, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        continue
    (eval_txt if i % 20 == 0 else train_txt).append(s)
print(f"corpus: {len(train_txt)} train files ({sum(map(len, train_txt)) / 1e6:.1f} MB), "
      f"{len(eval_txt)} held out", flush=True)

BOS, EOS = "<|bos|>", "<|eos|>"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=[BOS, EOS],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(train_txt[::4], trainer=trainer)
tok.save(os.path.join(a.out, "tokenizer.json"))
bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)


def encode(texts):
    ids = []
    for e in tok.encode_batch(texts):
        ids.append(bos)
        ids.extend(e.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


train_ids, eval_ids = encode(train_txt), encode(eval_txt)
print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(train_ids) / 1e6:.1f}M train tokens, "
      f"{len(eval_ids) / 1e6:.2f}M held out [{time.time() - t0:.0f}s]", flush=True)

cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=a.hidden,
                  intermediate_size=3 * a.hidden, num_hidden_layers=a.layers,
                  num_attention_heads=a.hidden // a.head_dim,
                  num_key_value_heads=max(1, a.hidden // a.head_dim // 4), head_dim=a.head_dim,
                  max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos)
dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of the script
model = LlamaForCausalLM(cfg).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
gen = torch.Generator().manual_seed(a.seed)
data = train_ids.to(dev)


def batch(src, n):
    starts = torch.randint(0, len(src) - a.seq - 1, (n,), generator=gen)
    x = torch.stack([src[s:s + a.seq] for s in starts.tolist()])
    return x


t1, step, loss_v = time.time(), 0, float("nan")
model.train()
while time.time() - t1 < a.seconds:
    frac = (time.time() - t1) / a.seconds
    lr = 1e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    for g in opt.param_groups:
        g["lr"] = lr
    x = batch(data, a.batch)
    with torch.autocast(dev, dtype=torch.bfloat16):
        loss = model(input_ids=x, labels=x).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step += 1
    if step % 200 == 0:
        loss_v = loss.item()
        print(f"step {step}: loss {loss_v:.3f} lr {lr:.2e} [{time.time() - t1:.0f}s]", flush=True)

model.eval()
model = model.to(torch.bfloat16)
ev = eval_ids.to(dev)
with torch.no_grad():
    x = torch.stack([ev[i * a.seq:(i + 1) * a.seq] for i in range(min(8, len(ev) // a.seq))])
    out = model(input_ids=x, labels=x)
    p = torch.softmax(out.logits.float(), -1)
    top2 = torch.topk(out.logits.float(), 2, -1).values
    print(f"trained {step} steps in {time.time() - t1:.0f}s: held-out loss {out.loss.item():.3f}, "
          f"mean top-1 probability {p.max(-1).values.mean().item():.3f}, "
          f"median top-1/top-2 logit margin {(top2[..., 0] - top2[..., 1]).median().item():.2f}",
          flush=True)
model.save_pretrained(a.out, safe_serialization=True)
json.dump({"bos_token": BOS, "eos_token": EOS, "model_max_length": 8192,
           "tokenizer_class": "PreTrainedTokenizerFast"},
          open(os.path.join(a.out, "tokenizer_config.json"), "w"))
lens = [int(n) for n in a.lens.split(",")]
prompts, off = [], 0
for n in lens:
    off = (off + 7919) % max(1, len(eval_ids) - n)
    prompts.append(eval_ids[off:off + n].tolist())
json.dump(prompts, open(os.path.join(a.out, "eval_prompts.json"), "w"))
print(f"saved {a.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
      f"eval prompts of {lens} held-out tokens [{time.time() - t0:.0f}s in all]", flush=True)
