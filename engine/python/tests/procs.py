"""Real processes for the tests: a Strata master + store node, Mooncake's master, `strata serve`.

Every process binds 127.0.0.1, is started with its own free ports, and is stopped by PID.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def strata_bin() -> Path:
    """The `strata` binary: STRATA_BIN, else the release build under CARGO_TARGET_DIR or target/."""
    if os.environ.get("STRATA_BIN"):
        p = Path(os.environ["STRATA_BIN"])
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        p = target / "release" / "strata"
    if not p.exists():
        raise RuntimeError(f"{p} does not exist: build it with `cargo build --release -p strata-tools` or set STRATA_BIN")
    return p


class Proc:
    """A child process with its log file, stopped (SIGTERM, then SIGKILL) on stop()."""

    def __init__(self, args, log: Path, env=None):
        self.log_path = log
        self.log = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.p.args[:2]} never logged {text!r}:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class StrataCluster:
    """`strata master` + one `strata store` node."""

    def __init__(self, tmp: Path, capacity: str = "1GiB", memory: str = "256MiB"):
        self.tmp = tmp
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        b = str(strata_bin())
        self.master = Proc(
            [b, "master", "--rpc_port", str(self.port), "--enable_http_metadata_server=true",
             "--http_metadata_server_port=0", "--metrics-port", "0", "--heartbeat-timeout-ms", "1500",
             "--state-file", str(tmp / "master.json")],
            tmp / "master.log",
        )
        wait_port(self.port)
        self.store = Proc(
            [b, "store", "--master", self.addr, "--device", str(tmp / "dev.strata"), "--capacity", capacity,
             "--memory", memory, "--segment-size", "16MiB"],
            tmp / "store.log",
        )
        self.store.wait_log("strata store ready")

    def stop(self) -> None:
        self.store.stop()
        self.master.stop()


class MooncakeMaster:
    """Mooncake's own master (from its wheel) with its HTTP metadata server."""

    def __init__(self, tmp: Path):
        exe = shutil.which("mooncake_master", path=str(Path(sys.executable).parent)) or shutil.which("mooncake_master")
        if exe is None:
            raise RuntimeError("mooncake_master not found next to this Python")
        self.port = free_port()
        self.meta_port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.metadata = f"http://127.0.0.1:{self.meta_port}/metadata"
        env = dict(os.environ, MC_TCP_BIND_ADDRESS="127.0.0.1")
        self.proc = Proc(
            [exe, "--enable_http_metadata_server=true", "--http_metadata_server_host=127.0.0.1",
             f"--http_metadata_server_port={self.meta_port}", "--rpc_address=127.0.0.1",
             f"--rpc_port={self.port}", "--metrics_host=127.0.0.1", f"--metrics_port={free_port()}"],
            tmp / "mooncake-master.log",
            env=env,
        )
        wait_port(self.port)
        wait_port(self.meta_port)

    def stop(self) -> None:
        self.proc.stop()
