"""The statements the analytics routes run, by name from analytics/queries.sql, read history
through indexes and prune partitions: EXPLAIN on the fixed, rolled-up history of tests/plans.py
with the request pool's settings (generic plans, no JIT), as the routes run them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from energy_engine.analytics import fleet
from energy_engine.analytics.store import queries
from energy_engine.settings import Settings
from tests import plans
from tests.conftest import admin, with_database

HISTORY = ("meter_readings", "vehicle_readings")
SETTINGS = Settings(_env_file=None)
ARGS = (SETTINGS.baseline_lookback, SETTINGS.max_power_kw, False)
DAY_AGO = plans.WINDOW_END - timedelta(days=1)


@pytest.fixture(scope="module")
def history_database(postgres_url: str) -> Iterator[str]:
    """The fixed history of docs/analytics-plans.md, built once for the module."""
    name = f"energy_query_plans_{uuid.uuid4().hex[:8]}"

    async def build(url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await plans.seed(conn, SETTINGS)
        finally:
            await conn.close()

    asyncio.run(admin(postgres_url, f"CREATE DATABASE {name}"))
    try:
        url = with_database(postgres_url, name)
        asyncio.run(build(url))
        yield url
    finally:
        asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def conn(history_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection set up as the request pool sets its connections up."""
    connection = await asyncpg.connect(history_database)
    await connection.execute(plans.REQUEST_POOL)
    yield connection
    await connection.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(conn: asyncpg.Connection, statement: str, *args: object) -> list[dict[str, Any]]:
    raw = await plans.explain(conn, statement, *args, options="FORMAT JSON")
    return list(_nodes(orjson.loads(raw)[0]["Plan"]))


def _history_scans(nodes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (node["Node Type"], node["Relation Name"])
        for node in nodes
        if node.get("Relation Name", "").startswith(HISTORY)
    ]


ROUTES = {
    "report": (queries.performance, ("V-001", DAY_AGO, plans.WINDOW_END, *ARGS)),
    "report-meter-switched": (queries.performance, ("V-002", DAY_AGO, plans.WINDOW_END, *ARGS)),
    "series": (
        queries.series,
        ("V-002", DAY_AGO, plans.WINDOW_END, *ARGS, timedelta(hours=1), "hour"),
    ),
}


@pytest.mark.parametrize("route", ROUTES)
async def test_generic_plans_read_history_by_index_and_prune(
    conn: asyncpg.Connection, route: str
) -> None:
    statement, args = ROUTES[route]
    nodes = await _plan(conn, statement, *args)
    scans = _history_scans(nodes)
    assert scans, "the plan reads no history at all"
    assert {kind for kind, _ in scans} <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
    # A generic plan knows the window only when it starts: partitions outside it are removed
    # then, and every Append over history says so.
    appends = [
        node
        for node in nodes
        if node["Node Type"] == "Append"
        and any(
            child.get("Relation Name", "").startswith(HISTORY) for child in node.get("Plans", [])
        )
    ]
    assert appends
    assert all("Subplans Removed" in node for node in appends), appends


async def test_the_report_reads_only_its_own_rows(conn: asyncpg.Connection) -> None:
    statement, args = ROUTES["report"]
    # Counted by the table statistics of this transaction rather than read off EXPLAIN: the
    # hours not rolled up are read by PL/pgSQL helpers (migrations/0001_baseline.sql), whose
    # statements EXPLAIN does not show.
    async with conn.transaction():
        await conn.fetch(statement, *args)
        counts = await conn.fetchrow(
            "SELECT sum(idx_tup_fetch), sum(seq_tup_read) FROM pg_stat_xact_user_tables"
            " WHERE relname LIKE 'vehicle_readings_p%'"
        )
    assert counts is not None
    fetched, seq_read = counts
    # At most the vehicle's own readings of the window and its baseline (a reading every 30
    # minutes), never those of the other 199 vehicles, and no partition read through.
    assert seq_read == 0
    assert 0 < fetched <= 24 * 2 + 1


async def test_the_fleet_ranking_prunes_while_planning(conn: asyncpg.Connection) -> None:
    day = plans.DAY_START
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        prepared = await fleet.prepare(conn, day, day + timedelta(days=1), SETTINGS)
        # The statement with raw pieces, whichever this window takes.
        nodes = await _plan(conn, queries.fleet, *prepared.args)
    scans = _history_scans(nodes)
    assert scans
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    # Custom plan: the time-range reads are pruned to the window's day while planning; the
    # other partitions are only probed by index for a device's reading before a run.
    ranges = {relation for kind, relation in scans if kind == "Bitmap Heap Scan"}
    assert ranges <= {"meter_readings_p20260106", "vehicle_readings_p20260106"}
