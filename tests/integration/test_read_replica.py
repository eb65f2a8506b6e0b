"""DATABASE_READ_URL: the read routes (analytics, status) read the replica; ingest, keys and
assignments stay on DATABASE_URL.

The replica here is a copy of the primary taken at one instant, read-only as a hot standby is
(`default_transaction_read_only`: a write fails with the standby's SQLSTATE 25006), and left
behind while the primary moves on, as a lagging replica would be.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from energy_engine.app import create_app
from energy_engine.settings import Settings
from tests.conftest import MakeSettings, PrivatePostgres, admin, app_client, with_database
from tests.readings import iso, meter, minute_ago, vehicle

READ_ROUTES = (
    "/v1/vehicles/V-1/status",
    "/v1/vehicles/status?vehicleId=V-1",
    "/v1/meters/M-1/status",
    "/v1/fleet/status",
    "/v1/analytics/performance/V-1",
    "/v1/analytics/performance/V-1/series",
    "/v1/analytics/fleet",
)


@pytest.fixture
async def replica_of(postgres_url: str) -> AsyncIterator[list[str]]:
    """Names of the copies made by `_copy`, dropped at the end."""
    made: list[str] = []
    yield made
    for name in made:
        await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _copy(postgres_url: str, database_url: str, made: list[str]) -> str:
    """A read-only copy of the database at `database_url` as it is now."""
    name = f"energy_replica_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        source = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {source}")
    made.append(name)
    await admin(postgres_url, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    return with_database(postgres_url, name)


async def _run(settings: Settings, *steps: tuple[str, str, object]) -> list[tuple[int, Any]]:
    """Start the engine, make the requests (method, path, JSON body), stop it."""
    application = create_app(settings)
    answers = []
    async with application.router.lifespan_context(application):
        async with app_client(application) as http:
            for method, path, body in steps:
                response = await http.request(method, path, json=body)
                answers.append((response.status_code, response.json()))
    return answers


async def test_read_routes_read_the_replica_and_writes_go_to_the_primary(
    make_settings: MakeSettings,
    postgres_url: str,
    database_url: str,
    replica_of: list[str],
) -> None:
    meters = [meter("M-1", minute_ago(3), 10.0), meter("M-1", minute_ago(2), 11.2)]
    vehicles = [vehicle("V-1", minute_ago(3), 5.0), vehicle("V-1", minute_ago(2), 6.0)]
    since = iso(minute_ago(10))
    before = [
        ("POST", "/v1/assignments", {"vehicleId": "V-1", "meterId": "M-1", "validFrom": since}),
        ("POST", "/v1/ingest/meter", meters),
        ("POST", "/v1/ingest/vehicle", vehicles),
    ]
    assert [status for status, _ in await _run(make_settings(), *before)] == [201, 200, 200]
    replica = await _copy(postgres_url, database_url, replica_of)

    later = [
        ("POST", "/v1/ingest/vehicle", [vehicle("V-1", minute_ago(1), 7.0)]),
        ("POST", "/v1/ingest/vehicle", [vehicle("V-2", minute_ago(1), 1.0)]),
        ("POST", "/v1/assignments", {"vehicleId": "V-2", "meterId": "M-2"}),
        *(("GET", path, None) for path in READ_ROUTES),
        ("GET", "/v1/analytics/performance/V-2", None),
        ("GET", "/v1/vehicles/V-2/assignments", None),
    ]
    answers = await _run(make_settings(database_read_url=replica), *later)
    writes, reads, (unknown, assigned) = answers[:3], answers[3:-2], answers[-2:]
    assert [status for status, _ in writes] == [200, 200, 201]
    assert [status for status, _ in reads] == [200] * len(READ_ROUTES)
    by_path = dict(zip(READ_ROUTES, (body for _, body in reads), strict=True))
    # The replica's state: the copy's latest reading, not the one the primary took since.
    status = by_path["/v1/vehicles/V-1/status"]
    assert (status["timestamp"], status["kwhDeliveredDc"]) == (iso(minute_ago(2)), 6.0)
    report = by_path["/v1/analytics/performance/V-1"]
    assert report["dcDeliveredKwh"] == pytest.approx(1.0)
    assert report["acConsumedKwh"] == pytest.approx(1.2)
    # A vehicle only the primary has is unknown to the read routes until the replica has it;
    # assignments are read where they are written.
    assert unknown[0] == 404
    assert assigned[0] == 200
    assert [row["meterId"] for row in assigned[1]] == ["M-2"]

    primary = await asyncpg.connect(database_url)
    try:
        latest = await primary.fetchval(
            "SELECT max(read_at) FROM vehicle_readings WHERE vehicle_id = 'V-1'"
        )
        assert latest == minute_ago(1)
    finally:
        await primary.close()


async def test_an_unreachable_replica_answers_503_and_ingest_goes_on(
    make_settings: MakeSettings, private_postgres: PrivatePostgres
) -> None:
    short = timedelta(seconds=2)
    # The private server as the replica: migrated by an engine started on it once.
    await _run(make_settings(database_url=private_postgres.url))
    settings = make_settings(
        database_read_url=private_postgres.url, connect_timeout=short, acquire_timeout=short
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with app_client(application) as http:
            assert (await http.get("/v1/meters/M-9/status")).status_code == 404  # replica up
            ready = await http.get("/health/ready")
            assert (ready.status_code, ready.json()["readDatabase"]) == (200, "ok")
            private_postgres.stop()
            down = await http.get("/v1/meters/M-9/status")
            assert down.status_code == 503
            assert down.headers["retry-after"].isdigit()
            assert down.json()["error"] == "database_unavailable"
            ingest = await http.post("/v1/ingest/meter", json=meter("M-9", minute_ago(1), 1.0))
            assert ingest.status_code == 200
            # Told, and the node stays in service: ingest does not need the replica.
            ready = await http.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["readDatabase"].startswith("unreachable: ")
            private_postgres.start()
            back = await http.get("/v1/meters/M-9/status")
            assert back.status_code == 404  # the replica never got M-9: it is a separate server
