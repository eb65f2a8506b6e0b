"""Analytics over a window reaching past the retention periods say so (`partial`,
`historyFrom`) instead of answering silently from what is left; whole hours past the history
retention are still answered exactly, from rollups."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from energy_engine import db
from energy_engine.lifecycle import maintenance
from energy_engine.rollups import store as rollups
from tests.conftest import ClientWith, MakeSettings
from tests.readings import iso, meter, minute_ago, vehicle

HISTORY = timedelta(days=12)
YOUNG = timedelta(days=10)  # the oldest reading accepted, at most the retention period
CAUGHT_UP = """
SELECT NOT EXISTS (SELECT FROM rollup_dirty)
   AND (SELECT at FROM rollup_watermarks WHERE name = 'rolled') >= $1
"""
ROUTES = (
    "/v1/analytics/performance/V-1",
    "/v1/analytics/performance/V-1/series",
    "/v1/analytics/fleet",
)


async def _known(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest/vehicle", json=vehicle("V-1", minute_ago(5), 10.0))
    assert response.status_code == 200, response.text


async def _get(
    client: httpx.AsyncClient, path: str, start: datetime, end: datetime | None = None
) -> dict[str, Any]:
    params = {"from": iso(start), "to": iso(end or start + timedelta(days=1))}
    if path.endswith("/series"):
        params["step"] = "1h"
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("path", ROUTES)
async def test_a_window_reaching_past_retention_is_flagged_partial(
    client_with: ClientWith, path: str
) -> None:
    async with client_with(max_reading_age=YOUNG, history_retention=HISTORY) as http:
        await _known(http)
        asked = datetime.now(UTC)
        # Off the hour whatever the clock says: half past, about 14 days ago.
        past = await _get(
            http, path, minute_ago(0).replace(minute=30) - timedelta(days=14, hours=1)
        )
        inside = await _get(http, path, minute_ago(2 * 24 * 60))
    assert past["partial"] is True and inside["partial"] is False
    kept_from = datetime.fromisoformat(past["historyFrom"])
    assert abs(kept_from - (asked - HISTORY)) < timedelta(seconds=30)
    assert datetime.fromisoformat(inside["historyFrom"]) >= kept_from


@pytest.mark.parametrize("path", ROUTES)
async def test_without_retention_every_window_is_whole(
    client: httpx.AsyncClient, path: str
) -> None:
    await _known(client)
    body = await _get(client, path, minute_ago(80 * 24 * 60))
    assert (body["historyFrom"], body["partial"]) == (None, False)


async def test_whole_hours_past_history_retention_are_answered_from_rollups(
    client_with: ClientWith, make_settings: MakeSettings, conn: asyncpg.Connection
) -> None:
    """History really dropped by a maintenance round: reports of whole hours are unchanged and
    not partial; a window whose edge needs dropped raw rows, or rollups past their own
    retention, is partial."""
    day = (datetime.now(UTC) - timedelta(days=14)).replace(hour=0, minute=0, second=0)
    day = day.replace(microsecond=0)
    aligned = (day + timedelta(hours=2), day + timedelta(hours=20))
    edged = (day + timedelta(hours=2, minutes=30), day + timedelta(hours=20))
    # Readings that old are accepted by an engine with a longer max_reading_age.
    async with client_with(max_reading_age=timedelta(days=20)) as http:
        response = await http.post(
            "/v1/assignments",
            json={"vehicleId": "V-1", "meterId": "M-1", "validFrom": iso(day - timedelta(1))},
        )
        assert response.status_code == 201, response.text
        minutes = range(0, 24 * 60, 7)
        body = [meter("M-1", day + timedelta(minutes=m), 100 + m / 7) for m in minutes]
        body += [vehicle("V-1", day + timedelta(minutes=m), 50 + m / 7 * 0.9) for m in minutes]
        assert (await http.post("/v1/ingest", json=body)).status_code == 200
        settings = make_settings()
        pool = await db.create_pool(str(settings.database_url), settings)
        try:
            # Rolled up, dirty marks included: the app's own refresher may hold the refresh
            # lock when this call comes (then it does nothing), so until there is none left.
            deadline = time.monotonic() + 30
            while await conn.fetchval(CAUGHT_UP, aligned[1]) is not True:
                assert time.monotonic() < deadline, "the rollups never caught up"
                await rollups.refresh(pool, settings, datetime.now(UTC))
                await asyncio.sleep(0.05)
            before = {path: await _get(http, path, *aligned) for path in ROUTES}
            kept = make_settings(max_reading_age=YOUNG, history_retention=HISTORY)
            done = await maintenance.maintain(pool, kept, datetime.now(UTC))
        finally:
            await pool.close()
    assert done is not None and f"meter_readings_p{day:%Y%m%d}" in {p.name for p in done.dropped}
    assert await conn.fetchval("SELECT count(*) FROM meter_readings WHERE read_at < $1", day) == 0
    assert before["/v1/analytics/performance/V-1"]["acConsumedKwh"] == pytest.approx(
        18 * 60 / 7, 0.02
    )

    async with client_with(max_reading_age=YOUNG, history_retention=HISTORY) as http:
        for path in ROUTES:
            after = await _get(http, path, *aligned)
            assert (after.pop("partial"), before[path].pop("partial")) == (False, False)
            assert after.pop("historyFrom") is not None and before[path].pop("historyFrom") is None
            assert after == before[path]
            assert (await _get(http, path, *edged))["partial"] is True
    shorter = {"max_reading_age": YOUNG, "history_retention": HISTORY, "rollup_retention": HISTORY}
    async with client_with(**shorter) as http:
        for path in ROUTES:
            assert (await _get(http, path, *aligned))["partial"] is True


async def test_the_openapi_document_describes_the_flags(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schemas = response.json()["components"]["schemas"]
    for model in ("PerformanceReport", "PerformanceSeries", "FleetReport"):
        properties = schemas[model]["properties"]
        assert {"historyFrom", "partial"} <= set(schemas[model]["required"])
        assert "retention" in properties["partial"]["description"]
