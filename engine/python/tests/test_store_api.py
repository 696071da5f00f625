"""`strata.MooncakeDistributedStore` against a real Strata master + store node: every method's
semantics (Mooncake 0.3.x return conventions), byte-exact zero-copy paths, and bad input."""

import random
import socket
import threading
import time

import pytest

import strata
from buffers import Buf

MB = 1 << 20


def test_put_get_roundtrip_and_existing_keys(store, seed):
    rng = random.Random(seed)
    v = rng.randbytes(100_000)
    assert store.put("k1", v) == 0
    assert store.get("k1") == v
    # An existing key: 0, and the first value stays.
    assert store.put("k1", b"other") == 0
    assert store.get("k1") == v
    assert store.get_size("k1") == len(v)
    assert store.is_exist("k1") == 1
    # Any buffer-protocol value.
    assert store.put("ba", bytearray(b"xyz")) == 0 and store.get("ba") == b"xyz"
    assert store.put("mv", memoryview(b"abcd")) == 0 and store.get("mv") == b"abcd"


def test_missing_keys(store):
    assert store.get("nope") == b""
    assert store.get_size("nope") == -704
    assert store.is_exist("nope") == 0
    assert store.remove("nope") == -704
    assert store.batch_is_exist(["nope", "nope2"]) == [0, 0]
    assert store.batch_is_exist([]) == []


def test_batches(store, seed):
    rng = random.Random(seed + 1)
    vals = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(9)]
    keys = [f"b{i}" for i in range(9)]
    assert store.put_batch(keys, vals) == 0
    assert store.get_batch(keys + ["missing"]) == vals + [b""]
    assert store.batch_is_exist(["b0", "x", "b8"]) == [1, 0, 1]
    assert store.put_batch(["y"], [b"1", b"2"]) == -600
    assert store.batch_remove(["b0", "x"], True) == [0, -704]
    assert store.batch_is_exist(["b0", "b1"]) == [0, 1]
    # remove_all answers how many keys went.
    assert store.remove_all() == 8
    assert store.batch_is_exist(keys) == [0] * 9
    assert store.remove_all() == 0


def test_zero_copy_paths_are_byte_exact(store, seed):
    rng = random.Random(seed + 2)
    src, dst = Buf(16 * MB), Buf(16 * MB)
    src.fill(rng)
    assert store.register_buffer(src.ptr, src.size) == 0
    assert store.register_buffer(dst.ptr, dst.size) == 0
    sizes = [4096, 65536, 262144, MB, 4 * MB, 3 * MB + 17]
    offs, o = [], 0
    for s in sizes:
        offs.append(o)
        o += s
    keys = [f"z{i}" for i in range(len(sizes))]
    assert store.batch_put_from(keys, [src.ptr + x for x in offs], sizes) == [0] * len(sizes)
    got = store.batch_get_into(keys + ["missing"], [dst.ptr + x for x in offs] + [dst.ptr + o], sizes + [10])
    assert got == sizes + [-704]
    assert dst[:o] == src[:o]
    # Single-key forms, and a destination larger than the value answers the value's length.
    assert store.put_from("one", src.ptr + 5, 1000) == 0
    assert store.get_into("one", dst.ptr + 8 * MB, 4 * MB) == 1000
    assert dst[8 * MB : 8 * MB + 1000] == src[5:1005]
    # A destination too small: Mooncake's -600, and nothing written.
    before = dst[0:1000]
    assert store.get_into("z1", dst.ptr, 1000) == -600
    assert dst[0:1000] == before
    assert store.batch_get_into(["z0", "z1"], [dst.ptr, dst.ptr + MB], [4096, 10]) == [4096, -600]
    assert store.unregister_buffer(src.ptr) == 0
    assert store.unregister_buffer(dst.ptr) == 0


