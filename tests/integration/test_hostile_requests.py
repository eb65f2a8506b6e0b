"""Requests a hostile or careless client sends: odd ids, extreme dates, oversized and mislabelled
bodies, repeated keys. Each gets a 4xx in the one error shape that names what is wrong."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from energy_engine.app import create_app
from energy_engine.settings import Settings
from tests.conftest import AUTH, admin, with_database
from tests.readings import iso, meter, minute_ago, vehicle

# One engine for the whole module: every request here is refused, or only reads, so the tests
# cannot see each other's rows, and a database per test would cost more than all of them.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    url = with_database(postgres_url, name)
    settings = Settings(_env_file=None, database_url=url, data_dir=tmp_path_factory.mktemp("e"))
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://engine", headers=AUTH
            ) as http:
                await _known_vehicle(http)
                yield http
    finally:
        await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


ERROR_KEYS = {"error", "message", "errors"}

ID_ROUTES = [
    ("/v1/vehicles/{}/status", "vehicleId"),
    ("/v1/meters/{}/status", "meterId"),
    ("/v1/vehicles/{}/assignments", "vehicleId"),
    ("/v1/analytics/performance/{}", "vehicleId"),
    ("/v1/analytics/performance/{}/series", "vehicleId"),
]
ODD_IDS = ["a%00b", "x" * 65, "car%201", "%E2%82%AC", "a%0Ab"]


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS
    return body


@pytest.mark.parametrize(("template", "field"), ID_ROUTES)
@pytest.mark.parametrize("odd", ODD_IDS)
async def test_odd_ids_in_paths_are_422(
    client: httpx.AsyncClient, template: str, field: str, odd: str
) -> None:
    body = _error(await client.get(template.format(odd)), 422)
    assert body["errors"][0]["field"] == field


async def _known_vehicle(client: httpx.AsyncClient) -> None:
    at = minute_ago(2)
    await client.post("/v1/ingest", json=[vehicle("V-1", at, 1.0), meter("M-1", at, 1.0)])


ANALYTICS = ["/v1/analytics/performance/V-1", "/v1/analytics/performance/V-1/series"]
ANALYTICS += ["/v1/analytics/fleet"]


@pytest.mark.parametrize("path", ANALYTICS)
@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z"]
)
async def test_times_outside_the_supported_range_are_422_naming_the_parameter(
    client: httpx.AsyncClient, path: str, name: str, value: str
) -> None:
    body = _error(await client.get(path, params={name: value}), 422)
    assert body["errors"][0]["field"] == name
    assert "2000-01-01T00:00:00Z" in body["message"] and "2100-01-01T00:00:00Z" in body["message"]


@pytest.mark.parametrize("path", ANALYTICS)
@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("to=0.5", "ISO 8601"),
        ("to=1763800000", "ISO 8601"),
        ("from=2026-11-28T10:00:00 01:00", "%2B"),  # what an unencoded + arrives as
        ("from=2026-11-28T10:00:00", "UTC offset"),
        ("from=2026-11-28T10:00:00.1234567Z", "microsecond"),
    ],
)
async def test_times_must_be_iso_text_with_an_offset(
    client: httpx.AsyncClient, path: str, query: str, hint: str
) -> None:
    body = _error(await client.get(f"{path}?{query}"), 422)
    assert hint in body["message"]


async def test_a_window_too_long_is_said_in_days(client: httpx.AsyncClient) -> None:
    start = iso(minute_ago(60 * 24 * 91))
    body = _error(await client.get(ANALYTICS[0], params={"from": start}), 422)
    assert body["message"] == "the window may span at most 90 days"


async def test_the_longest_windows_are_answered(client: httpx.AsyncClient) -> None:
    # Bounded cost: the largest window every analytics route allows is answered, not refused
    # and not hanging (statement_timeout ends any read that would run on).
    start, end = minute_ago(60 * 24 * 90), minute_ago(0)
    window = {"from": iso(start), "to": iso(end)}
    for path in ANALYTICS:
        response = await client.get(path, params=window, timeout=30)
        assert response.status_code == 200, response.text
    series = (await client.get(ANALYTICS[1], params=window)).json()
    # One point per hour the window touches, cut to the window at both ends: 90 days of whole
    # hours, plus one when the window starts inside an hour (at minute :00 it does not).
    assert len(series["points"]) == 90 * 24 + (1 if start.minute else 0)
    assert series["points"][0]["from"] == iso(start)
    assert series["points"][-1]["to"] == iso(end)


@pytest.mark.parametrize("path", ["/v1/ingest", "/v1/assignments"])
@pytest.mark.parametrize("media_type", ["application/notjson", "text/plain", "application/xml"])
async def test_bodies_that_are_not_json_are_415(
    client: httpx.AsyncClient, path: str, media_type: str
) -> None:
    body = orjson.dumps(meter("M-1", minute_ago(1), 1.0))
    response = await client.post(path, content=body, headers={"content-type": media_type})
    assert _error(response, 415)["error"] == "unsupported_media_type"


async def test_repeated_keys_are_422_naming_item_and_key(client: httpx.AsyncClient) -> None:
    good = orjson.dumps(vehicle("V-1", minute_ago(1), 1.0)).decode()
    twice = good.replace('"soc":50.0', '"soc":50.0,"soc":90.0')
    assert twice != good
    headers = {"content-type": "application/json"}
    batch = _error(
        await client.post("/v1/ingest", content=f"[{good},{twice}]", headers=headers), 422
    )
    assert batch["errors"] == [{"index": 1, "field": "soc", "reason": "the key appears twice"}]
    lines = _error(
        await client.post(
            "/v1/ingest",
            content=f"{good}\n\n{twice}\n",
            headers={"content-type": "application/x-ndjson"},
        ),
        422,
    )
    assert lines["errors"] == [{"index": 2, "field": "soc", "reason": "the key appears twice"}]
    assignment = _error(
        await client.post(
            "/v1/assignments",
            content='{"vehicleId": "V-1", "meterId": "M-1", "meterId": "M-2"}',
            headers=headers,
        ),
        422,
    )
    assert assignment["errors"][0]["field"] == "meterId"
    stored = (await client.get("/v1/vehicles/V-1/status")).json()
    assert stored["soc"] == 50.0  # nothing of a refused body was stored


@pytest.mark.parametrize(
    "valid_from", [0, 1763800000, "0", "1999-12-31T00:00:00Z", "2026-11-28T10:00:00"]
)
async def test_valid_from_must_be_iso_text_in_range(
    client: httpx.AsyncClient, valid_from: object
) -> None:
    body = {"vehicleId": "V-2", "meterId": "M-2", "validFrom": valid_from}
    answer = _error(await client.post("/v1/assignments", json=body), 422)
    assert answer["errors"][0]["field"] == "validFrom"


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("DELETE", "/v1/fleet/status", 405, "method_not_allowed"),
        ("PUT", "/v1/assignments", 405, "method_not_allowed"),
        ("GET", "/v1/ingest", 405, "method_not_allowed"),
        ("POST", "/v1/analytics/performance/V-1", 405, "method_not_allowed"),
    ],
)
async def test_routing_errors_have_the_error_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, error: str
) -> None:
    response = await client.request(method, path)
    assert _error(response, status)["error"] == error
    if status == 405:
        assert response.headers["allow"]


async def test_a_reading_far_in_the_past_names_its_age_limit(client: httpx.AsyncClient) -> None:
    old = meter("M-1", minute_ago(0) - timedelta(days=31), 1.0)
    body = _error(await client.post("/v1/ingest", json=old), 422)
    assert body["errors"][0]["reason"] == "older than the maximum age of 30 days"


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/fleet/status", _cursor(b"2026-11-28T10:00:00+00:00|vehicle|a\x00b")),
        ("/v1/fleet/status", _cursor(b"0001-01-01T00:00:00+00:00|vehicle|V-1")),
        ("/v1/fleet/status", _cursor(b"2026-11-28T10:00:00+00:00|robot|V-1")),
        ("/v1/fleet/status", "not base64 at all \u20ac"),
        ("/v1/analytics/fleet", _cursor(b'{"from": "0001-01-01T00:00:00Z"}')),
        (
            "/v1/analytics/fleet",
            _cursor(
                orjson.dumps(
                    {
                        "from": "0001-01-01T00:00:00+00:00",
                        "to": "0001-01-02T00:00:00+00:00",
                        "sort": "efficiency",
                        "order": "asc",
                        "health": [],
                        "after": [0.5, "V-1"],
                    }
                )
            ),
        ),
        (
            "/v1/analytics/fleet",
            _cursor(
                orjson.dumps(
                    {
                        "from": "2025-01-01T00:00:00+00:00",
                        "to": "2026-01-01T00:00:00+00:00",
                        "sort": "efficiency",
                        "order": "asc",
                        "health": [],
                        "after": [0.5, "V-1"],
                    }
                )
            ),
        ),
    ],
    ids=["NUL id", "year 1", "unknown kind", "not base64", "partial", "year 1", "a year"],
)
async def test_crafted_cursors_are_422(client: httpx.AsyncClient, path: str, cursor: str) -> None:
    body = _error(await client.get(path, params={"cursor": cursor}), 422)
    assert body["errors"][0]["field"] in ("cursor", "from")
