"""Health endpoints, migrations and the published OpenAPI contract."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from energy_engine import db
from energy_engine.app import create_app
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
        shipped = [m.label for m in db.load_migrations()]
        assert shipped[0] == "0001_baseline"
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


@pytest.fixture
async def migrated(postgres_url: str) -> AsyncIterator[str]:
    """A database of its own, migrated by `energy-engine migrate`'s code."""
    name = f"energy_sums_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE DATABASE {name}")
    url = with_database(postgres_url, name)
    conn = await asyncpg.connect(url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    yield url
    await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_every_applied_migration_is_recorded_with_its_checksum(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    finally:
        await conn.close()
    expected = {
        (m.version, m.name, hashlib.sha256(m.sql.encode()).hexdigest())
        for m in db.load_migrations()
    }
    assert {tuple(row) for row in rows} == expected


async def _record(url: str, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


EDITED = "migrations/0001_baseline.sql differs from the migration this database applied on "


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
async def test_an_edited_migration_makes_serve_and_migrate_refuse(
    migrated: str, command: list[str]
) -> None:
    """The database applied a 0001 whose text was not the shipped one: nothing starts."""
    older = hashlib.sha256(b"-- 0001 as it was released\n").hexdigest()
    await _record(migrated, "UPDATE schema_migrations SET checksum = $1 WHERE version = 1", older)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "energy_engine.cli",
        *command,
        env={**os.environ, "DATABASE_URL": migrated},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    stderr = err.decode()
    assert process.returncode == 1
    assert stderr.startswith("error: " + EDITED), stderr
    assert f"(checksum {older[:12]}, shipped " in stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1


async def test_readiness_names_an_edited_migration(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await _record(database_url, "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"].startswith(EDITED)


async def test_a_migration_this_build_does_not_ship_is_refused(migrated: str) -> None:
    await _record(
        migrated,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')",
    )
    conn = await asyncpg.connect(migrated)
    try:
        with pytest.raises(db.MigrationMismatch, match="has migration 0999_future, which this"):
            await db.migrate(conn)
    finally:
        await conn.close()


async def test_a_database_from_before_checksums_is_refused(migrated: str) -> None:
    await _record(migrated, "ALTER TABLE schema_migrations DROP COLUMN checksum")
    conn = await asyncpg.connect(migrated)
    try:
        with pytest.raises(db.MigrationMismatch, match="kept no migration checksums"):
            await db.migrate(conn)
    finally:
        await conn.close()


async def test_start_up_objects_are_kept_out_of_full_collections_while_the_app_runs(
    settings: Settings,
) -> None:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        # Modules, models, routes and pools: tens of thousands of objects.
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0  # handed back to the collector with the app
