"""Analytics over a window reaching past the history retention period say so (`partial`,
`historyFrom`) instead of answering silently from what is left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ClientWith
from tests.readings import iso, minute_ago, vehicle

HISTORY = timedelta(days=20)
ROUTES = (
    "/v1/analytics/performance/V-1",
    "/v1/analytics/performance/V-1/series",
    "/v1/analytics/fleet",
)


async def _known(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest/vehicle", json=vehicle("V-1", minute_ago(5), 10.0))
    assert response.status_code == 200, response.text


async def _get(client: httpx.AsyncClient, path: str, start: datetime) -> dict[str, Any]:
    params = {"from": iso(start), "to": iso(start + timedelta(days=1))}
    if path.endswith("/series"):
        params["step"] = "1d"
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("path", ROUTES)
async def test_a_window_reaching_past_retention_is_flagged_partial(
    client_with: ClientWith, path: str
) -> None:
    async with client_with(max_reading_age=timedelta(days=10), history_retention=HISTORY) as http:
        await _known(http)
        asked = datetime.now(UTC)
        past = await _get(http, path, minute_ago(25 * 24 * 60))
        inside = await _get(http, path, minute_ago(2 * 24 * 60))
    assert past["partial"] is True and inside["partial"] is False
    kept_from = datetime.fromisoformat(past["historyFrom"])
    assert abs(kept_from - (asked - HISTORY)) < timedelta(seconds=30)
    # The edge: a window starting just after historyFrom is whole.
    assert datetime.fromisoformat(inside["historyFrom"]) >= kept_from


@pytest.mark.parametrize("path", ROUTES)
async def test_without_retention_every_window_is_whole(
    client: httpx.AsyncClient, path: str
) -> None:
    await _known(client)
    body = await _get(client, path, minute_ago(80 * 24 * 60))
    assert (body["historyFrom"], body["partial"]) == (None, False)


async def test_the_openapi_document_describes_the_flags(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schemas = response.json()["components"]["schemas"]
    for model in ("PerformanceReport", "PerformanceSeries", "FleetReport"):
        properties = schemas[model]["properties"]
        assert {"historyFrom", "partial"} <= set(schemas[model]["required"])
        assert "retention" in properties["partial"]["description"]
