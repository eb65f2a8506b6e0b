"""A real `energy-engine serve` process over real HTTP, with and without DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from energy_engine.auth import keyfile
from energy_engine.cli import cli
from tests.conftest import AUTH
from tests.readings import meter, minute_ago, vehicle

READY_WITHIN_S = 120

pytestmark = pytest.mark.e2e


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def auth(env: dict[str, str]) -> dict[str, str]:
    """The headers carrying the admin key of a `serve` started with `env`: the one the first
    start wrote to its data directory, else the test databases' key (conftest.AUTH)."""
    data_dir = env.get("ENERGY_DATA_DIR")
    key = keyfile.read(Path(data_dir)) if data_dir else None
    return keyfile.headers(key) if key else AUTH


@contextmanager
def serve(
    env: dict[str, str], cwd: Path, *args: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start the engine; yield its base URL once ready; stop it with SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "energy_engine.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # Generous: an embedded PostgreSQL's first start (initdb) on a loaded 2-core machine.
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"serve exited early:\n{output}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not become ready in {READY_WITHIN_S} s"
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


def test_serve_with_database_url_takes_concurrent_clients_and_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    with serve({"DATABASE_URL": database_url}, tmp_path) as (base, process):

        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=base, timeout=30, headers=AUTH) as http:
                await http.post("/v1/assignments", json={"vehicleId": "V-0", "meterId": "M-0"})

                async def one(d: int, m: int) -> int:
                    batch = [
                        meter(f"M-{d}", minute_ago(m), 100.0 + m),
                        vehicle(f"V-{d}", minute_ago(m), 90.0 + m),
                    ]
                    return (await http.post("/v1/ingest", json=batch)).status_code

                return await asyncio.gather(*(one(d, m) for d in range(10) for m in range(1, 31)))

        codes = asyncio.run(load())
        assert codes == [200] * 300
        status = httpx.get(f"{base}/v1/vehicles/V-0/status", headers=AUTH).json()
        assert status["meterId"] == "M-0"
        assert status["timestamp"] == minute_ago(1).isoformat().replace("+00:00", "Z")
        report = httpx.get(f"{base}/v1/analytics/performance/V-0", headers=AUTH)
        assert report.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            total: int = await conn.fetchval(
                "SELECT (SELECT count(*) FROM meter_readings)"
                " + (SELECT count(*) FROM vehicle_readings)"
            )
            return total
        finally:
            await conn.close()

    assert asyncio.run(count()) == 600


def test_serve_without_database_url_runs_an_embedded_postgres_that_keeps_data(
    tmp_path: Path,
) -> None:
    env = {"DATABASE_URL": "", "ENERGY_DATA_DIR": str(tmp_path / "data")}
    reading = vehicle("V-9", minute_ago(1), 12.5)
    with serve(env, tmp_path) as (base, _):
        sent = httpx.post(f"{base}/v1/ingest/vehicle", json=reading, headers=auth(env))
        assert sent.json() == {
            "accepted": 1,
            "duplicates": 0,
        }
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()
    with serve(env, tmp_path) as (base, _):
        # Same data directory: the reading survived the restart and is a duplicate now.
        again = httpx.post(f"{base}/v1/ingest/vehicle", json=reading, headers=auth(env))
        assert again.json() == {"accepted": 0, "duplicates": 1}
        status = httpx.get(f"{base}/v1/vehicles/V-9/status", headers=auth(env))
        assert status.json()["kwhDeliveredDc"] == 12.5


async def _stored_pairs(database_url: str) -> set[tuple[str, str]]:
    conn = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    try:
        rows = await conn.fetch(
            "SELECT meter_id AS id, read_at FROM meter_readings"
            " UNION ALL SELECT vehicle_id, read_at FROM vehicle_readings"
        )
    finally:
        await conn.close()
    return {(row["id"], row["read_at"].isoformat().replace("+00:00", "Z")) for row in rows}


@pytest.mark.slow
def test_sigterm_under_load_commits_every_acknowledged_reading_and_exits_0(
    database_url: str, tmp_path: Path
) -> None:
    acked: set[tuple[str, str]] = set()
    sent: set[tuple[str, str]] = set()
    signalled: list[bool] = []
    with serve({"DATABASE_URL": database_url}, tmp_path) as (base, process):

        async def client(number: int, stop_at: float) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30, headers=AUTH) as http:
                for minute in range(1, 10_000):
                    batch = [
                        meter(f"M-{number}-{d}", minute_ago(minute), minute) for d in range(100)
                    ]
                    pairs = {(item["meterId"], item["timestamp"]) for item in batch}
                    sent.update(pairs)
                    if time.monotonic() > stop_at and not signalled:
                        # Once: a SIGTERM arriving while the interpreter finalises (handlers
                        # back to the default) would kill the process with -15.
                        signalled.append(True)
                        process.send_signal(signal.SIGTERM)
                    try:
                        response = await http.post("/v1/ingest/meter", json=batch)
                    except httpx.TransportError:
                        return  # the server stopped taking requests
                    if response.status_code == 200:
                        acked.update(pairs)
                    else:
                        assert response.status_code == 503, response.text

        async def load() -> None:
            stop_at = time.monotonic() + 2.0
            await asyncio.gather(*(client(n, stop_at) for n in range(24)))

        asyncio.run(load())
        assert process.wait(timeout=30) == 0

    stored = asyncio.run(_stored_pairs(database_url))
    assert len(acked) >= 100 * 24  # the load ran for a while before the signal
    assert acked <= stored  # nothing acknowledged was lost
    assert stored <= sent


def test_serve_with_several_workers_shares_one_embedded_postgres(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "", "ENERGY_DATA_DIR": str(tmp_path / "data")}
    with serve(env, tmp_path, "--workers", "2") as (base, process):

        async def load() -> list[dict[str, int]]:
            async with httpx.AsyncClient(base_url=base, timeout=30, headers=auth(env)) as http:

                async def one(m: int) -> dict[str, int]:
                    reading = vehicle("V-1", minute_ago(m), float(100 - m))
                    answer: dict[str, int] = (
                        await http.post("/v1/ingest/vehicle", json=reading)
                    ).json()
                    return answer

                return await asyncio.gather(*(one(m) for m in range(1, 41)))

        answers = asyncio.run(load())
        assert answers == [{"accepted": 1, "duplicates": 0}] * 40
        status = httpx.get(f"{base}/v1/vehicles/V-1/status", headers=auth(env)).json()
        assert status["kwhDeliveredDc"] == 99.0  # the newest reading, whichever worker took it
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_migrate_command(postgres_url: str, database_url: str) -> None:
    result = CliRunner().invoke(cli, ["migrate"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "none pending" in result.output
