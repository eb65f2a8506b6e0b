"""The lean report handler answers what the FastAPI route answers, and only plain requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from energy_engine.analytics.endpoint import AnalyticsMiddleware, _window
from energy_engine.asgi import Message, Receive, Scope, Send
from energy_engine.settings import Settings
from tests.readings import iso, meter, minute_ago, vehicle
from tests.reference import stored_body

T0 = minute_ago(120)
WINDOW = {"from": iso(T0 - timedelta(minutes=5)), "to": iso(T0 + timedelta(minutes=65))}


async def _charge(client: httpx.AsyncClient) -> None:
    minutes = range(61)
    await client.post(
        "/v1/ingest/meter", json=[meter("M-1", T0 + timedelta(minutes=m), m * 1.0) for m in minutes]
    )
    await client.post(
        "/v1/ingest/vehicle",
        json=[vehicle("V-1", T0 + timedelta(minutes=m), m * 0.9) for m in minutes],
    )
    response = await client.post(
        "/v1/assignments",
        json={"vehicleId": "V-1", "meterId": "M-1", "validFrom": iso(T0 - timedelta(hours=1))},
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("vehicle_id", "params", "status"),
    [
        ("V-1", WINDOW, 200),
        ("V-1", {"from": WINDOW["from"]}, 200),
        ("V-1", {}, 200),
        ("V-1", {"from": "2026-01-01T00:00:00"}, 422),  # no offset
        ("V-1", {"from": WINDOW["to"], "to": WINDOW["from"]}, 422),
        ("ghost", WINDOW, 404),
    ],
    ids=["window", "from only", "default window", "no offset", "from after to", "unknown"],
)
async def test_lean_and_fastapi_answers_are_the_raw_historys(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    settings: Settings,
    vehicle_id: str,
    params: dict[str, str],
    status: int,
) -> None:
    await _charge(client)
    path = f"/v1/analytics/performance/{vehicle_id}"
    lean = await client.get(path, params=params)
    # An extra parameter sends the request on to FastAPI, which ignores it.
    routed = await client.get(path, params={**params, "via": "fastapi"})
    for response in (lean, routed):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
    if status != 200:
        assert lean.json() == routed.json()
        return
    for body in (lean.json(), routed.json()):
        start = datetime.fromisoformat(body.pop("from"))
        end = datetime.fromisoformat(body.pop("to"))
        if "to" in params:
            assert end == datetime.fromisoformat(params["to"])
        else:  # the default window ends at the request's own now
            assert T0 + timedelta(minutes=60) < end <= datetime.now(UTC)
        if "from" in params:
            assert start == datetime.fromisoformat(params["from"])
        else:
            assert end - start == timedelta(hours=24)
        # Both answers against the report worked out from the raw history rows.
        assert body == await stored_body(conn, vehicle_id, start, end, settings)
        # The same charge in every window: 60 one-minute steps of 1 kWh AC and 0.9 kWh DC.
        assert (body["acConsumedKwh"], body["dcDeliveredKwh"]) == (
            pytest.approx(60.0),
            pytest.approx(54.0),
        )


async def test_the_handler_answers_without_the_app(app: FastAPI, settings: Settings) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://engine"
    ) as client:
        await _charge(client)

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError(f"{scope['path']} reached the app")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    query = f"from={WINDOW['from']}&to={WINDOW['to']}".replace("+", "%2B").encode()
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/analytics/performance/V-1",
        "query_string": query,
        "headers": [],
        "app": app,
    }
    await AnalyticsMiddleware(downstream, settings)(scope, receive, send)
    assert sent[0]["status"] == 200
    assert orjson.loads(sent[1]["body"])["vehicleId"] == "V-1"


@pytest.mark.parametrize(
    "query",
    [b"from=2026-01-01T00:00:00Z&from=2026-01-02T00:00:00Z", b"from=", b"step=1h", b"from=soon"],
    ids=["repeated", "empty", "other parameter", "not a time"],
)
def test_anything_but_a_plain_window_goes_on_to_fastapi(query: bytes) -> None:
    assert _window(query) is None


def test_a_plain_window_is_parsed() -> None:
    start, end = _window(b"from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00%2B01:00") or (
        None,
        None,
    )
    assert start == datetime(2026, 1, 1, tzinfo=UTC)
    assert end == datetime(2026, 1, 1, 23, tzinfo=UTC)
