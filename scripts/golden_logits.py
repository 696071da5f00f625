#!/usr/bin/env python3
"""Golden logits for the made models, from Hugging Face `transformers` (CPU, float32).

Usage:
    strata make-model --out golden-models/llama --arch llama   # likewise qwen2, qwen3 (seed 0, tiny, f32)
    python3 scripts/golden_logits.py golden-models tests/fixtures/golden

For every architecture it writes OUT/<arch>.json with the prompt token ids (from the Python `tokenizers`
package, which the Rust tokenizer must match id for id) and the logits at a few positions. The Rust test
`server/tests/golden.rs` regenerates the same model from its seed and compares.
"""
import json
import os
import sys

import torch
import tokenizers
import transformers

LONG = (
    "Once upon a time there was a king who wanted to know everything. He asked his advisers to write "
    "down all that they knew, and they wrote for seven years. "
) * 6 + "The end of the story is"

PROMPTS = [
    "Let me tell you a long story ",
    "Hello world! How are you today? 😀 ünïcödé",
    LONG,
]


def main(models_dir, out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    for arch in ["llama", "qwen2", "qwen3"]:
        path = os.path.join(models_dir, arch)
        tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        cases = []
        for prompt in PROMPTS:
            ids = tok.encode(prompt).ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            n = len(ids)
            positions = sorted(set([0, n // 2, n - 1] + list(range(63, n, 128))))
            cases.append(
                {
                    "prompt": prompt,
                    "ids": ids,
                    "positions": positions,
                    "logits": [[float("%.7g" % x) for x in logits[p].tolist()] for p in positions],
                }
            )
            print(arch, "prompt tokens", n, "argmax last", int(logits[-1].argmax()))
        fixture = {
            "arch": arch,
            "make_model": {"size": "tiny", "seed": 0, "dtype": "f32"},
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "cases": cases,
        }
        with open(os.path.join(out_dir, arch + ".json"), "w") as f:
            json.dump(fixture, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
