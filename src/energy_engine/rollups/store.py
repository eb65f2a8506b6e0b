"""Keeps the hourly rollups complete: seals finished hours, aggregates them, re-aggregates the
device-hours that late readings made dirty. See migrations/0001_baseline.sql for the model, and
this package's SQL file for the statements.

Every aggregation recomputes whole device-hours from raw rows (never adds to a stored rollup),
and looks the reading before each hour up in raw history, so running any step twice, or after a
crash, gives the same rollups.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

import asyncpg

from energy_engine import db, sql
from energy_engine.db import Connection, Pool
from energy_engine.errors import outage
from energy_engine.settings import EnergySemantics, Settings

log = logging.getLogger(__name__)

queries = sql.load("energy_engine.rollups")

REFRESH_LOCK_KEY = 0x656E_726F_6C6C  # one refresher at a time across processes

# The refresher's transactions may run long on a backlog: not bounded by the request pool's
# statement_timeout and temp_file_limit (db.create_pool), and given far more than its
# client-side command timeout.
UNBOUNDED = db.UNBOUNDED_TRANSACTION
STATEMENT_TIMEOUT_S = 3600.0

T = TypeVar("T")

HOUR = timedelta(hours=1)
SPAN = timedelta(days=1)  # a span rollup's length
# How many start hours' spans are kept: the fleet's default window, the last 24 whole hours,
# starts at the newest; a day of them also serves the windows asked for in the last day.
SPAN_STARTS = timedelta(days=1)


class _Stream(NamedTuple):
    """The statements that roll one stream (meter or vehicle) up."""

    hours: str  # (re)aggregate device-hours from raw readings
    days: str  # day rollups from hour rollups
    spans: str  # span rollups (24 hours from each recent hour) from hour rollups
    repair_next: str  # the predecessor of the rollup after a redone hour
    devices_in: str  # the devices with readings in a range
    leave_dirty: str  # mark devices' hours in a range dirty


_STREAMS = {
    "meter": _Stream(
        queries.roll_meter_hours,
        queries.roll_meter_days,
        queries.roll_meter_spans,
        queries.repair_next_meter,
        queries.meter_devices_in,
        queries.leave_meters_dirty,
    ),
    "vehicle": _Stream(
        queries.roll_vehicle_hours,
        queries.roll_vehicle_days,
        queries.roll_vehicle_spans,
        queries.repair_next_vehicle,
        queries.vehicle_devices_in,
        queries.leave_vehicles_dirty,
    ),
}


async def _isolate(
    conn: Connection, run: Callable[[list[T]], Awaitable[object]], items: list[T]
) -> list[tuple[T, str]]:
    """Run `run` on `items` in a savepoint; if it fails, on each half, down to single items.
    Returns the items that fail on their own, with why. An outage is raised, not isolated."""
    try:
        async with conn.transaction():
            await run(items)
        return []
    except asyncpg.PostgresError as exc:
        if outage(exc) is not None or not items:
            raise
        if len(items) == 1:
            return [(items[0], f"{type(exc).__name__}: {exc}")]
        half = len(items) // 2
        return await _isolate(conn, run, items[:half]) + await _isolate(conn, run, items[half:])


async def quarantined(conn: Connection) -> int:
    """How many device-hours the refresher could not aggregate (read raw meanwhile)."""
    count: int = await conn.fetchval(queries.quarantined)
    return count


def _rules(settings: Settings) -> tuple[bool, float]:
    return settings.energy_semantics is EnergySemantics.INTERVAL, settings.max_power_kw


async def match_rules(conn: Connection, settings: Settings) -> bool:
    """Drop the rollups when they were computed with other energy rules; True if dropped.
    Analytics read raw rows until the refresher has rolled the history up again."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        await conn.execute(queries.lock, REFRESH_LOCK_KEY)
        row = await conn.fetchrow(queries.rules)
        wanted = _rules(settings)
        if row is not None and (row["interval_kwh"], row["max_power_kw"]) == wanted:
            return False
        await conn.execute(queries.reset, *wanted)
        return row is not None