def test_bad_buffers_are_codes_not_crashes(store, seed):
    rng = random.Random(seed + 3)
    a = Buf(MB)
    a.fill(rng)
    # Unregistered memory: -600, never touched (a bogus address would otherwise crash).
    assert store.put_from("u", a.ptr, 4096) == -600
    assert store.put_from("u", 4096, 4096) == -600
    assert store.get_into("u", 4096, 4096) == -600
    assert store.batch_put_from(["u1", "u2"], [a.ptr, 8], [10, 10]) == [-600, -600]
    assert store.register_buffer(a.ptr, a.size) == 0
    # Overlapping, empty and null registrations are refused.
    assert store.register_buffer(a.ptr, a.size) == -600
    assert store.register_buffer(a.ptr + 4096, 4096) == -600
    assert store.register_buffer(a.ptr + 10, 0) == -600
    assert store.register_buffer(0, 4096) == -600
    # A range running past the end of its buffer.
    assert store.put_from("u", a.ptr + a.size - 100, 200) == -600
    assert store.batch_put_from(["ok", "past"], [a.ptr, a.ptr + a.size - 1], [100, 2]) == [0, -600]
    # Mismatched list lengths: -600 for every key.
    assert store.batch_put_from(["x", "y"], [a.ptr], [1, 1]) == [-600, -600]
    assert store.batch_get_into(["x"], [a.ptr, a.ptr], [1]) == [-600]
    # Two keys read into overlapping ranges are refused (their bytes would race).
    assert store.batch_get_into(["ok", "ok"], [a.ptr, a.ptr + 50], [100, 100]) == [-600, -600]
    # Empty key or value.
    assert store.put("", b"x") == -600
    assert store.put("e", b"") == -600
    assert store.put_from("e", a.ptr, 0) == -600
    # Wrong types and negative addresses are Python exceptions.
    with pytest.raises(TypeError):
        store.put("t", 123)
    with pytest.raises(TypeError):
        store.put(5, b"x")
    with pytest.raises(OverflowError):
        store.get_into("ok", -1, 10)
    with pytest.raises(TypeError):
        store.batch_is_exist("not-a-list")
    # Unregistering: unknown addresses are -600; after unregistering, the range is refused.
    assert store.unregister_buffer(a.ptr + 1) == -600
    assert store.unregister_buffer(a.ptr) == 0
    assert store.unregister_buffer(a.ptr) == -600
    assert store.get_into("ok", a.ptr, 100) == -600


def test_closed_and_unset_stores_raise(cluster):
    s = strata.MooncakeDistributedStore()
    for call in (lambda: s.put("a", b"1"), lambda: s.get("a"), lambda: s.is_exist("a"), lambda: s.remove_all()):
        with pytest.raises(RuntimeError, match="setup"):
            call()
    assert s.health_check() == 1
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr) == 0
    assert s.health_check() == 0
    assert s.get_hostname() == "localhost"
    # A second setup on a set-up store is refused.
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr) == -600
    assert s.put("c", b"1") == 0
    assert s.close() == 0
    assert s.close() == 0
    calls = [
        lambda: s.put("a", b"1"), lambda: s.get("a"), lambda: s.get_batch(["a"]), lambda: s.put_batch(["a"], [b"1"]),
        lambda: s.put_from("a", 1, 1), lambda: s.get_into("a", 1, 1), lambda: s.batch_put_from(["a"], [1], [1]),
        lambda: s.batch_get_into(["a"], [1], [1]), lambda: s.is_exist("a"), lambda: s.batch_is_exist(["a"]),
        lambda: s.remove("a"), lambda: s.batch_remove(["a"]), lambda: s.remove_all(), lambda: s.get_size("a"),
        lambda: s.register_buffer(1, 1), lambda: s.unregister_buffer(1), lambda: s.get_hostname(),
        lambda: s.setup("localhost", "", 0, 0, "tcp", "", cluster.addr),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="closed"):
            call()
    assert s.health_check() == 1


def test_setup_argument_forms(cluster):
    # Keywords, Mooncake's extra keywords, and the dict overload.
    s = strata.MooncakeDistributedStore()
    assert s.setup(local_hostname="localhost", metadata_server="http://127.0.0.1:8080/metadata",
                   global_segment_size=0, local_buffer_size=16 * MB, protocol="tcp", rdma_devices="",
                   master_server_addr=cluster.addr, engine=None, tenant_id="default",
                   enable_ssd_offload=False) == 0
    s.close()
    s = strata.MooncakeDistributedStore()
    assert s.setup({"local_hostname": "localhost", "metadata_server": "P2PHANDSHAKE",
                    "global_segment_size": 0, "master_server_addr": cluster.addr}) == 0
    assert s.put("dict-form", b"1") == 0
    s.close()
    s = strata.MooncakeDistributedStore()
    # An unknown keyword is a TypeError naming it (SGLang retries without such keywords).
    with pytest.raises(TypeError, match="no_such_option"):
        s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr, no_such_option=1)
    with pytest.raises(TypeError, match="master_server_addr"):
        s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "")
    # A protocol Strata does not speak, and a master nobody listens on: non-zero codes.
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "nvlink", "", cluster.addr) == -600
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", f"127.0.0.1:{port}") < 0
    # `rdma` without RDMA in this build or host falls back to TCP.
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "rdma", "", cluster.addr) == 0
    assert s.put("rdma-fallback", b"1") == 0 and s.get("rdma-fallback") == b"1"
    s.close()


