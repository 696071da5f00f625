"""One L3 for SGLang and Strata: `strata serve` (HiCache with the cluster as L3) and
`strata.sglang.StrataStore` derive the same object keys, and each finds the other's pages.

1. `strata serve` answers a prompt and writes its pages to the store.
2. The backend, given SGLang's page hashes of the same tokens (SHA-256 chain, docs/hicache.md),
   finds every page (prefix count) and reads each object whole into a page_first host pool.
3. The store is cleared; the backend writes the pages back from its host pool.
4. A fresh `strata serve` (empty L1/L2) answers the prompt with the pages the backend wrote:
   same output, and the prefix served from L3.
"""

import hashlib
import json
import random
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from hostpool import PlainHostPool
from procs import strata_bin

PAGE = 16
MODEL_NAME = "strata-test/tiny-llama"


def page_hashes(tokens, page_size):
    out, prev = [], b""
    for i in range(0, len(tokens) - len(tokens) % page_size, page_size):
        h = hashlib.sha256(prev)
        for t in tokens[i : i + page_size]:
            h.update(int(t).to_bytes(4, "little"))
        prev = h.digest()
        out.append(prev.hex())
    return out


class Serve:
    def __init__(self, model: Path, master: str, log: Path):
        extra = json.dumps({"master_server_address": master, "prefetch_threshold": 32})
        self.p = subprocess.Popen(
            [str(strata_bin()), "serve", "--model-path", str(model), "--port", "0", "--log-level", "info",
             "--page-size", str(PAGE), "--served-model-name", MODEL_NAME, "--enable-hierarchical-cache",
             "--hicache-storage-backend", "mooncake", "--hicache-storage-prefetch-policy", "wait_complete",
             "--hicache-storage-backend-extra-config", extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        found = threading.Event()

        def read():
            for line in self.p.stderr:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.base = m.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120):
            self.stop()
            raise RuntimeError("strata serve did not start:\n" + "".join(self.lines[-50:]))

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def metric(self, name):
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"sglang:{name} "):
                    return float(line.split()[1])
        raise KeyError(name)

    def generate(self, ids):
        v = self.post("/generate", {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}})
        return v["output_ids"], v["meta_info"].get("cached_tokens", 0)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def test_server_and_backend_share_l3_pages(cluster, tmp_path, seed):
    from strata.sglang import StrataStore

    rng = random.Random(seed + 20)
    model = tmp_path / "model"
    subprocess.run([str(strata_bin()), "make-model", "--out", str(model), "--arch", "llama", "--size", "tiny",
                    "--seed", "0"], check=True, capture_output=True)
    cfg = json.loads((model / "config.json").read_text())
    layers = cfg["num_hidden_layers"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    prompt = [rng.randrange(3, 500) for _ in range(300)]
    a = Serve(model, cluster.addr, tmp_path / "a.log")
    try:
        want, cached = a.generate(prompt)
        assert cached == 0
        # 300 prompt + 7 computed output tokens: 19 full pages go to the store.
        end = time.time() + 30
        while a.metric("backuped_tokens_total") < 19 * PAGE and time.time() < end:
            time.sleep(0.05)
        assert a.metric("backuped_tokens_total") >= 19 * PAGE
    finally:
        a.stop()

    tokens = prompt + want
    hs = page_hashes(tokens, PAGE)[:19]
    storage_config = type("Cfg", (), dict(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, is_mla_model=False, enable_storage_metrics=False,
        model_name=MODEL_NAME, should_split_heads=False,
        extra_config={"master_server_address": cluster.addr, "interface_v1": 1}))()
    backend = StrataStore(storage_config, {})
    pool = PlainHostPool(pages=19, page_size=PAGE, layers=layers, heads=kv_heads, head_dim=head_dim, elem=4)
    backend.register_mem_pool_host(pool)
    # The server's pages under SGLang's keys: all 19, and every object exactly one page long.
    assert backend.batch_exists(hs) == 19
    assert backend.batch_exists(hs + page_hashes(tokens + [1] * PAGE, PAGE)[19:20]) == 19
    assert backend.batch_get_v1(hs, pool.indices(range(19))) == [True] * 19
    assert any(b != 0 for b in pool.k(3)), "a K page read back as zeros"

    # The other way: pages written by the backend are what a fresh server finds.
    backend.clear()
    assert backend.batch_exists(hs) == 0
    assert backend.batch_set_v1(hs, pool.indices(range(19))) == [True] * 19
    b = Serve(model, cluster.addr, tmp_path / "b.log")
    try:
        out, cached = b.generate(prompt)
        assert out == want, "pages written by the backend changed the server's answer"
        assert cached >= 288, f"the server did not reuse the backend's pages (cached {cached})"
        assert b.metric("prefetched_tokens_total") >= 288
    finally:
        b.stop()
    backend.clear()
    backend.close()
