"""Many clients at once: every acknowledged reading is stored once, the hot store is right."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx

from tests.readings import meter, minute_ago, vehicle

DEVICES = 20
MINUTES = 60


async def test_concurrent_clients_lose_nothing_and_keep_the_hot_store_right(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    rng = random.Random(7)
    items = [
        reading
        for d in range(DEVICES)
        for m in range(1, MINUTES + 1)
        for reading in (
            meter(f"M-{d}", minute_ago(m), 1000.0 - m),
            vehicle(f"V-{d}", minute_ago(m), 900.0 - m, soc=100 - m / 2),
        )
    ]
    rng.shuffle(items)
    # Every reading is also sent a second time by another client (a retry), so requests race
    # to insert the same keys.
    retries = rng.sample(items, len(items) // 4)
    payloads: list[list[dict[str, object]]] = []
    stream = items + retries
    while stream:
        size = rng.choice([1, 1, 1, 5, 20, 100])
        payloads.append(stream[:size])
        stream = stream[size:]

    async def send(batch: list[dict[str, object]]) -> dict[str, int]:
        response = await client.post("/v1/ingest", json=batch if len(batch) > 1 else batch[0])
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()
        return counts

    semaphore = asyncio.Semaphore(32)

    async def limited(batch: list[dict[str, object]]) -> dict[str, int]:
        async with semaphore:
            return await send(batch)

    results = await asyncio.gather(*(limited(p) for p in payloads))
    accepted = sum(r["accepted"] for r in results)
    duplicates = sum(r["duplicates"] for r in results)
    assert accepted == len(items)
    assert duplicates == len(retries)
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == DEVICES * MINUTES
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == DEVICES * MINUTES
    states = await conn.fetch("SELECT * FROM meter_state ORDER BY meter_id")
    assert len(states) == DEVICES
    for state in states:
        assert (state["read_at"], state["kwh_consumed_ac"]) == (minute_ago(1), 999.0)
        assert (state["prev_read_at"], state["prev_kwh_consumed_ac"]) == (minute_ago(2), 998.0)
    vehicle_states = await conn.fetch("SELECT * FROM vehicle_state")
    assert {(s["read_at"], s["soc"], s["prev_read_at"]) for s in vehicle_states} == {
        (minute_ago(1), 99.5, minute_ago(2))
    }
