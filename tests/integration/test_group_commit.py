"""Group commit: shared statements, exact per-request counts, backpressure, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
from fastapi import FastAPI

from energy_engine.app import create_app
from energy_engine.ingest.writer import GroupWriter
from tests.conftest import MakeSettings, app_client
from tests.readings import meter, minute_ago, vehicle


async def test_concurrent_requests_share_flushes_and_get_their_own_counts(
    app: FastAPI, client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    # Readings stored beforehand: every request resends some of them.
    stored = [meter(f"M-{d}", minute_ago(m), 10.0 + m) for d in range(5) for m in (50, 51)]
    await client.post("/v1/ingest/meter", json=stored)
    flushes_before = app.state.writer.flushes

    async def send(i: int) -> tuple[int, int, dict[str, int]]:
        fresh = [
            meter(f"M-{i % 5}", minute_ago(100 + i * 3 + k), float(i)) for k in range(i % 3)
        ] + [vehicle(f"V-{i}", minute_ago(k + 1), float(k)) for k in range(1 + i % 4)]
        repeats = stored[: i % 6]
        response = await client.post("/v1/ingest", json=fresh + repeats)
        assert response.status_code == 200
        counts: dict[str, int] = response.json()
        return len(fresh), len(repeats), counts

    results = await asyncio.gather(*(send(i) for i in range(1, 121)))
    for fresh, repeats, counts in results:
        assert counts == {"accepted": fresh, "duplicates": repeats}
    flushes = app.state.writer.flushes - flushes_before
    # The 120 requests queue while the first flushes wait on PostgreSQL, and each flush takes
    # the whole queue: a few flushes per writer at most (`< 120` passed with two sharing one).
    writers = app.state.settings.writer_connections
    assert flushes <= 2 * writers, f"{flushes} flushes for 120 requests: not coalesced"
    total = sum(c["accepted"] for _, _, c in results)
    rows = await conn.fetchval(
        "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
    )
    assert rows == total + len(stored)


async def test_requests_racing_for_the_same_reading_store_it_once(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    reading = vehicle("V-1", minute_ago(2), 5.0)
    responses = await asyncio.gather(
        *(client.post("/v1/ingest/vehicle", json=reading) for _ in range(30))
    )
    counts = [r.json() for r in responses]
    assert sum(c["accepted"] for c in counts) == 1
    assert sum(c["duplicates"] for c in counts) == 29
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == 1


async def test_full_queue_answers_503_and_loses_nothing_it_accepted(
    make_settings: MakeSettings, conn: asyncpg.Connection
) -> None:
    app = create_app(make_settings(max_queued_readings=4, writer_connections=1))
    async with (
        app.router.lifespan_context(app),
        app_client(app) as client,
    ):
        writer: GroupWriter = app.state.writer
        # Hold the hot-store table so the writer's first flush blocks and the queue fills.
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE meter_state IN EXCLUSIVE MODE")
        first = asyncio.create_task(
            client.post("/v1/ingest/meter", json=meter("M-0", minute_ago(1), 1.0))
        )

        async def writer_waits_on_the_lock() -> bool:
            waiting: int = await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE relation = 'meter_state'::regclass AND NOT granted"
            )
            return waiting == 1

        await _until(writer_waits_on_the_lock)
        assert writer.queued == 0  # the writer took the first request
        queued = [
            asyncio.create_task(
                client.post("/v1/ingest/meter", json=[meter(f"M-{i}", minute_ago(1), 1.0)] * 2)
            )
            for i in (1, 2)
        ]

        async def queue_full() -> bool:
            return writer.queued == 4

        await _until(queue_full)
        refused = await client.post("/v1/ingest/meter", json=meter("M-3", minute_ago(1), 1.0))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "overloaded"
        await transaction.rollback()
        answers = [await task for task in (first, *queued)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.json()["accepted"] for a in answers] == [1, 1, 1]
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 3
    assert await conn.fetchval("SELECT count(*) FROM meter_readings WHERE meter_id = 'M-3'") == 0


async def _until(check: Callable[[], Awaitable[bool]], within_s: float = 10) -> None:
    """Wait until `check()` holds; fail after `within_s`."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"{check.__name__} not within {within_s} s"
        await asyncio.sleep(0.01)
