"""What the benchmark drives: wrk, an `energy-engine serve` process, a PostgreSQL to measure.

wrk (a prerequisite, e.g. the Debian package) generates the closed-model HTTP load: a Python
load generator saturates a core long before the server does. The Lua scripts beside this
module give every request a (device, minute) pair no other request uses and print one
`BENCH_RESULT {json}` line that is parsed here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from energy_engine.auth import keyfile

RESULT_MARK = "BENCH_RESULT "


class BenchError(Exception):
    """The benchmark cannot go on (a tool is missing, the server did not start)."""


@dataclass(frozen=True, slots=True)
class WrkRun:
    """One wrk run, as its Lua `done()` reported it."""

    requests: int
    seconds: float
    status_errors: int  # answered, but not 2xx/3xx
    socket_errors: int  # connect/read/write errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        """Requests answered with a 2xx, per second: an error answer is not throughput."""
        return self.acknowledged / self.seconds

    @property
    def acknowledged(self) -> int:
        """Requests answered with a 2xx."""
        return self.requests - self.status_errors


def median_run(runs: list[WrkRun]) -> WrkRun:
    """The run with the median throughput (a real run, so its latencies belong together)."""
    ordered = sorted(runs, key=lambda run: run.per_second)
    return ordered[(len(ordered) - 1) // 2]


def median(values: list[float]) -> float:
    """The median, low for an even count (the conservative one)."""
    return statistics.median_low(values)


def ensure_wrk() -> str:
    """The wrk binary on PATH; a system package is the reader's to install, never ours."""
    found = shutil.which("wrk")
    if not found:
        raise BenchError(
            "wrk is not installed; the benchmark needs it: sudo apt-get install wrk "
            "(Debian/Ubuntu; brew install wrk on macOS)"
        )
    return found


def run_wrk(
    wrk: str,
    scripts: Path,
    script: str,
    url: str,
    *,
    connections: int,
    seconds: int,
    env: dict[str, str],
    threads: int = 2,
) -> WrkRun:
    """Run one wrk load and parse what its script reported."""
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
    ]
    done = subprocess.run(
        command, cwd=scripts, env={**os.environ, **env}, capture_output=True, text=True
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            raw = orjson.loads(line[len(RESULT_MARK) :])
            return WrkRun(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                status_errors=raw["status_errors"],
                socket_errors=raw["connect_errors"]
                + raw["read_errors"]
                + raw["write_errors"]
                + raw["timeouts"],
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
            )
    raise BenchError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def ensure_pgbench() -> str:
    """pgbench: the one shipped with the embedded server (pgserver's wheel), else PATH's."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if shipped.is_file():
            return str(shipped)
    found = shutil.which("pgbench")
    if not found:
        raise BenchError("pgbench is not installed (it comes with pgserver and PostgreSQL)")
    return found


_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)$", re.MULTILINE)


def run_pgbench(
    pgbench: str,
    url: str,
    script: Path,
    *,
    clients: int,
    threads: int,
    seconds: int,
    variables: dict[str, str],
    settings: dict[str, str],
) -> float:
    """Transactions per second of `script` run by pgbench in prepared mode (each statement
    parsed and planned once per connection, as asyncpg does), on sessions given `settings`."""
    command = [pgbench, "-M", "prepared", "-n", f"-c{clients}", f"-j{threads}", f"-T{seconds}"]
    command += ["-f", str(script)]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    # libpq reads the URL (a unix-socket one too) as the database name's connection string.
    command.append(url)
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    done = subprocess.run(
        command, env={**os.environ, "PGOPTIONS": options}, capture_output=True, text=True
    )
    found = _TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise BenchError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(found[1])


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api_headers() -> dict[str, str]:
    """The headers carrying the API key of the engine `engine` runs (none with auth off)."""
    return keyfile.headers(os.environ.get("ENERGY_API_KEY"))


@dataclass(frozen=True, slots=True)
class Server:
    """A running `energy-engine serve`: its base URL and the process id of the command."""

    base: str
    pid: int


@contextlib.contextmanager
def engine(database_url: str, *, workers: int = 1, log: Path) -> Iterator[str]:
    """A running `energy-engine serve` on `database_url`; yields its base URL (see `serve`)."""
    with serve(database_url, workers=workers, log=log) as server:
        yield server.base


@contextlib.contextmanager
def serve(
    database_url: str, *, workers: int = 1, log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A running `energy-engine serve` on `database_url` (and `env`, e.g. MQTT_URL, over the
    environment); yields its URL and process id.

    The first start on a database creates its admin key and writes it to a data directory
    of that database's own beside the log (never the checkout's .energy-engine/); while the
    engine runs, ENERGY_API_KEY holds it, for wrk's scripts, `api_headers` and any tool
    started meanwhile. A database that had keys before needs ENERGY_API_KEY set by the caller.
    """
    port = free_port()
    data_dir = log.parent / f"engine-{hashlib.sha256(database_url.encode()).hexdigest()[:8]}"
    command = [sys.executable, "-m", "energy_engine.cli", "serve", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    # Packing is measured on its own (scenario 17): a maintenance round packing in the
    # background would land in whichever scenario runs at the time.
    env = {
        "ENERGY_PACK_AFTER": "off",
        **os.environ,
        **(env or {}),
        "DATABASE_URL": database_url,
        "ENERGY_DATA_DIR": str(data_dir),
    }
    given_key = os.environ.get("ENERGY_API_KEY")
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(base):
            if process.poll() is not None:
                raise BenchError(f"the engine exited at start-up; see {log}")
            if time.monotonic() > deadline:
                raise BenchError(f"the engine was not ready in 120 s; see {log}")
            time.sleep(0.2)
        key = keyfile.read(data_dir) or given_key
        if key:
            os.environ["ENERGY_API_KEY"] = key
        yield Server(base, process.pid)
    finally:
        if given_key is None:
            os.environ.pop("ENERGY_API_KEY", None)
        else:
            os.environ["ENERGY_API_KEY"] = given_key
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def queue_worker(
    database_url: str, *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A running `energy-engine worker` (queue mode: `env` names the NATS server) writing to
    `database_url`, until the block ends (SIGTERM: it commits what it holds and exits)."""
    command = [sys.executable, "-m", "energy_engine.cli", "worker"]
    full = {**os.environ, "ENERGY_LOG_LEVEL": "warning", **env, "DATABASE_URL": database_url}
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=full, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def worker_pids(pid: int) -> list[int]:
    """The processes of the engine started as `pid` that answer requests: with `--workers N`
    the N children uvicorn spawned (not multiprocessing's resource tracker), else `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The parent id is the 2nd field after the parenthesised command name.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                if b"spawn_main" in command:
                    children.append(int(entry.name))
    return sorted(children) or [pid]


def _rss_bytes(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # the kernel says kB: KiB
    return None  # gone, or a kernel thread


@contextlib.contextmanager
def rss_peaks(pid: int, every_s: float = 0.2) -> Iterator[dict[int, int]]:
    """While the block runs, the highest resident set size (VmRSS, bytes) of each worker
    process of the engine started as `pid`, sampled every `every_s` in a thread; the dict
    yielded fills in as it goes (worker pid -> bytes)."""
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while True:
            for worker in worker_pids(pid):
                rss = _rss_bytes(worker)
                if rss is not None:
                    peaks[worker] = max(rss, peaks.get(worker, 0))
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def machine() -> str:
    """CPU model, cores, memory, OS and Python: what a reader needs to compare numbers."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def git_revision(root: Path) -> str:
    """The checked-out commit, marked dirty when the tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")