async def seal(conn: Connection, until: datetime) -> None:
    """Move `sealed` to `until`; waits for writers that saw the old value to commit."""
    await conn.execute(queries.seal, until)


async def watermarks(conn: Connection) -> dict[str, datetime | None]:
    """`sealed` and `rolled`; None while nothing is sealed or rolled."""
    return {r["name"]: r["at"] for r in await conn.fetch(queries.watermarks)}


async def roll(conn: Connection, settings: Settings, *, max_hours: int = 24) -> datetime | None:
    """Aggregate up to `max_hours` sealed hours; returns the new `rolled`, None if idle or
    another process holds the refresh lock."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        if not await conn.fetchval(queries.try_lock, REFRESH_LOCK_KEY):
            return None
        marks = await watermarks(conn)
        rolled, sealed = marks["rolled"], marks["sealed"]
        if rolled is None:  # never rolled: start at the oldest partition
            rolled = await conn.fetchval(queries.oldest_day)
            if rolled is None:
                return None
        if sealed is None or sealed <= rolled:
            return None
        until: datetime = min(sealed, rolled + timedelta(hours=max_hours))
        for stream, statements in _STREAMS.items():
            try:
                async with conn.transaction():
                    await conn.execute(
                        statements.hours,
                        *_rules(settings),
                        rolled,
                        until,
                        None,  # every device
                        None,  # no dirty device-hours
                        None,
                        timeout=STATEMENT_TIMEOUT_S,
                    )
            except asyncpg.PostgresError as exc:
                if outage(exc) is not None:
                    raise
                await _roll_apart(conn, settings, stream, rolled, until)
        # The days this batch completes.
        days = (_floor_day(rolled), _floor_day(until))
        if days[0] < days[1]:
            for statements in _STREAMS.values():
                await conn.execute(statements.days, *days, None, None, timeout=STATEMENT_TIMEOUT_S)
        await _roll_spans(conn, rolled, until)
        await conn.execute(queries.set_rolled, until)
        return until


async def _roll_spans(conn: Connection, rolled: datetime, until: datetime) -> None:
    """The span rollups that rolling [rolled, until) completes: the span from hour s is
    complete once s + 24 h is rolled; only the last day of start hours is kept."""
    keep_from = until - SPAN - SPAN_STARTS + HOUR
    starts = (max(rolled - SPAN + HOUR, keep_from), until - SPAN + HOUR)
    if starts[0] < starts[1]:
        for statements in _STREAMS.values():
            await conn.execute(statements.spans, *starts, None, None, timeout=STATEMENT_TIMEOUT_S)
    await conn.execute(queries.keep_spans, keep_from, *starts)


async def _roll_apart(
    conn: Connection,
    settings: Settings,
    stream: str,
    rolled: datetime,
    until: datetime,
) -> None:
    """Roll [rolled, until) of one stream up device group by device group, after rolling it
    all at once failed; the devices that fail alone are left dirty (to the redo)."""
    statements = _STREAMS[stream]
    devices = [r[0] for r in await conn.fetch(statements.devices_in, rolled, until)]

    async def roll_some(group: list[str]) -> None:
        await conn.execute(
            statements.hours,
            *_rules(settings),
            rolled,
            until,
            group,
            None,
            None,
            timeout=STATEMENT_TIMEOUT_S,
        )

    failed = await _isolate(conn, roll_some, devices)
    if failed:
        await conn.execute(statements.leave_dirty, [device for device, _ in failed], rolled, until)
        log.warning(
            "rollups: %d %ss could not be rolled up for [%s, %s); their hours are redone one "
            "by one (first: %s: %s)",
            len(failed),
            stream,
            rolled.isoformat(),
            until.isoformat(),
            *failed[0],
        )


async def redo_dirty(conn: Connection, settings: Settings, *, limit: int = 20_000) -> int:
    """Re-aggregate up to `limit` dirty device-hours below `rolled`; returns how many."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        if not await conn.fetchval(queries.try_lock, REFRESH_LOCK_KEY):
            return 0
        dirty = await conn.fetch(queries.take_dirty, limit)
        if not dirty:
            return 0
        failed: list[tuple[asyncpg.Record, str]] = []
        for stream, statements in _STREAMS.items():
            marks = [d for d in dirty if d["stream"] == stream]
            if marks:
                redo = functools.partial(_redo, conn, settings, statements)
                failed += await _isolate(conn, redo, marks)
        if failed:
            await _quarantine(conn, failed)
        bad = {(m["stream"], m["device_id"], m["hour"]) for m, _ in failed}
        done = [d for d in dirty if (d["stream"], d["device_id"], d["hour"]) not in bad]
        await conn.execute(
            queries.forget_dirty,
            [d["stream"] for d in done],
            [d["device_id"] for d in done],
            [d["hour"] for d in done],
            [d["generation"] for d in done],
        )
        streams, devices, hours = ([d[k] for d in done] for k in ("stream", "device_id", "hour"))
        await conn.execute(queries.release, streams, devices, hours)
        return len(dirty)


