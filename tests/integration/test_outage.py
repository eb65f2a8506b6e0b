"""PostgreSQL stopped under load and started again: every route answers 503 with Retry-After
and the JSON error body meanwhile (never a 500, a reset or a hang), readiness says why, and the
engine recovers by itself; every reading acknowledged is stored.

The server is a private one (pgserver's binaries on a data directory of the test's own), so the
test can stop and start it without disturbing the shared test server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from energy_engine.app import create_app
from energy_engine.auth import store
from energy_engine.settings import Settings
from tests.conftest import ADMIN_KEY, AUTH, PrivatePostgres
from tests.readings import iso, vehicle

REQUEST_BOUND_S = 10.0  # no request may take longer, outage or not


@pytest.fixture
async def engine(private_postgres: PrivatePostgres, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        _env_file=None,
        database_url=private_postgres.url,
        data_dir=tmp_path,
        connect_timeout=timedelta(seconds=2),
        acquire_timeout=timedelta(seconds=2),
        command_timeout=timedelta(seconds=5),
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with application.state.pool.acquire() as conn:
            await store.insert_key(conn, ADMIN_KEY)  # a private database: not the template's
        yield application


async def _until(check: Callable[[], bool], what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.01)


def _is_outage_answer(response: httpx.Response) -> bool:
    body = response.json()
    return (
        response.status_code == 503
        and response.headers.get("retry-after", "").isdigit()
        and response.headers["content-type"].startswith("application/json")
        and set(body) == {"error", "message", "errors"}
        and body["error"] in ("database_unavailable", "overloaded")
        and body["errors"] == []
    )


async def test_an_outage_answers_503_and_the_engine_recovers(
    engine: FastAPI, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    transport = httpx.ASGITransport(app=engine)
    client = httpx.AsyncClient(transport=transport, base_url="http://engine", headers=AUTH)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sent: set[tuple[str, datetime]] = set()
    acknowledged: set[tuple[str, datetime]] = set()
    statuses: dict[str, list[int]] = {"before": [], "during": [], "after": []}
    phase = "before"
    stop_load = asyncio.Event()

    async def bounded(request: Any) -> httpx.Response:
        started = time.monotonic()
        response: httpx.Response = await asyncio.wait_for(request, REQUEST_BOUND_S)
        assert time.monotonic() - started < REQUEST_BOUND_S
        return response

    async def ingest(worker: int) -> None:
        device = f"V-{worker}"
        for second in itertools.count():
            if stop_load.is_set():
                return
            at = base + timedelta(seconds=second)
            sent.add((device, at))
            response = await bounded(
                client.post("/v1/ingest", json=vehicle(device, at, 10.0 + second / 1000))
            )
            statuses[phase].append(response.status_code)
            if response.status_code == 200:
                assert response.json() == {"accepted": 1, "duplicates": 0}
                acknowledged.add((device, at))
            else:
                assert _is_outage_answer(response), (response.status_code, response.text)
                await asyncio.sleep(0.01)

    window = {"from": iso(base - timedelta(hours=1)), "to": iso(base + timedelta(hours=1))}
    reads = [
        ("GET", "/v1/vehicles/V-0/status", None, None),
        ("GET", "/v1/fleet/status", None, None),
        ("GET", "/v1/analytics/performance/V-0", window, None),  # the lean handler
        ("GET", "/v1/analytics/performance/V-0/series", window, None),
        ("GET", "/v1/analytics/fleet", window, None),
        ("GET", "/v1/vehicles/V-0/assignments", None, None),
        ("POST", "/v1/assignments", None, {"vehicleId": "V-0", "meterId": "M-0"}),
    ]

    async def every_route() -> list[httpx.Response]:
        return [
            await bounded(client.request(method, path, params=params, json=body))
            for method, path, params, body in reads
        ]

    load = [asyncio.create_task(ingest(worker)) for worker in range(8)]
    try:
        workers = {f"V-{worker}" for worker in range(8)}
        await _until(lambda: {device for device, _ in acknowledged} == workers, "load running")
        assert all(r.status_code in (200, 201) for r in await every_route())

        phase = "during"
        await asyncio.to_thread(private_postgres.stop)
        await _until(lambda: 503 in statuses["during"], "the load meets the outage")
        for response in await every_route():
            assert _is_outage_answer(response), (response.request.url, response.text)
            assert response.json()["error"] == "database_unavailable"
        ready = await bounded(client.get("/health/ready"))
        assert ready.status_code == 503
        reason = ready.json()["status"]
        assert reason.startswith("database unreachable: connection refused"), reason

        await asyncio.to_thread(private_postgres.start)
        deadline = time.monotonic() + 15
        while (await bounded(client.get("/health/ready"))).status_code != 200:
            assert time.monotonic() < deadline, "the engine did not recover"
            await asyncio.sleep(0.2)
        phase = "after"
        await _until(lambda: statuses["after"].count(200) >= 8, "the load is served again")
        assert all(r.status_code in (200, 201) for r in await every_route())
    finally:
        stop_load.set()
        await asyncio.gather(*load)
        await client.aclose()

    # Only ever committed (200) or unavailable (503): no 500, no reset, no hang.
    assert set(itertools.chain(*statuses.values())) <= {200, 503}
    assert 503 in statuses["during"] and 200 in statuses["after"]
    assert set(statuses["before"]) == {200}
    conn = await asyncpg.connect(private_postgres.url)
    try:
        rows = await conn.fetch("SELECT vehicle_id, read_at FROM vehicle_readings")
    finally:
        await conn.close()
    stored = [(r["vehicle_id"], r["read_at"]) for r in rows]
    assert len(stored) == len(set(stored))  # each once (the primary key, checked anyway)
    assert acknowledged <= set(stored) <= sent  # every acknowledged reading was committed
    # Expected outages leave warning lines, never a traceback.
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert any("database unavailable" in r.getMessage() for r in caplog.records)


async def test_a_frozen_database_answers_503_in_bounded_time(
    engine: FastAPI, private_postgres: PrivatePostgres
) -> None:
    """PostgreSQL that stops answering without closing anything (every process suspended, as
    on a hung host): the client-side timeouts end each request with a 503, not a hang."""
    import psutil  # type: ignore[import-untyped]  # pgserver's dependency

    transport = httpx.ASGITransport(app=engine)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://engine", headers=AUTH
    ) as client:
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        assert (await client.post("/v1/ingest", json=vehicle("V-0", at, 1.0))).status_code == 200
        postmaster = psutil.Process(private_postgres.server.get_pid())
        frozen = [postmaster, *postmaster.children(recursive=True)]
        for process in frozen:
            process.suspend()
        try:
            requests = [
                client.post("/v1/ingest", json=vehicle("V-0", at + timedelta(seconds=1), 2.0)),
                client.get("/v1/vehicles/V-0/status"),
                client.get("/v1/analytics/performance/V-0"),
                client.get("/v1/fleet/status"),
            ]
            started = time.monotonic()
            answers = await asyncio.wait_for(asyncio.gather(*requests), REQUEST_BOUND_S)
            assert time.monotonic() - started < REQUEST_BOUND_S
            for response in answers:
                assert _is_outage_answer(response), (response.request.url, response.text)
        finally:
            for process in frozen:
                process.resume()
        deadline = time.monotonic() + 15
        while (await client.get("/v1/vehicles/V-0/status")).status_code != 200:
            assert time.monotonic() < deadline, "the engine did not recover"
            await asyncio.sleep(0.2)
