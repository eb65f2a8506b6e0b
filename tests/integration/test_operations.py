"""Health endpoints, migrations and the published OpenAPI contract."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from energy_engine import db
from energy_engine.settings import Settings
from tests.conftest import admin, with_database


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok", "rollupQuarantinedHours": 0})


async def test_not_ready_while_a_migration_is_missing(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    await conn.execute("DELETE FROM schema_migrations")
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert "pending" in ready.json()["status"]


async def test_concurrent_migrations_apply_each_version_once(postgres_url: str) -> None:
    name = f"energy_migrate_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name}")
    url = with_database(postgres_url, name)
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(db.prepare(c, Settings(_env_file=None)) for c in conns))
        applied = [r["applied"] for r in results]
        shipped = [f"{m.version:04d}_{m.name}" for m in db.load_migrations()]
        assert shipped[:2] == ["0001_initial", "0002_compact_history"]
        assert sorted(applied, key=len) == [[], [], [], shipped]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(shipped)
        assert await db.pending_migrations(conns[0]) == 0
        assert await conns[0].fetchval("SELECT to_regclass('meter_readings') IS NOT NULL")
    finally:
        for c in conns:
            await c.close()
        await admin(postgres_url, f"DROP DATABASE {name} WITH (FORCE)")


async def test_partitions_exist_for_every_acceptable_day(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    days = (settings.max_reading_age.days + 1) + settings.partition_days_ahead + 1
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'vehicle_readings'::regclass"
    )
    assert count >= days - 1  # the oldest day may roll over while the suite runs
    assert await db.ensure_partitions_ahead(conn, settings) <= 2


async def test_openapi_documents_every_route_and_the_reading_schemas(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert set(doc["paths"]) >= {
        "/v1/ingest",
        "/v1/ingest/meter",
        "/v1/ingest/vehicle",
        "/v1/assignments",
        "/v1/vehicles/{vehicleId}/assignments",
        "/v1/vehicles/{vehicleId}/status",
        "/v1/meters/{meterId}/status",
        "/v1/analytics/performance/{vehicleId}",
        "/health/live",
        "/health/ready",
    }
    schemas = doc["components"]["schemas"]
    assert set(schemas["MeterReading"]["required"]) == {
        "meterId",
        "kwhConsumedAc",
        "voltage",
        "timestamp",
    }
    assert set(schemas["VehicleReading"]["required"]) == {
        "vehicleId",
        "soc",
        "kwhDeliveredDc",
        "batteryTemp",
        "timestamp",
    }
    content = doc["paths"]["/v1/ingest"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"]["oneOf"][0] == {
        "$ref": "#/components/schemas/AnyReading"
    }
    assert content["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/AnyReading"}
    assert set(doc["paths"]["/v1/ingest/meter"]["post"]["responses"]) >= {"200", "422", "503"}
    dangling = [ref for ref in _refs(doc) if ref.rsplit("/", 1)[-1] not in schemas]
    assert dangling == []
    assert (await client.get("/docs")).status_code == 200


def _refs(node: object) -> list[str]:
    """Every `$ref` in an OpenAPI document."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_compacting_migration_keeps_every_row(postgres_url: str) -> None:
    name = f"energy_v1_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(with_database(postgres_url, name))
    try:
        first = db.load_migrations()[0]
        await conn.execute(first.sql)
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (1, $1)", first.name
        )
        await conn.execute("SELECT ensure_reading_partitions('2026-01-01', '2026-01-02')")
        await conn.execute(
            "INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)"
            " VALUES ('M-1', '2026-01-01T23:59Z', 12345.678, 229.5),"
            " ('M-1', '2026-01-02T00:00Z', 12345.679, 230.25)"
        )
        await conn.execute(
            "INSERT INTO vehicle_readings"
            " (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)"
            " VALUES ('V-1', '2026-01-02T00:00Z', 55.5, 87.125, 31.5)"
        )
        assert await db.migrate(conn) == [
            f"{m.version:04d}_{m.name}" for m in db.load_migrations()[1:]
        ]
        meters = await conn.fetch(
            "SELECT meter_id, kwh_consumed_ac, voltage FROM meter_readings ORDER BY read_at"
        )
        assert [tuple(r) for r in meters] == [("M-1", 12345.678, 229.5), ("M-1", 12345.679, 230.25)]
        vehicle = await conn.fetchrow(
            "SELECT soc, kwh_delivered_dc, battery_temp FROM vehicle_readings"
        )
        assert vehicle is not None
        assert tuple(vehicle) == (55.5, 87.125, 31.5)
        partitions = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'meter_readings'::regclass"
        )
        assert partitions == 2
    finally:
        await conn.close()
        await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
