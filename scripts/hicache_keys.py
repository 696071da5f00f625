#!/usr/bin/env python3
"""Writes tests/fixtures/hicache_keys.json: L3 page keys computed with Python's hashlib the way
SGLang's HiCache derives them (SHA-256 over the previous page's raw digest, then each token id as
a little-endian u32; hex), plus the Mooncake backend's object names. The Rust key derivation
(server/src/hicache/keys.rs) is tested against this file. Run: python3 scripts/hicache_keys.py
"""
import hashlib
import json
import os
import random


def page_hashes(tokens, page_size):
    out, prev = [], None
    for i in range(0, len(tokens) - len(tokens) % page_size, page_size):
        h = hashlib.sha256()
        if prev is not None:
            h.update(bytes.fromhex(prev))
        for t in tokens[i:i + page_size]:
            h.update(t.to_bytes(4, byteorder="little", signed=False))
        prev = h.hexdigest()
        out.append(prev)
    return out


def object_keys(hashes, tag, model, rank):
    parts = ([str(tag)] if tag is not None else []) + (["-".join(model.split("/"))] if model else [])
    prefix = "_".join(parts) + "_" if parts else ""
    return [f"{prefix}{h}_{rank}_{kv}" for h in hashes for kv in ("k", "v")]


def main():
    rng = random.Random(20261202)
    cases = []
    for page_size, n, tag, model, rank in [
        (1, 3, None, None, 0),
        (4, 10, None, "meta-llama/Llama-3.1-8B", 0),
        (16, 70, "tenant-a", "/models/tiny", 1),
        (64, 130, None, "", 0),
    ]:
        tokens = [rng.randrange(0, 152064) for _ in range(n)]
        hashes = page_hashes(tokens, page_size)
        cases.append({
            "page_size": page_size, "tokens": tokens, "extra_backend_tag": tag,
            "model_name": model, "tp_rank": rank, "hashes": hashes,
            "keys": object_keys(hashes, tag, model, rank),
        })
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hicache_keys.json")
    with open(out, "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
