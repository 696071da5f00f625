"""Strata's cluster client for Python.

``strata.MooncakeDistributedStore`` has the methods and return conventions of Mooncake 0.3.x's
``mooncake.store.MooncakeDistributedStore`` over a Strata cluster (``strata master`` + ``strata
store``), so switching is one import line. ``strata.sglang.StrataStore`` is an SGLang HiCache
storage backend on top of it (load it with ``--hicache-storage-backend dynamic``).
"""

from ._native import MAX_VALUE_LEN, MooncakeDistributedStore, __version__
from .replicate import ReplicateConfig

__all__ = ["MooncakeDistributedStore", "ReplicateConfig", "MAX_VALUE_LEN", "__version__"]
