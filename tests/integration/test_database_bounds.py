"""Every read is bounded at the database: statement_timeout and temp_file_limit on the request
pool, a read out of time answered 503, and a role that may not set temp_file_limit still
starts (one warning)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from energy_engine import db
from energy_engine.analytics import fleet
from energy_engine.rollups import store as rollups
from tests.conftest import ClientWith, MakeSettings, admin
from tests.readings import iso, minute_ago, vehicle


async def test_request_sessions_carry_the_limits(make_settings: MakeSettings) -> None:
    settings = make_settings(statement_timeout=timedelta(seconds=3), temp_file_limit_mb=64)
    pool = await db.create_pool(settings.database_url or "", settings)
    try:
        async with pool.acquire() as conn:
            limits = await conn.fetchrow(
                "SELECT current_setting('statement_timeout') AS statement_timeout,"
                " current_setting('temp_file_limit') AS temp_file_limit"
            )
    finally:
        await pool.close()
    assert limits is not None
    assert (limits["statement_timeout"], limits["temp_file_limit"]) == ("3s", "64MB")


async def test_the_fleet_statement_has_a_bound_of_its_own(make_settings: MakeSettings) -> None:
    settings = make_settings(
        statement_timeout=timedelta(seconds=3), fleet_statement_timeout=timedelta(seconds=17)
    )
    end = datetime.now(UTC)
    pool = await db.create_pool(settings.database_url or "", settings)
    try:
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await fleet.prepare(conn, end - timedelta(days=1), end, settings)
                assert await conn.fetchval("SHOW statement_timeout") == "17s"
            # Only for the fleet's transaction: the connection goes back bounded as before.
            assert await conn.fetchval("SHOW statement_timeout") == "3s"
    finally:
        await pool.close()


async def test_a_read_out_of_time_answers_503(
    client_with: ClientWith, conn: asyncpg.Connection
) -> None:
    window = {"from": iso(minute_ago(60)), "to": iso(minute_ago(0))}
    async with client_with(statement_timeout=timedelta(milliseconds=200)) as client:
        assert (await client.post("/v1/ingest", json=vehicle("V-1", minute_ago(1), 5.0))).is_success
        # Another session holds the hot store: every read of it waits, until the statement
        # times out.
        async with conn.transaction():
            await conn.execute("LOCK TABLE vehicle_state IN ACCESS EXCLUSIVE MODE")
            for path, params in (
                ("/v1/vehicles/V-1/status", None),
                ("/v1/analytics/performance/V-1", window),  # the lean handler
                ("/v1/analytics/performance/V-1/series", window),
                ("/v1/analytics/fleet", window),
            ):
                response = await client.get(path, params=params)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["retry-after"].isdigit()
                body = response.json()
                assert body["error"] == "database_timeout"
                assert "statement_timeout" in body["message"] and body["errors"] == []
        # The lock gone, the same reads answer.
        assert (await client.get("/v1/vehicles/V-1/status")).status_code == 200


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
async def plain_role(postgres_url: str, database_url: str) -> AsyncIterator[str]:
    """A database URL for a role that is no superuser (the role is dropped afterwards)."""
    role = f"plain_{uuid.uuid4().hex[:8]}"
    await admin(postgres_url, f"CREATE ROLE {role} LOGIN")
    name = urlsplit(database_url).path.lstrip("/")
    await admin(database_url, f"GRANT ALL ON SCHEMA public TO {role}")
    yield _as_role(database_url, role)
    await admin(database_url, f"REVOKE ALL ON SCHEMA public FROM {role}")
    await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"DROP ROLE {role}")


async def test_a_role_that_may_not_set_temp_file_limit_starts_with_a_warning(
    plain_role: str, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(statement_timeout=timedelta(seconds=4))
    with caplog.at_level(logging.WARNING, logger="energy_engine.db"):
        pool = await db.create_pool(plain_role, settings)
    try:
        async with pool.acquire() as conn:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user")
            assert await conn.fetchval("SHOW statement_timeout") == "4s"
            assert await conn.fetchval("SHOW temp_file_limit") == "-1"  # the server's default
    finally:
        await pool.close()
    warnings = [r for r in caplog.records if r.name == "energy_engine.db"]
    assert len(warnings) == 1 and "temp_file_limit" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


async def test_the_engines_upkeep_is_not_bounded_like_a_read(
    make_settings: MakeSettings, conn: asyncpg.Connection
) -> None:
    # A refresher catching up on a backlog sorts far more than a client's read may spill:
    # with 1 MB of temporary files and almost no work_mem, rolling 90,000 readings up spills
    # past the limit unless the refresher lifts it (as it does statement_timeout).
    settings = make_settings(temp_file_limit_mb=1)
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f"ALTER DATABASE {database} SET work_mem = '64kB'")
    start = minute_ago(60 * 4).replace(minute=0)
    await conn.execute(
        """
        INSERT INTO vehicle_readings (read_at, kwh_delivered_dc, soc, battery_temp, vehicle_id)
        SELECT $1::timestamptz + m * interval '1 minute', m * 0.1, 50, 25, 'V-' || v
        FROM generate_series(0, 179) AS m, generate_series(1, 500) AS v
        """,
        start,
    )
    pool = await db.create_pool(settings.database_url or "", settings)
    try:
        await rollups.refresh(pool, settings, start + timedelta(hours=4), rounds=1000)
        async with pool.acquire() as pooled:
            await db.prepare(pooled, settings)  # migrations lift the limits too, then restore
            restored = await pooled.fetchval("SELECT current_setting('temp_file_limit')")
    finally:
        await pool.close()
    rolled = await conn.fetchval("SELECT count(*) FROM vehicle_rollups")
    assert rolled == 500 * 3
    assert restored == "1MB"
