"""GET /metrics and the request log of a real `energy-engine serve --workers 2`: whichever
worker answers a scrape reports every worker's counts, a dead worker's live gauges go with it
while its counts stay, and stderr carries one JSON line per request with its id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_KEY, AUTH
from tests.e2e.test_serve import serve
from tests.readings import meter, minute_ago, vehicle
from tests.scrape import Key, delta, readings, samples, value

pytestmark = pytest.mark.e2e

WORKERS = 2
WRITERS = 2  # ENERGY_WRITER_CONNECTIONS per worker


class Lines:
    """The server's output, read as it comes (a full pipe would block the server)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode().rstrip("\n"))

    def json(self) -> list[dict[str, Any]]:
        """The JSON lines so far (every line, once the server writes JSON)."""
        return [orjson.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait(self, what: str, found: Callable[[list[dict[str, Any]]], bool]) -> None:
        deadline = time.monotonic() + 30
        while not found(self.json()):
            assert time.monotonic() < deadline, f"no {what} in 30 s:\n" + "\n".join(self.lines)
            time.sleep(0.05)

    def join(self) -> None:
        self._thread.join(timeout=10)


def scrape(base: str) -> dict[Key, float]:
    """One scrape on a new connection (so either worker may answer)."""
    response = httpx.get(f"{base}/metrics", timeout=10, headers=AUTH)
    assert response.status_code == 200
    return samples(response.text)


async def send(base: str) -> list[int]:
    """Each request on its own connection, 16 at a time: 30 new meter readings, 10 of them
    again, 5 new vehicle readings, 4 invalid vehicle readings."""
    at = [minute_ago(m) for m in range(1, 31)]
    bodies: list[tuple[str, dict[str, Any]]] = [
        *(("/v1/ingest/meter", meter("M-1", at[m], float(m))) for m in range(30)),
        *(("/v1/ingest", meter("M-1", at[m], float(m))) for m in range(10)),
        *(("/v1/ingest/vehicle", vehicle(f"V-{n}", at[0], 1.0)) for n in range(5)),
        *(("/v1/ingest/vehicle", {**vehicle("V-9", at[0], 1.0), "soc": 101}) for _ in range(4)),
    ]
    limit = asyncio.Semaphore(16)
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=no_reuse, headers=AUTH) as http:

        async def one(path: str, body: dict[str, Any]) -> int:
            async with limit:
                return (await http.post(path, json=body)).status_code

        # The duplicates after the originals are committed.
        first = await asyncio.gather(*(one(p, b) for p, b in bodies[:30]))
        rest = await asyncio.gather(*(one(p, b) for p, b in bodies[30:]))
    return [*first, *rest]


def test_metrics_add_up_over_workers_and_each_request_logs_one_line(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "ENERGY_DATA_DIR": str(tmp_path / "data"),
        "ENERGY_WRITER_CONNECTIONS": str(WRITERS),
    }
    args = ("--workers", str(WORKERS), "--log-level", "info")
    with serve(env, tmp_path, *args) as (base, process):
        output = Lines(process.stdout)
        directory = tmp_path / "data" / "metrics" / str(process.pid)
        assert directory.is_dir()  # the supervisor's fresh directory

        def writers(scraped: dict[Key, float]) -> float:
            return value(scraped, "energy_db_pool_max_connections", pool="writer")

        # Every worker samples its pools within a second of starting.
        deadline = time.monotonic() + 30
        while writers(before := scrape(base)) != WORKERS * WRITERS:
            assert time.monotonic() < deadline, writers(before)
            time.sleep(0.2)

        codes = asyncio.run(send(base))
        assert codes == [200] * 45 + [422] * 4
        expected = {
            readings("meter", "accepted"): 30,
            readings("meter", "duplicate"): 10,
            readings("vehicle", "accepted"): 5,
            readings("vehicle", "rejected"): 4,
        }
        for _ in range(6):  # whichever worker answers, the sum over both
            assert delta(before, scrape(base), "energy_readings_total") == expected

        served = [
            line
            for line in output.json()
            if line["logger"] == "energy_engine.request" and line["route"].startswith("/v1/")
        ]
        assert len(served) == 49
        assert len({line["request_id"] for line in served}) == 49
        assert {line["key_id"] for line in served} == {ADMIN_KEY.id}  # the id, never the key
        assert ADMIN_KEY.text not in "".join(str(line) for line in output.json())
        workers = {line["pid"] for line in served}
        assert len(workers) == WORKERS, "one worker took every request"
        assert process.pid not in workers

        # An import pointed at the workers' directory adds its counts (transport import).
        at = minute_ago(1)
        items = [meter("M-2", minute_ago(m), float(m)) for m in (1, 2, 3)] + [
            meter("M-1", at, 0.0)  # sent over HTTP before: a duplicate
        ]
        path = tmp_path / "more.ndjson"
        path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
        imported = subprocess.run(
            [sys.executable, "-m", "energy_engine.cli", "import", "--quiet", str(path)],
            env={**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
            capture_output=True,
            timeout=60,
        )
        assert imported.returncode == 0, imported.stderr
        expected[readings("meter", "accepted", "import")] = 3
        expected[readings("meter", "duplicate", "import")] = 1
        assert delta(before, scrape(base), "energy_readings_total") == expected

        # A worker killed: uvicorn starts another; its live gauges go, its counts stay.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        output.wait(
            "replacement worker",
            lambda lines: any(
                line["pid"] not in (*workers, process.pid)
                and "Application startup complete" in line["message"]
                for line in lines
            ),
        )
        time.sleep(1.5)  # the new worker's first sample
        for _ in range(4):
            after = scrape(base)
            assert writers(after) == WORKERS * WRITERS  # 6 if the dead one's still counted
            assert delta(before, after, "energy_readings_total") == expected

        answer = httpx.get(f"{base}/health/live", headers={"X-Request-ID": "e2e-given-1"})
        assert answer.headers["x-request-id"] == "e2e-given-1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output.join()

    lines = output.json()
    given = [line for line in lines if line.get("request_id") == "e2e-given-1"]
    assert [(line["logger"], line["route"], line["status"]) for line in given] == [
        ("energy_engine.request", "/health/live", 200)
    ]
    assert not directory.exists()  # removed on a clean stop