async def _redo(
    conn: Connection,
    settings: Settings,
    statements: _Stream,
    marks: Sequence[asyncpg.Record],
) -> None:
    """Redo the dirty hours `marks` of one stream, the next rollup of each, and their days."""
    devices = [m["device_id"] for m in marks]
    hours = [m["hour"] for m in marks]
    await conn.execute(
        statements.hours,
        *_rules(settings),
        None,  # no time range
        None,
        None,
        devices,
        hours,
        timeout=STATEMENT_TIMEOUT_S,
    )
    repaired = await conn.fetch(
        statements.repair_next, devices, hours, *_rules(settings), timeout=STATEMENT_TIMEOUT_S
    )
    devices += [r["device_id"] for r in repaired]
    hours += [r["hour"] for r in repaired]
    await conn.execute(statements.days, None, None, devices, hours, timeout=STATEMENT_TIMEOUT_S)
    await conn.execute(statements.spans, None, None, devices, hours, timeout=STATEMENT_TIMEOUT_S)


async def _quarantine(conn: Connection, failed: list[tuple[asyncpg.Record, str]]) -> None:
    """Keep device-hours whose redo failed out of the next rounds (they stay dirty)."""
    await conn.execute(
        queries.quarantine,
        [m["stream"] for m, _ in failed],
        [m["device_id"] for m, _ in failed],
        [m["hour"] for m, _ in failed],
        [m["generation"] for m, _ in failed],
        [reason[:500] for _, reason in failed],
    )
    first, reason = failed[0]
    log.warning(
        "rollups: %d device-hours quarantined, read raw until a new reading changes them "
        "(first: %s %s %s: %s)",
        len(failed),
        first["stream"],
        first["device_id"],
        first["hour"].isoformat(),
        reason,
    )


def _floor_day(at: datetime) -> datetime:
    """The start of `at`'s UTC day."""
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def sealable(now: datetime, grace: timedelta) -> datetime:
    """Every hour before the returned instant ended at least `grace` before `now`."""
    return (now - grace).replace(minute=0, second=0, microsecond=0)


async def refresh(pool: Pool, settings: Settings, now: datetime, *, rounds: int = 100) -> None:
    """Seal finished hours, roll them up and redo dirty hours, in at most `rounds`
    transactions each (the next call goes on where this one stopped)."""
    async with pool.acquire() as conn:
        await seal(conn, sealable(now, settings.rollup_grace))
        for _ in range(rounds):
            if await roll(conn, settings) is None:
                break
        for _ in range(rounds):
            if not await redo_dirty(conn, settings):
                break
