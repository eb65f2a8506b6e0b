"""nats-server processes of the tests' own: one JetStream server or a cluster, on free loopback
ports with store directories under the test's temporary directory (never the machine's
server on 4222)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARY = shutil.which("nats-server") or "/usr/sbin/nats-server"
START_WITHIN_S = 15.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server with JetStream; `routes` join it to a cluster."""

    name: str
    store: Path
    port: int = field(default_factory=free_port)
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        args = [BINARY, "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name]
        args += ["-js", "-sd", str(self.store)]
        if self.cluster_port is not None:
            args += ["--cluster_name", "energy-test"]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.store.mkdir(parents=True, exist_ok=True)
        log = self.store.parent / f"{self.name}.log"
        with log.open("ab") as out:  # the server keeps its own descriptor
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_WITHIN_S
        while True:
            assert self.process.poll() is None, f"nats-server {self.name} exited; see {log}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            assert time.monotonic() < deadline, f"nats-server {self.name} did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM), and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _requires_binary() -> None:
    if not Path(BINARY).exists():
        pytest.fail("nats-server is not installed (apt-get install nats-server; .ci/run does)")


@contextlib.contextmanager
def single(tmp: Path) -> Iterator[NatsServer]:
    """One JetStream server."""
    _requires_binary()
    server = NatsServer("n0", tmp / "n0")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def cluster(tmp: Path, size: int = 3) -> Iterator[list[NatsServer]]:
    """A JetStream cluster of `size` servers routed to each other."""
    _requires_binary()
    cluster_ports = [free_port() for _ in range(size)]
    servers = [
        NatsServer(f"n{i}", tmp / f"n{i}", cluster_port=port, routes=cluster_ports)
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
