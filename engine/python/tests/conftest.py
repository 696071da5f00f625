"""Fixtures: a real Strata cluster per test module, a set-up store per test."""

import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import StrataCluster  # noqa: E402


@pytest.fixture(scope="session")
def seed():
    s = int(os.environ.get("STRATA_TEST_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"\nseed = {s} (replay with STRATA_TEST_SEED={s})")
    return s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StrataCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def store(cluster):
    import strata

    s = strata.MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", cluster.addr) == 0
    s.remove_all()
    yield s
    s.close()
