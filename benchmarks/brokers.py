"""The brokers the transport scenarios need, each the benchmark's own on a free loopback port
(never a broker already running on the machine): Mosquitto for MQTT, nats-server with
JetStream for queue mode.

The tests start theirs the same way (tests/mosquitto.py, tests/nats.py); the benchmark keeps
its own few lines so that it never imports the tests, and says what to install instead of
failing an assertion.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import BenchError, free_port

# Debian installs the brokers in /usr/sbin, which is not on every user's PATH.
SBIN = Path("/usr/sbin")


def ensure_binary(name: str, package: str) -> str:
    """The broker binary `name`, from PATH or /usr/sbin; a BenchError saying what to install."""
    found = shutil.which(name) or shutil.which(name, path=str(SBIN))
    if not found:
        raise BenchError(
            f"{name} is not installed; the transport scenarios need it: "
            f"sudo apt-get install {package} (Debian/Ubuntu)"
        )
    return found


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None:
            raise BenchError(f"{name} exited at start-up: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not listen on port {port} within 15 s; see {log}")
        time.sleep(0.05)


@contextlib.contextmanager
def _running(command: list[str], port: int, log: Path, name: str) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(process, port, log, name)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def mosquitto(directory: Path, *, max_queued: int) -> Iterator[str]:
    """A Mosquitto broker, anonymous, without persistence, holding up to `max_queued` QoS 1
    messages for a subscriber that has not taken them yet (the default 1,000 would drop a
    burst the engine has not caught up with); yields its mqtt:// URL."""
    binary = ensure_binary("mosquitto", "mosquitto")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        # As root, mosquitto would switch to the `mosquitto` user, who may not read this
        # directory; it stays the benchmark's user instead.
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence false\nmax_queued_messages {max_queued}\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    with _running([binary, "-c", str(config)], port, directory / "mosquitto.log", "mosquitto"):
        yield f"mqtt://127.0.0.1:{port}"


@contextlib.contextmanager
def nats_server(directory: Path) -> Iterator[str]:
    """A nats-server with JetStream storing in `directory`; yields its nats:// URL."""
    binary = ensure_binary("nats-server", "nats-server")
    store = directory / "store"
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "-a", "127.0.0.1", "-p", str(port), "-n", "bench", "-js"]
    command += ["-sd", str(store)]
    with _running(command, port, directory / "nats-server.log", "nats-server"):
        yield f"nats://127.0.0.1:{port}"
