"""``StrataStore``: an SGLang HiCache storage backend (the v1 zero-copy interface) on Strata.

Load it into an unmodified SGLang with::

    --enable-hierarchical-cache --hicache-storage-backend dynamic \\
    --hicache-storage-backend-extra-config '{"backend_name": "strata", "module_path": "strata.sglang",
        "class_name": "StrataStore", "interface_v1": 1, "master_server_address": "127.0.0.1:50051"}'

Object keys are those of SGLang's Mooncake backend, which are also those ``strata serve`` writes
(docs/hicache.md): ``[<extra_backend_tag>_][<model>_]<page hash>_<tp_rank>_k`` and ``..._v`` for MHA
models (``_<tp_rank>_<pp_rank>`` with pipeline parallelism; one ``_<pp_rank>_k`` object for MLA), so
SGLang servers and Strata servers on one model share one L3.

extra_config keys read here: ``master_server_address`` (else ``MOONCAKE_MASTER``, else
``STRATA_MASTER``), ``extra_backend_tag``, ``protocol`` (``tcp``), ``device_name``, ``local_hostname``,
``global_segment_size`` (bytes or ``"4gb"``; default 0: a pure client, the data lives on ``strata
store`` nodes; split over tp x pp ranks as SGLang's Mooncake backend does). Other keys are ignored.

Without SGLang importable (no torch), the class still works on any host pool object that offers
SGLang's ``kv_buffer`` / ``page_size`` / ``get_page_buffer_meta`` / ``get_ksize_per_token``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ._native import MooncakeDistributedStore

logger = logging.getLogger(__name__)

try:  # The real base class when SGLang is importable, so that its factory accepts the class.
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except Exception:  # pragma: no cover - exercised where SGLang (and torch) is absent
    from abc import ABC as _Base


@dataclass
class _Metrics:
    """The fields of SGLang's ``StorageMetrics`` (used when it cannot be imported)."""

    prefetch_pgs: List[int] = field(default_factory=list)
    backup_pgs: List[int] = field(default_factory=list)
    prefetch_bandwidth: List[float] = field(default_factory=list)
    backup_bandwidth: List[float] = field(default_factory=list)


def _parse_size(v: Any) -> int:
    if isinstance(v, str):
        s = v.strip().lower()
        for suffix, mult in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
            if s.endswith(suffix):
                return int(float(s[: -len(suffix)]) * mult)
        return int(s)
    return int(v or 0)


