"""`strata.sglang.StrataStore` against SGLang's abstract interface (HiCacheStorage, v1 zero-copy)
and SGLang's own dynamic backend loader, with a plain-memory host pool (tests/hostpool.py).

SGLang's modules are loaded from the installed sglang wheel by tests/sglang_shim.py (which says
what is and is not run of SGLang). Without the sglang wheel these tests are reported as skipped,
with the reason, unless STRATA_REQUIRE_SGLANG=1 makes that a failure.
"""

import os
import random

import pytest

from hostpool import PlainHostPool

try:
    import sglang_shim

    HS, FACTORY = sglang_shim.load()
    MISSING = None
except Exception as e:  # noqa: BLE001
    HS, FACTORY, MISSING = None, None, f"SGLang's storage modules not importable: {e}"

if MISSING and os.environ.get("STRATA_REQUIRE_SGLANG") == "1":
    raise RuntimeError(MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def config(master, tp_rank=0, model="org/tiny-llama", tag=None, **extra):
    ec = {"backend_name": "strata", "module_path": "strata.sglang", "class_name": "StrataStore",
          "interface_v1": 1, "master_server_address": master, **extra}
    if tag is not None:
        ec["extra_backend_tag"] = tag
    return HS.HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=True, is_page_first_layout=True,
        model_name=model, extra_config=ec)


def hashes(rng, n):
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


def test_sglang_dynamic_loader_builds_the_backend(cluster):
    from strata.sglang import StrataStore

    assert issubclass(StrataStore, HS.HiCacheStorage), "StrataStore must subclass SGLang's HiCacheStorage"
    pool = PlainHostPool(pages=4)
    backend = FACTORY.create_backend("dynamic", config(cluster.addr), pool)
    assert type(backend).__name__ == "StrataStore"
    backend.register_mem_pool_host(pool)
    backend.close()


def test_v1_interface_contract(cluster, seed):
    from strata.sglang import StrataStore

    rng = random.Random(seed + 10)
    backend = FACTORY.create_backend("dynamic", config(cluster.addr, tag="t1"), None)
    backend.clear()
    pool = PlainHostPool(pages=16)
    pages = [(rng.randbytes(pool.page_bytes), rng.randbytes(pool.page_bytes)) for _ in range(16)]
    for p, (k, v) in enumerate(pages):
        pool.write(p, k, v)
    backend.register_mem_pool_host(pool)
    hs = hashes(rng, 8)
    assert backend.batch_exists(hs) == 0
    assert backend.batch_set_v1(hs, pool.indices(range(8))) == [True] * 8
    # Keys: <tag>_<model with / -> ->_<hash>_<tp_rank>_k|v, exactly.
    assert backend.store.is_exist(f"t1_org-tiny-llama_{hs[0]}_0_k") == 1
    assert backend.store.is_exist(f"t1_org-tiny-llama_{hs[7]}_0_v") == 1
    # Prefix-count semantics: a missing object ends the prefix.
    assert backend.batch_exists(hs) == 8
    assert backend.store.remove(f"t1_org-tiny-llama_{hs[5]}_0_k") == 0
    assert backend.batch_exists(hs) == 5
    assert backend.batch_exists(hs[:3] + hashes(rng, 1) + hs[3:]) == 3
    # Reads land in other host slots byte for byte; a missing page reads False.
    got = backend.batch_get_v1(hs[:7], pool.indices(range(8, 15)))
    assert got == [True] * 5 + [False, True]
    for i in (0, 4, 6):
        assert pool.k(8 + i) == pages[i][0] and pool.v(8 + i) == pages[i][1]
    # Setting pages again writes only what is missing and reports every page.
    assert backend.batch_set_v1(hs, pool.indices(range(8))) == [True] * 8
    assert backend.batch_exists(hs) == 8
    # Another TP rank's objects are separate keys.
    other = StrataStore(config(cluster.addr, tp_rank=1, tag="t1"))
    other.register_mem_pool_host(pool)
    assert other.batch_exists(hs) == 0
    other.close()
    # Wrong shapes are exceptions, not corrupt transfers.
    with pytest.raises(ValueError):
        backend.batch_get_v1(hs[:2], pool.indices([0]))
    stats = backend.get_stats()
    assert sum(stats.backup_pgs) >= 8 and sum(stats.prefetch_pgs) == 7
    assert backend.get_stats().backup_pgs == []
    backend.clear()
    assert backend.batch_exists(hs) == 0
    backend.close()


def test_older_interface_methods(cluster, seed):
    rng = random.Random(seed + 11)
    backend = FACTORY.create_backend("dynamic", config(cluster.addr), None)
    pool = PlainHostPool(pages=4)
    pool.write(0, rng.randbytes(pool.page_bytes), rng.randbytes(pool.page_bytes))
    backend.register_mem_pool_host(pool)
    ptr = pool.buf.ptr
    n = pool.page_bytes
    assert backend.set("raw-a", None, ptr, n) is True
    assert backend.exists("raw-a") and not backend.exists("raw-missing")
    assert backend.get("raw-a", ptr + n, n) is True
    assert pool.k(1) == pool.k(0)
    assert backend.batch_set(["raw-b", "raw-c"], None, [ptr, ptr + n], [n, n]) is True
    assert backend.batch_get(["raw-b", "raw-c", "raw-x", "raw-y"], [ptr + 2 * n, ptr + 3 * n, ptr + 4 * n, ptr + 5 * n], [n, n, n, n]) == 1
    assert backend.get("raw-missing", ptr, n) is False
    backend.clear()
    backend.close()


def test_no_master_is_a_clear_error(monkeypatch):
    from strata.sglang import StrataStore

    monkeypatch.delenv("MOONCAKE_MASTER", raising=False)
    monkeypatch.delenv("STRATA_MASTER", raising=False)
    cfg = config(None)
    cfg.extra_config.pop("master_server_address")
    with pytest.raises(ValueError, match="MOONCAKE_MASTER"):
        StrataStore(cfg)
