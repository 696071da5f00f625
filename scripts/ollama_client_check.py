#!/usr/bin/env python3
"""Drives a running `strata serve` with Ollama's own Python client (`pip install ollama`): lists,
shows and runs the served model (chat whole and streamed, generate), and checks the streamed
pieces add up to the whole greedy answer and that model management is refused.

Usage: scripts/ollama_client_check.py [HOST] (default http://127.0.0.1:30000)
"""
import sys

import ollama

host = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:30000"
c = ollama.Client(host=host)
models = c.list().models
assert len(models) == 1 and models[0].details.format == "safetensors", models
name = models[0].model
opts = {"num_predict": 6, "temperature": 0}
msgs = [{"role": "user", "content": "hi"}]
whole = c.chat(model=name, messages=msgs, options=opts)
assert whole.done and whole.eval_count == 6 and whole.done_reason == "length", whole
parts = [p.message.content for p in c.chat(model=name, messages=msgs, options=opts, stream=True)]
assert "".join(parts) == whole.message.content, (parts, whole.message.content)
g = c.generate(model=name, prompt="Once", options={"num_predict": 5, "temperature": 0})
assert g.done and g.eval_count == 5, g
info = c.show(name).modelinfo
assert info["general.parameter_count"] > 0, info
assert c.ps().models[0].digest == models[0].digest
try:
    c.pull("llama3")
    raise SystemExit("pull was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 501, e
print(f"ollama client {ollama.__name__}: list, show, ps, chat (whole = streamed), generate, pull refused: PASS")