def test_local_segment_serves_other_clients(cluster, seed):
    """global_segment_size > 0 contributes this process's segment, as Mooncake's quick start does:
    keys placed on it are read by another client over the network."""
    rng = random.Random(seed + 4)
    a = strata.MooncakeDistributedStore()
    assert a.setup("127.0.0.1", "P2PHANDSHAKE", 64 * MB, 16 * MB, "tcp", "", cluster.addr) == 0
    b = strata.MooncakeDistributedStore()
    assert b.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr) == 0
    vals = {f"seg{i}": rng.randbytes(50_000) for i in range(64)}
    assert a.put_batch(list(vals), list(vals.values())) == 0
    assert b.get_batch(list(vals)) == list(vals.values())
    a.close()
    b.remove_all()
    b.close()


def test_local_segment_with_write_back(cluster, seed, tmp_path):
    """A segment with a write-back buffer (puts acknowledged from DRAM): values read back whole,
    from this client and from another one."""
    rng = random.Random(seed + 7)
    a = strata.MooncakeDistributedStore()
    assert a.setup({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE", "global_segment_size": 64 * MB,
                    "master_server_addr": cluster.addr, "segment_dir": str(tmp_path), "write_back": "32MiB"}) == 0
    assert list(tmp_path.glob("strata-py-segment-*")), "the segment's device file is not in segment_dir"
    b = strata.MooncakeDistributedStore()
    assert b.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr) == 0
    vals = {f"wb{i}": rng.randbytes(100_000) for i in range(40)}
    assert a.put_batch(list(vals), list(vals.values())) == 0
    assert a.get_batch(list(vals)) == list(vals.values())
    assert b.get_batch(list(vals)) == list(vals.values())
    with pytest.raises(TypeError, match="write_back"):
        strata.MooncakeDistributedStore().setup({"master_server_addr": cluster.addr, "write_back": "lots"})
    a.close()
    assert not list(tmp_path.glob("strata-py-segment-*")), "close() left the segment's file behind"
    b.remove_all()
    b.close()


def _gil_free_progress(call) -> tuple:
    """Runs `call` while another Python thread counts; how far it counted during the call."""
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    old = __import__("sys").getswitchinterval()
    __import__("sys").setswitchinterval(1.0)  # the GIL changes hands only when released
    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        start = count[0]
        t0 = time.perf_counter()
        call()
        return count[0] - start, time.perf_counter() - t0
    finally:
        stop.set()
        t.join()
        __import__("sys").setswitchinterval(old)


def test_io_releases_the_gil(store, seed):
    rng = random.Random(seed + 5)
    src, dst = Buf(64 * MB), Buf(64 * MB)
    src.fill(rng, 0, MB)
    store.register_buffer(src.ptr, src.size)
    store.register_buffer(dst.ptr, dst.size)
    keys = [f"gil{i}" for i in range(64)]
    ptrs = [src.ptr + i * MB for i in range(64)]
    n, secs = _gil_free_progress(lambda: store.batch_put_from(keys, ptrs, [MB] * 64))
    assert n > 1000, f"another thread counted {n} in {secs:.3f}s of batch_put_from: the GIL was held"
    n, secs = _gil_free_progress(lambda: store.batch_get_into(keys, [dst.ptr + i * MB for i in range(64)], [MB] * 64))
    assert n > 1000, f"another thread counted {n} in {secs:.3f}s of batch_get_into: the GIL was held"
    assert dst[:MB] == src[:MB]


def test_setup_releases_the_gil():
    """A 'master' written in Python can only answer if setup() released the GIL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    served = threading.Event()

    def fake_master():
        conn, _ = srv.accept()
        served.set()
        conn.close()

    t = threading.Thread(target=fake_master, daemon=True)
    t.start()
    s = strata.MooncakeDistributedStore()
    t0 = time.perf_counter()
    rc = s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", f"127.0.0.1:{port}")
    # With the GIL held, the fake master could not close the connection, and setup would wait for
    # the client's 10 s read timeout instead.
    assert served.is_set(), "the Python thread never ran during setup()"
    assert time.perf_counter() - t0 < 5, "setup waited for its timeout: the GIL was held"
    assert rc < 0
    srv.close()


def test_concurrent_threads_share_one_store(store, seed):
    rng = random.Random(seed + 6)
    vals = {f"t{i}": rng.randbytes(rng.randrange(1, 200_000)) for i in range(200)}
    errors = []

    def worker(ks):
        try:
            for k in ks:
                assert store.put(k, vals[k]) == 0
                assert store.get(k) == vals[k]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    keys = list(vals)
    ts = [threading.Thread(target=worker, args=(keys[i::4],)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors, errors
    assert store.batch_is_exist(keys) == [1] * len(keys)
