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
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


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
        assert sorted(applied, key=len) == [[], [], [], ["0001_initial"]]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == 1
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
        "/v1/vehicles/{vehicle_id}/assignments",
        "/v1/vehicles/{vehicle_id}/status",
        "/v1/meters/{meter_id}/status",
        "/v1/analytics/performance/{vehicle_id}",
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
