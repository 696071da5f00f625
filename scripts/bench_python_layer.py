#!/usr/bin/env python3
"""The workload of the peer script (shared/peers/mooncake_store_bench.py) and of `strata bench store`
for `strata.MooncakeDistributedStore`, with the Rust bench's memory instead of the script's: source and
destination buffers on transparent huge pages, faulted in before anything is timed (what
`strata bench store`'s AlignedBuf does; the peer script's plain `mmap.mmap(-1, n)` buffers are shared
anonymous memory in 4 KiB pages, its destination first touched during the timed reads). So the Python layer and the Rust client differ only in the layer.
Prints the peer script's columns. Used by scripts/bench-python.sh.
"""
import argparse
import ctypes
import mmap
import os
import statistics
import sys
import time

from strata import MooncakeDistributedStore

MB = 1 << 20
HUGE = 2 << 20


class HugeBuf:
    """`size` bytes at a 2 MiB-aligned address inside a private anonymous mapping, MADV_HUGEPAGE,
    touched. (Python's default anonymous mmap is MAP_SHARED, i.e. shmem, which gets no huge pages.)"""

    def __init__(self, size):
        self.m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        self.off = (-base) % HUGE
        self.ptr = base + self.off
        self.size = size
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.m.madvise(mmap.MADV_HUGEPAGE, self.off, size)
        self.m[self.off : self.off + size] = bytes(size)

    def view(self, n):
        return self.m[self.off : self.off + n]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--master", default="127.0.0.1:50051")
    p.add_argument("--sizes", default="65536,262144,1048576,4194304")
    p.add_argument("--round-mb", type=int, default=256)
    p.add_argument("--batch-bytes-mb", type=int, default=32)
    p.add_argument("--read-passes", type=int, default=3)
    p.add_argument("--lat-ops", type=int, default=200)
    p.add_argument("--verify", action="store_true")
    a = p.parse_args()
    store = MooncakeDistributedStore()
    assert store.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", a.master) == 0
    batch_bytes = a.batch_bytes_mb * MB
    src, dst = HugeBuf(batch_bytes), HugeBuf(batch_bytes)
    one = os.urandom(MB)
    for i in range(0, batch_bytes, MB):
        src.m[src.off + i : src.off + i + MB] = one
    assert store.register_buffer(src.ptr, batch_bytes) == 0
    assert store.register_buffer(dst.ptr, batch_bytes) == 0
    run = os.getpid()
    print(f"{'size':>8} {'keys/b':>6} {'PUT GB/s':>9} {'GET GB/s':>9} {'put p50 ms':>10} {'get p50 ms':>10} "
          f"{'exist128 ms':>11} {'1-key put p50/p99 us':>21} {'1-key get p50/p99 us':>21} fails")
    for size in [int(s) for s in a.sizes.split(",")]:
        kpb = max(1, min(128, batch_bytes // size))
        nb = max(1, (a.round_mb * MB) // (size * kpb))
        ptrs = [src.ptr + i * size for i in range(kpb)]
        dptrs = [dst.ptr + i * size for i in range(kpb)]
        sizes = [size] * kpb
        fails, all_keys, put_lat, get_lat = 0, [], [], []
        tp = time.perf_counter()
        for b in range(nb):
            keys = [f"bench_{run}_{size}_{b}_{i}" for i in range(kpb)]
            all_keys.append(keys)
            t = time.perf_counter()
            fails += sum(1 for r in store.batch_put_from(keys, ptrs, sizes) if r != 0)
            put_lat.append(time.perf_counter() - t)
        put_gbs = nb * kpb * size / (time.perf_counter() - tp) / 1e9
        t = time.perf_counter()
        store.batch_is_exist(all_keys[0])
        ex_ms = (time.perf_counter() - t) * 1e3
        tg = time.perf_counter()
        for _ in range(a.read_passes):
            for keys in all_keys:
                t = time.perf_counter()
                fails += sum(1 for r in store.batch_get_into(keys, dptrs, sizes) if r != size)
                get_lat.append(time.perf_counter() - t)
        get_gbs = a.read_passes * nb * kpb * size / (time.perf_counter() - tg) / 1e9
        if a.verify and src.view(kpb * size) != dst.view(kpb * size):
            print("VERIFY FAILED", flush=True)
        for keys in all_keys:
            store.batch_remove(keys, True)
        p1, g1 = [], []
        lat_keys = [f"lat_{run}_{size}_{i}" for i in range(max(1, min(a.lat_ops, (a.round_mb * MB) // size)))]
        for k in lat_keys:
            t = time.perf_counter()
            fails += store.put_from(k, src.ptr, size) != 0
            p1.append(time.perf_counter() - t)
        for k in lat_keys:
            t = time.perf_counter()
            fails += store.get_into(k, dst.ptr, size) != size
            g1.append(time.perf_counter() - t)
        store.batch_remove(lat_keys, True)
        print(f"{size:>8} {kpb:>6} {put_gbs:>9.2f} {get_gbs:>9.2f} {statistics.median(put_lat) * 1e3:>10.2f} "
              f"{statistics.median(get_lat) * 1e3:>10.2f} {ex_ms:>11.2f} {pct(p1, .5) * 1e6:>10.0f}/{pct(p1, .99) * 1e6:<10.0f} "
              f"{pct(g1, .5) * 1e6:>10.0f}/{pct(g1, .99) * 1e6:<10.0f} {fails}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