class StrataStore(_Base):
    """SGLang ``HiCacheStorage`` over a Strata cluster, v1 zero-copy interface."""

    def __init__(self, storage_config: Any = None, kwargs: Optional[dict] = None, *, store=None):
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        cfg = storage_config
        self.tp_rank = getattr(cfg, "tp_rank", 0) or 0
        tp_size = getattr(cfg, "tp_size", 1) or 1
        self.pp_rank = getattr(cfg, "pp_rank", 0) or 0
        pp_size = getattr(cfg, "pp_size", 1) or 1
        self.is_mla = bool(getattr(cfg, "is_mla_model", False))
        if getattr(cfg, "should_split_heads", False):
            raise ValueError("StrataStore: tp_lcm_size head splitting is not supported")
        if pp_size > 1:
            self.mha_suffix, self.mla_suffix = f"{self.tp_rank}_{self.pp_rank}", f"{self.pp_rank}"
        else:
            self.mha_suffix, self.mla_suffix = f"{self.tp_rank}", ""
        parts = []
        if extra.get("extra_backend_tag") is not None:
            parts.append(str(extra["extra_backend_tag"]))
        model = getattr(cfg, "model_name", None)
        if model:
            parts.append("-".join(model.split("/")))
        self.prefix = "_".join(parts) + "_" if parts else ""
        self.enable_storage_metrics = bool(getattr(cfg, "enable_storage_metrics", False))
        self._metrics = _Metrics()
        self.gb_per_page = None
        self.mem_pool_host = None
        self._registered = []
        if store is None:
            master = (
                extra.get("master_server_address")
                or os.environ.get("MOONCAKE_MASTER")
                or os.environ.get("STRATA_MASTER")
            )
            if not master:
                raise ValueError(
                    "StrataStore: no Strata master: set master_server_address in "
                    "--hicache-storage-backend-extra-config, MOONCAKE_MASTER or STRATA_MASTER"
                )
            segment = _parse_size(extra.get("global_segment_size", 0)) // (tp_size * pp_size)
            store = MooncakeDistributedStore()
            rc = store.setup(
                extra.get("local_hostname", "localhost"),
                extra.get("metadata_server", "P2PHANDSHAKE"),
                segment,
                0,
                extra.get("protocol", "tcp"),
                extra.get("device_name", "") or "",
                master,
            )
            if rc != 0:
                raise RuntimeError(f"StrataStore: cannot reach the Strata master {master} (code {rc})")
        self.store = store

    # ---------------------------------------------------------------- keys and buffers

    def _page_keys(self, keys: List[str]) -> List[str]:
        """The object keys of each page hash, in the order of ``get_page_buffer_meta``."""
        if self.is_mla:
            return [f"{self.prefix}{k}_{self.mla_suffix}_k" for k in keys]
        out = []
        for k in keys:
            base = f"{self.prefix}{k}_{self.mha_suffix}"
            out.append(base + "_k")
            out.append(base + "_v")
        return out

    def _per_page(self) -> int:
        return 1 if self.is_mla else 2

    def register_mem_pool_host(self, mem_pool_host):
        self.mem_pool_host = mem_pool_host
        buffers = [getattr(mem_pool_host, "kv_buffer", None)]
        hybrid = getattr(mem_pool_host, "get_hybrid_pool_buffer", None)
        if callable(hybrid):
            buffers = list(hybrid())
        for buf in buffers:
            if buf is None:
                continue
            ptr = int(buf.data_ptr())
            size = int(buf.numel()) * int(buf.element_size())
            if size == 0:
                continue
            rc = self.store.register_buffer(ptr, size)
            if rc != 0:
                raise RuntimeError(f"StrataStore: registering the host KV pool failed (code {rc})")
            self._registered.append(ptr)
        ksize = getattr(mem_pool_host, "get_ksize_per_token", None)
        if callable(ksize):
            self.gb_per_page = ksize() * mem_pool_host.page_size / (1 << 30)

    def _meta(self, keys: List[str], host_indices):
        if self.mem_pool_host is None:
            raise RuntimeError("StrataStore: register_mem_pool_host was not called")
        page_size = self.mem_pool_host.page_size
        if len(keys) == 0 or len(keys) != len(host_indices) // page_size:
            raise ValueError(
                f"StrataStore: {len(keys)} keys for {len(host_indices)} host slots of page size {page_size}"
            )
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        object_keys = self._page_keys(keys)
        if len(ptrs) != len(object_keys):
            raise RuntimeError(
                f"StrataStore: the host pool gives {len(ptrs)} buffers for {len(object_keys)} objects "
                "(use the page_first or page_first_direct layout)"
            )
        return object_keys, [int(p) for p in ptrs], [int(s) for s in sizes]

    def _pages(self, ok: List[bool]) -> List[bool]:
        n = self._per_page()
        return [all(ok[i : i + n]) for i in range(0, len(ok), n)]

    def _record(self, pages, seconds, metric_pgs, metric_bw):
        if self.enable_storage_metrics and pages and seconds > 0 and self.gb_per_page:
            metric_pgs.append(pages)
            metric_bw.append(pages / seconds * self.gb_per_page)

    # ---------------------------------------------------------------- v1 zero-copy interface

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """How many pages, from the first, have all their objects in the store."""
        if not keys:
            return 0
        n = self._per_page()
        found = self.store.batch_is_exist(self._page_keys(keys))
        for i in range(len(keys)):
            if not all(r == 1 for r in found[i * n : (i + 1) * n]):
                return i
        return len(keys)

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Reads each page's objects into its host slots; per page, whether all arrived whole."""
        object_keys, ptrs, sizes = self._meta(keys, host_indices)
        t = time.perf_counter()
        lens = self.store.batch_get_into(object_keys, ptrs, sizes)
        self._record(len(keys), time.perf_counter() - t, self._metrics.prefetch_pgs, self._metrics.prefetch_bandwidth)
        return self._pages([l == s for l, s in zip(lens, sizes)])

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Writes each page's objects from its host slots (objects already stored are kept)."""
        object_keys, ptrs, sizes = self._meta(keys, host_indices)
        present = self.store.batch_is_exist(object_keys)
        ok = [p == 1 for p in present]
        todo = [i for i, p in enumerate(present) if p != 1]
        if todo:
            t = time.perf_counter()
            codes = self.store.batch_put_from(
                [object_keys[i] for i in todo], [ptrs[i] for i in todo], [sizes[i] for i in todo]
            )
            pages = len({i // self._per_page() for i in todo})
            self._record(pages, time.perf_counter() - t, self._metrics.backup_pgs, self._metrics.backup_bandwidth)
            for i, c in zip(todo, codes):
                ok[i] = c == 0
        return self._pages(ok)

    # ---------------------------------------------------------------- the older interface
    # Raw object keys with (pointer, size) destinations, as SGLang's Mooncake backend takes them.

    def exists(self, key: str) -> bool:
        return self.store.is_exist(key) == 1

    def get(self, key, target_location=None, target_sizes=None) -> bool:
        if target_location is None or target_sizes is None:
            raise ValueError("StrataStore.get needs target_location and target_sizes (zero copy only)")
        return self.store.get_into(key, int(target_location), int(target_sizes)) >= 0

    def batch_get(self, keys, target_locations=None, target_sizes=None) -> int:
        if target_locations is None or target_sizes is None:
            raise ValueError("StrataStore.batch_get needs target_locations and target_sizes")
        if not keys:
            return 0
        lens = self.store.batch_get_into(list(keys), [int(p) for p in target_locations], [int(s) for s in target_sizes])
        n = self._per_page()
        for i, l in enumerate(lens):
            if l < 0:
                return i // n
        return len(keys) // n

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        if target_location is None or target_sizes is None:
            raise ValueError("StrataStore.set needs target_location and target_sizes (zero copy only)")
        return self.store.put_from(key, int(target_location), int(target_sizes)) == 0

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        if target_locations is None or target_sizes is None:
            raise ValueError("StrataStore.batch_set needs target_locations and target_sizes")
        if not keys:
            return False
        codes = self.store.batch_put_from(list(keys), [int(p) for p in target_locations], [int(s) for s in target_sizes])
        return all(c == 0 for c in codes)

    # ---------------------------------------------------------------- housekeeping

    def clear(self) -> None:
        self.store.remove_all()

    def get_stats(self):
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except Exception:
            StorageMetrics = _Metrics
        out = StorageMetrics()
        for name in ("prefetch_pgs", "backup_pgs", "prefetch_bandwidth", "backup_bandwidth"):
            getattr(out, name).extend(getattr(self._metrics, name))
            getattr(self._metrics, name).clear()
        return out

    def close(self):
        for ptr in self._registered:
            try:
                self.store.unregister_buffer(ptr)
            except RuntimeError:
                pass
        self._registered.clear()
        self.store.close()
