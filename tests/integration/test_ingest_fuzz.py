"""Property-based fuzzing of every route that takes a body, through the real app and database:
whatever the body and headers, the answer is 2xx or a 4xx in the one error shape, never a 5xx,
and nothing outside the readings' bounds is ever stored."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from energy_engine.app import create_app
from energy_engine.bounds import MAX_KWH
from energy_engine.settings import Settings
from tests.conftest import app_client
from tests.readings import iso, meter, minute_ago, vehicle

PATHS = ["/v1/ingest", "/v1/ingest/meter", "/v1/ingest/vehicle", "/v1/assignments"]
FIELDS = ["meterId", "vehicleId", "kwhConsumedAc", "kwhDeliveredDc", "voltage", "soc"]
FIELDS += ["batteryTemp", "timestamp", "validFrom"]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and the infinities too: json.dumps writes them as invalid JSON
    st.text(max_size=40),
    st.sampled_from(["M-1", "V-1", "a\x00b", "x" * 65, iso(minute_ago(1)), "2026-13-45T99:00Z"]),
    st.sampled_from([1e308, -1e308, 1e9 + 1, 5e-324, 101.0, -41.0, 1001.0, 0.5]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@st.composite
def reading_like(draw: st.DrawFn) -> Any:
    """A valid reading with some fields replaced, dropped or added: the close misses that
    reach the deepest validation."""
    at = minute_ago(draw(st.integers(-10, 60 * 24 * 40)))
    item = draw(st.sampled_from([meter("M-1", at, 10.0), vehicle("V-1", at, 5.0)]))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(st.sampled_from(FIELDS))
        if action == "drop":
            item.pop(key, None)
        else:
            item[key] = draw(json_leaves)
    return item


def _encode(value: Any, duplicate: bool) -> bytes:
    text = json.dumps(value)
    if duplicate and text.startswith("{") and len(text) > 2:
        first = text[1 : text.find(",")] if "," in text else text[1:-1]
        text = "{" + first + ", " + text[1:]  # the first key again
    return text.encode()


bodies = st.one_of(
    st.builds(
        _encode, st.one_of(json_values, reading_like(), st.lists(reading_like())), st.booleans()
    ),
    st.binary(max_size=200),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(
            [
                "application/json",
                "application/x-ndjson",
                "application/notjson",
                "text/plain",
                "application/json; charset=utf-8",
                "",
            ]
        )
        | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        "content-encoding": st.sampled_from(["gzip", "identity", "br", "GZIP", ""]),
    },
)


async def _out_of_bounds(database_url: str) -> int:
    """Stored readings (history or hot rows) outside the bounds the API promises."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            f"""
            SELECT (SELECT count(*) FROM meter_readings
                    WHERE NOT kwh_consumed_ac BETWEEN 0 AND {MAX_KWH}
                       OR NOT voltage BETWEEN 0 AND 1000)
                 + (SELECT count(*) FROM vehicle_readings
                    WHERE NOT kwh_delivered_dc BETWEEN 0 AND {MAX_KWH}
                       OR NOT soc BETWEEN 0 AND 100
                       OR NOT battery_temp BETWEEN -40 AND 100
                       OR read_at > now() + interval '5 minutes')
            """
        )
        return count
    finally:
        await conn.close()


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient]]:
    """The app with its lifespan, on a loop that the synchronous hypothesis test drives."""
    settings_ = Settings(_env_file=None, database_url=database_url, data_dir=tmp_path)
    app = create_app(settings_)
    lifespan = app.router.lifespan_context(app)
    with asyncio.Runner() as runner:
        runner.run(lifespan.__aenter__())
        client = app_client(app)
        try:
            yield runner, client
        finally:
            runner.run(client.aclose())
            runner.run(lifespan.__aexit__(None, None, None))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(PATHS), body=bodies, head=headers, packed=st.booleans())
def test_any_body_and_headers_get_a_2xx_or_a_documented_4xx(
    engine: tuple[asyncio.Runner, httpx.AsyncClient],
    database_url: str,
    path: str,
    body: bytes,
    head: dict[str, str],
    packed: bool,
) -> None:
    runner, client = engine
    if packed and head.get("content-encoding", "").lower() == "gzip":
        body = gzip.compress(body)
    response = runner.run(client.post(path, content=body, headers=head))
    event(f"{path} answered {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        answer = response.json()
        assert set(answer) == {"error", "message", "errors"}, answer
        assert isinstance(answer["error"], str) and answer["message"]
    elif path.startswith("/v1/ingest"):
        counts = response.json()
        assert set(counts) == {"accepted", "duplicates"}, counts
        assert counts["accepted"] >= 0 and counts["duplicates"] >= 0
        assert counts["accepted"] + counts["duplicates"] >= 1
        assert runner.run(_out_of_bounds(database_url)) == 0


def test_nothing_out_of_bounds_is_stored_after_fuzzing(
    engine: tuple[asyncio.Runner, httpx.AsyncClient], database_url: str
) -> None:
    runner, client = engine
    at = minute_ago(1)
    hostile = [
        {**meter("M-1", at, 1e308)},
        {**vehicle("V-1", at, 5.0), "soc": 100.5},
        {**vehicle("V-1", at, 5.0), "batteryTemp": -41},
        {**meter("M-1", at, 5.0), "voltage": 1000.5},
        {**meter("M-1", at, 5.0), "timestamp": "0001-01-01T00:00:00Z"},
        {**meter("M-1", at, 5.0), "timestamp": iso(at + timedelta(days=1))},
        {**vehicle("V-1", at, MAX_KWH * 2)},
    ]
    for item in hostile:
        response = runner.run(client.post("/v1/ingest", json=item))
        assert response.status_code == 422, (item, response.text)
    good = runner.run(client.post("/v1/ingest", json=[meter("M-2", at, MAX_KWH)]))
    assert good.json() == {"accepted": 1, "duplicates": 0}

    assert runner.run(_out_of_bounds(database_url)) == 0
