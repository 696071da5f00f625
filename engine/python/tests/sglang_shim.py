"""Imports SGLang's real storage-backend modules (hicache_storage.py, storage/backend_factory.py)
from the installed sglang wheel without running `sglang/__init__.py`, which needs torch, numpy and
sgl-kernel. When torch itself is missing, a stand-in module named `torch` provides the one name
those two files touch at import time (`torch.Tensor`, in annotations).

What this runs of SGLang: its HiCacheStorage base class, its HiCacheStorageConfig, and its
StorageBackendFactory's dynamic loading (`--hicache-storage-backend dynamic`). What it does not:
SGLang's scheduler, HiCacheController, or a torch host pool (tests use tests/hostpool.py).
"""

import importlib
import importlib.util
import sys
import types


def load():
    """(hicache_storage module, StorageBackendFactory), or raises ImportError saying why."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sglang wheel is not installed (pip install --no-deps sglang)")
    root = list(spec.submodule_search_locations)[0]
    try:
        import torch  # noqa: F401
    except Exception:
        stub = types.ModuleType("torch")
        stub.Tensor = type("Tensor", (), {})
        stub.__strata_stub__ = True
        sys.modules["torch"] = stub
    for name, sub in (("sglang", ""), ("sglang.srt", "/srt"), ("sglang.srt.mem_cache", "/srt/mem_cache"),
                      ("sglang.srt.mem_cache.storage", "/srt/mem_cache/storage")):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [root + sub]
            sys.modules[name] = m
    hs = importlib.import_module("sglang.srt.mem_cache.hicache_storage")
    bf = importlib.import_module("sglang.srt.mem_cache.storage.backend_factory")
    return hs, bf.StorageBackendFactory
