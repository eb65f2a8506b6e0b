"""Every vehicle's window at once: the fleet ranking's numbers, in one statement
(`fleet`, a named statement of this package's SQL file).

The per-vehicle path (`store.performance`) reads one device's rows and rollups through its
primary key. Done 10,000 times that would be 10,000 × eight index probes; here each source is
read once for the whole fleet, by time range:

* day rollups of the window's whole UTC days and hour rollups of its other whole hours, by
  their time indexes, skipping devices with dirty hours;
* the partial hours at the window's edges from the marks inside their hour rollups
  (migrations/0007_minute_marks.sql): a window from half past reads one rollup per device at
  each edge, not its 30 raw readings;
* raw rows where no rollup applies: the partial first hour when its rollup has no marks or
  is not rolled yet, the hours not rolled up yet at its end, and every dirty device-hour.

No piece needs sorting into place: each carries the reading before it and a rollup the
increment from it (migrations/0001_baseline.sql), so a hash aggregate sums a device's pieces.
Only raw readings are ordered, within their short runs, and each run's first reading looks its
predecessor up. The increments follow the rules of `energy_engine.energy`, so every vehicle's
numbers equal what `GET /v1/analytics/performance/{id}` answers for the same window
(tests/integration/test_fleet_analytics.py checks that on random streams). Meters count for a
vehicle over the part of the window they were assigned to it; the few assignments that start
or end inside the window go through `meter_segment_energy` one by one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg

from energy_engine.analytics.figures import known
from energy_engine.analytics.store import Performance, VehicleWindow, queries
from energy_engine.db import Connection, Pool
from energy_engine.rollups import store as rollups
from energy_engine.settings import EnergySemantics, Settings

HOUR = timedelta(hours=1)


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


class Plan(NamedTuple):
    """Which parts of a window [start, end) come from where (see the module docstring)."""

    hour_from: datetime  # the rolled-up whole hours [hour_from, hour_to)
    hour_to: datetime
    raw_to: datetime  # the partial first hour [start, raw_to)
    marked_start: bool  # [start, hour_from) from its hour rollup's marks, not raw rows
    marked_end: bool  # [hour_to, end) likewise

    @property
    def rollups_from(self) -> datetime:
        """Where the devices without dirty hours read rollups from: with marks, the hour the
        window starts in (its readings before the start are taken away again)."""
        return self.hour_from - HOUR if self.marked_start else self.hour_from


def _cuts_marks(at: datetime) -> bool:
    """Whether `at` falls inside an hour on a whole millisecond, where marks can split it."""
    return _floor_hour(at) != at and at.microsecond % 1000 == 0


def plan(
    start: datetime,
    end: datetime,
    rolled: datetime | None,
    marked: datetime | None,
    lookback: timedelta,
) -> Plan:
    """`rolled`: hours before it are rolled up (None: none); `marked`: rollups of hours from it
    on carry marks (None: all of them); `lookback` the baseline lookback."""
    hour_from = start if _floor_hour(start) == start else _floor_hour(start) + HOUR
    hour_to = hour_from if rolled is None else max(hour_from, min(_floor_hour(end), rolled))
    raw_to = min(hour_from, end)

    def markable(hour: datetime) -> bool:
        return rolled is not None and hour + HOUR <= rolled and (marked is None or hour >= marked)

    # The first reading after a cut is joined to the one before it from the marks only when
    # that reading (at most an hour before) is within the baseline lookback.
    marked_start = (
        _cuts_marks(start)
        and hour_from <= end
        and lookback >= HOUR
        and markable(_floor_hour(start))
    )
    marked_end = _cuts_marks(end) and hour_to == _floor_hour(end) and markable(hour_to)
    return Plan(hour_from, hour_to, raw_to, marked_start, marked_end)


# The fleet statement with each stream's totals from its rollups alone
# (migrations/0007_minute_marks.sql), for a window with no raw piece and no dirty device: the
# same answer, planned without the raw and dirty machinery (16 of 26 ms of planning, and an
# aggregate less per stream, on the benchmark's fleet). A replacement rather than a copy of
# the statement, so the two cannot drift apart.
SETTLED = queries.fleet.replace("stream_fleet_totals(", "stream_fleet_settled(")


class Prepared(NamedTuple):
    statement: str  # queries.fleet or SETTLED
    args: tuple[object, ...]


async def prepare(conn: Connection, start: datetime, end: datetime, settings: Settings) -> Prepared:
    """Inside a transaction: set the fleet statement up and choose it with its arguments."""
    await conn.execute(queries.fleet_session)
    timeout_ms = int(settings.fleet_statement_timeout.total_seconds() * 1000)
    await conn.execute(queries.fleet_timeout, f"{timeout_ms}ms")
    marks = await rollups.watermarks(conn)
    parts = plan(start, end, marks["rolled"], marks["marked"], settings.baseline_lookback)
    args = (
        start,
        end,
        parts.hour_from,
        parts.hour_to,
        parts.raw_to,
        settings.max_power_kw,
        settings.energy_semantics is EnergySemantics.INTERVAL,
        start - settings.baseline_lookback,
        settings.baseline_lookback,
        parts.rollups_from,
        parts.marked_start,
        parts.marked_end,
    )
    raw = (parts.raw_to > start and not parts.marked_start) or (
        parts.hour_to < end and not parts.marked_end
    )
    dirty_to = parts.hour_to + HOUR if parts.marked_end else parts.hour_to
    if raw or await conn.fetchval(queries.any_dirty_before, dirty_to):
        return Prepared(queries.fleet, args)
    return Prepared(SETTLED, args)


async def fleet_rows(
    pool: Pool, start: datetime, end: datetime, settings: Settings
) -> list[asyncpg.Record]:
    """Every known vehicle's window [start, end), one row each (the `fleet` statement's
    columns): the ranking reads them as they come, `performance_of` one when it is shown."""
    async with pool.acquire() as conn:
        # One snapshot for the watermark and the rollups it vouches for.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            prepared = await prepare(conn, start, end, settings)
            rows: list[asyncpg.Record] = await conn.fetch(prepared.statement, *prepared.args)
    return rows


def performance_of(row: asyncpg.Record) -> Performance:
    dc = VehicleWindow(row[1], row[2], row[3], row[4])
    return Performance(dc, row[5], row[6], row[7], row[8])


def sides(row: asyncpg.Record) -> tuple[float | None, float | None]:
    """A row's AC and DC kWh by the rule of `figures.ac_kwh` and `figures.dc_kwh`, without
    building its Performance (10,000 a request)."""
    return known(row[7], row[6]), known(row[2], row[1])


async def fleet_numbers(
    pool: Pool, start: datetime, end: datetime, settings: Settings
) -> dict[str, Performance]:
    """Every known vehicle's window [start, end), by vehicle id."""
    return {r[0]: performance_of(r) for r in await fleet_rows(pool, start, end, settings)}
