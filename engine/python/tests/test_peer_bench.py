"""The peer benchmark script (shared/peers/mooncake_store_bench.py), unchanged except its import
line (rewritten here, at run time), against a Strata master + store with --verify: every put and
get byte-exact, at every size, in both of its shapes (a pure client; a client contributing its own
segment)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO

IMPORT = "from mooncake.store import MooncakeDistributedStore"
SIZES = [65536, 262144, 1048576, 4194304]


def peer_script() -> Path:
    for p in (os.environ.get("STRATA_PEERS"), REPO.parent / "shared" / "peers", Path("/work/shared/peers")):
        if p and (Path(p) / "mooncake_store_bench.py").exists():
            return Path(p) / "mooncake_store_bench.py"
    raise RuntimeError("mooncake_store_bench.py not found (set STRATA_PEERS to the peers directory)")


def rewritten(tmp_path: Path) -> Path:
    src = peer_script().read_text()
    assert src.count(IMPORT) == 1, "the peer script's import line changed"
    out = tmp_path / "mooncake_store_bench_strata.py"
    out.write_text(src.replace(IMPORT, "from strata import MooncakeDistributedStore"))
    return out


def check(out: str):
    assert "VERIFY FAILED" not in out, out
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 10 and f[0].isdigit():
            rows[int(f[0])] = int(f[-1])
    assert sorted(rows) == SIZES, out
    assert all(fails == 0 for fails in rows.values()), out


@pytest.mark.parametrize("role", ["client", "single"])
def test_peer_script_verifies_against_strata(cluster, tmp_path, role):
    script = rewritten(tmp_path)
    args = [sys.executable, str(script), "--role", role, "--master", cluster.addr, "--verify",
            "--round-mb", os.environ.get("STRATA_PEER_ROUND_MB", "64"), "--lat-ops", "50"]
    if role == "single":
        args += ["--segment-mb", "256"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, STRATA_SEGMENT_DIR=str(tmp_path)))
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"setup rc=0", r.stdout), r.stdout
    check(r.stdout)
