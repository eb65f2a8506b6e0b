"""The maintenance loop's round: history partitions ahead, packing, retention, and the record.

One process at a time does the work, whatever the number of workers and hosts: a round first
tries a session-level advisory lock (MAINTENANCE_LOCK_KEY) and returns at once, doing nothing,
when another process holds it; the lock is released at the end of every round.

Retention drops whole day partitions of history (meter_readings, vehicle_readings), never rows:
a DROP frees the space at once and writes almost no WAL, where a DELETE of 14M rows a day would
write them all and leave the space to vacuum. Each drop is its own short transaction with a
lock_timeout (Settings.retention_lock_timeout): DROP TABLE of a partition locks the partitioned
table ACCESS EXCLUSIVE, and while it waits for that lock ingest queues behind it, so it waits
briefly and the next round retries. Chosen over DETACH PARTITION … CONCURRENTLY (PostgreSQL 14+,
also on 15 and 16), which locks less but cannot run in a transaction block, waits without bound
for every transaction that might see the partition, and when interrupted leaves the partition
"detach pending" until someone runs DETACH … FINALIZE: more states for a loop to repair, to
save a lock held for milliseconds (the engine already takes the same lock to create partitions).

Packing (Settings.pack_after) rewrites each raw day partition older than that as one row per
device and hour (migrations/0005_packed_history.sql), a partition a transaction, then gives the
emptied partition's space back: VACUUM truncates its heap and REINDEX … CONCURRENTLY rebuilds
its indexes empty, both waiting out snapshots that may still see the moved rows.

Rollups (hour and day) are plain tables, not partitioned: a device-day is 24 + 1 small rows, so
there is no size a partition scheme would pay for. Their retention deletes by time range in
bounded batches (ROLLUP_BATCH rows a transaction) through their time indexes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from energy_engine import db, sql
from energy_engine.db import Connection, Pool
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

queries = sql.load("energy_engine.lifecycle")

# One maintenance round at a time across processes and hosts ("enmaint" in ASCII); distinct
# from the migration and rollup refresher keys.
MAINTENANCE_LOCK_KEY = 0x656E_6D61_696E_74

# Rollup rows deleted a transaction: a batch takes a few milliseconds and short row locks.
ROLLUP_BATCH = 5_000

# Each rollup table, the column its rows are timed by, and how long a row covers.
_ROLLUP_TABLES = (
    ("meter_rollups", "hour", timedelta(hours=1)),
    ("vehicle_rollups", "hour", timedelta(hours=1)),
    ("meter_day_rollups", "day", timedelta(days=1)),
    ("vehicle_day_rollups", "day", timedelta(days=1)),
)


@dataclass(frozen=True, slots=True)
class ExpiredPartition:
    """A day partition of history wholly older than the retention period."""

    name: str
    parent: str
    range_from: datetime
    range_to: datetime
    rows_estimate: int | None  # the planner's estimate; None when never analysed
    bytes: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What a round would remove now: partitions, and rollup rows per table."""

    history_cutoff: datetime | None
    rollup_cutoff: datetime | None
    partitions: list[ExpiredPartition]
    rollups: dict[str, int]

    @property
    def bytes(self) -> int:
        """Bytes the partition drops free (rollup deletes free space only to vacuum)."""
        return sum(p.bytes for p in self.partitions)


@dataclass(frozen=True, slots=True)
class Round:
    """What one maintenance round did."""

    finished_at: datetime
    history_cutoff: datetime | None
    rollup_cutoff: datetime | None
    partitions_created: int
    dropped: list[ExpiredPartition] = field(default_factory=list)
    postponed: list[str] = field(default_factory=list)  # drops that met lock_timeout
    rollups_deleted: int = 0
    packed: list[str] = field(default_factory=list)  # raw partitions packed
    readings_packed: int = 0

    @property
    def bytes_freed(self) -> int:
        """The size of the partitions dropped."""
        return sum(p.bytes for p in self.dropped)


@dataclass(frozen=True, slots=True)
class LastRun:
    """The last round recorded in `maintenance_runs` (what the metrics show)."""

    finished_at: datetime
    history_cutoff: datetime | None
    rollup_cutoff: datetime | None
    partitions_created: int
    partitions_dropped: int
    drops_postponed: int
    rollups_deleted: int
    bytes_freed: int
    partitions_packed: int
    readings_packed: int


def cutoffs(settings: Settings, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The history and rollup cutoffs at `now`; None where that data is kept."""
    history, rollups = settings.history_retention, settings.rollup_retention
    return (
        None if history is None else now - history,
        None if rollups is None else now - rollups,
    )


async def expired_partitions(conn: Connection, cutoff: datetime) -> list[ExpiredPartition]:
    """The history partitions wholly before `cutoff`, oldest first."""
    rows = await conn.fetch(queries.expired_partitions, cutoff)
    return [
        ExpiredPartition(
            name=row["name"],
            parent=row["parent"],
            range_from=row["range_from"],
            range_to=row["range_to"],
            rows_estimate=row["rows_estimate"] if row["rows_estimate"] >= 0 else None,
            bytes=row["bytes"],
        )
        for row in rows
    ]


async def plan(conn: Connection, settings: Settings, now: datetime) -> Plan:
    """What a round would remove at `now`, changing nothing (`retention --dry-run`)."""
    history_cutoff, rollup_cutoff = cutoffs(settings, now)
    partitions = [] if history_cutoff is None else await expired_partitions(conn, history_cutoff)
    rollups: dict[str, int] = {}
    if rollup_cutoff is not None:
        row = await conn.fetchrow(queries.expired_rollups, rollup_cutoff)
        assert row is not None  # one row of counts
        rollups = {
            "meter_rollups": row["meter_hours"],
            "vehicle_rollups": row["vehicle_hours"],
            "meter_day_rollups": row["meter_days"],
            "vehicle_day_rollups": row["vehicle_days"],
        }
    return Plan(history_cutoff, rollup_cutoff, partitions, rollups)


async def _drop(conn: Connection, name: str, lock_timeout: timedelta) -> bool:
    """Drop one partition, waiting at most `lock_timeout` for its locks; False if it waited in
    vain (the next round tries again)."""
    try:
        async with conn.transaction():
            await conn.execute(
                queries.set_lock_timeout, f"{int(lock_timeout.total_seconds() * 1000)}ms"
            )
            await conn.execute(queries.drop_partition, name)
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def _delete_rollups(conn: Connection, cutoff: datetime) -> int:
    """Delete the rollups wholly before `cutoff`, ROLLUP_BATCH rows a transaction."""
    deleted = 0
    for table, column, span in _ROLLUP_TABLES:
        while True:
            gone: int = await conn.fetchval(
                queries.delete_expired_rollups, table, column, span, cutoff, ROLLUP_BATCH
            )
            deleted += gone
            if gone < ROLLUP_BATCH:
                break
    return deleted


async def _pack(conn: Connection, name: str, lock_timeout: timedelta) -> int | None:
    """Pack one raw day partition and give its space back; None if its lock was not had
    within `lock_timeout` (the next round tries again)."""
    try:
        async with conn.transaction():
            await conn.execute(db.UNBOUNDED_TRANSACTION)
            await conn.execute(
                queries.set_lock_timeout, f"{int(lock_timeout.total_seconds() * 1000)}ms"
            )
            moved: int = await conn.fetchval(queries.pack_partition, name, timeout=None)
    except asyncpg.LockNotAvailableError:
        return None
    # Outside a transaction: VACUUM and REINDEX … CONCURRENTLY cannot run in one. The name
    # comes from the catalog (raw_partitions_before), quoted there by regclass::text.
    async with db.unbounded_session(conn):
        await conn.execute(f"VACUUM {name}", timeout=None)
        await conn.execute(f"REINDEX TABLE CONCURRENTLY {name}", timeout=None)
    return moved


async def pack_history(conn: Connection, settings: Settings, now: datetime) -> Round:
    """Pack every raw day partition wholly before now - pack_after (a round's packing step)."""
    packed: list[str] = []
    readings = 0
    if settings.pack_after is not None:
        rows = await conn.fetch(queries.packable_partitions, now - settings.pack_after)
        for row in rows:
            moved = await _pack(conn, row["name"], settings.retention_lock_timeout)
            if moved is None:
                log.warning("packing postponed %s: its table stayed locked", row["name"])
                continue
            packed.append(row["name"])
            readings += moved
            log.info("packed %s (%d readings)", row["name"], moved)
        # A packed day's emptied raw partition, once ingest accepts no reading for that day:
        # dropped, so that raw partitions stay about max_reading_age days (migration 0005).
        beyond = now - settings.max_reading_age - timedelta(days=1)
        for row in await conn.fetch(queries.retired_partitions, beyond):
            if await _drop(conn, row["name"], settings.retention_lock_timeout):
                log.info("dropped %s: packed, and past the oldest reading accepted", row["name"])
    return Round(datetime.now(UTC), None, None, 0, packed=packed, readings_packed=readings)


async def _work(conn: Connection, settings: Settings, now: datetime) -> Round:
    """One round's work, under the maintenance lock."""
    created = await db.ensure_partitions_ahead(conn, settings)
    history_cutoff, rollup_cutoff = cutoffs(settings, now)
    dropped: list[ExpiredPartition] = []
    postponed: list[str] = []
    if history_cutoff is not None:
        for partition in await expired_partitions(conn, history_cutoff):
            if await _drop(conn, partition.name, settings.retention_lock_timeout):
                dropped.append(partition)
                log.info("retention dropped %s (%d bytes)", partition.name, partition.bytes)
            else:
                postponed.append(partition.name)
                log.warning("retention postponed %s: its table stayed locked", partition.name)
    # After the drops: a day about to go is not packed first.
    packing = await pack_history(conn, settings, now)
    deleted = 0 if rollup_cutoff is None else await _delete_rollups(conn, rollup_cutoff)
    finished = datetime.now(UTC)
    done = Round(
        finished,
        history_cutoff,
        rollup_cutoff,
        created,
        dropped,
        postponed,
        deleted,
        packing.packed,
        packing.readings_packed,
    )
    await conn.execute(
        queries.record_run,
        done.finished_at,
        history_cutoff,
        rollup_cutoff,
        created,
        len(dropped),
        len(postponed),
        deleted,
        done.bytes_freed,
        len(done.packed),
        done.readings_packed,
    )
    return done


async def maintain(pool: Pool, settings: Settings, now: datetime) -> Round | None:
    """One maintenance round at `now`; None, having done nothing, when another process
    (worker or host) is running one."""
    async with pool.acquire() as conn:
        if not await conn.fetchval(queries.try_lock, MAINTENANCE_LOCK_KEY):
            return None
        try:
            return await _work(conn, settings, now)
        finally:
            try:
                await conn.execute(queries.unlock, MAINTENANCE_LOCK_KEY)
            except BaseException:
                # The pools do not reset sessions (db._keep_session): a connection that may
                # still hold the lock must not go back to the pool, where it would keep every
                # other process from maintenance until it was closed.
                conn.terminate()
                raise


async def last_run(conn: Connection) -> LastRun | None:
    """The last recorded round, or None before the first (for the metrics' gauge)."""
    row = await conn.fetchrow(queries.last_run)
    return None if row is None else LastRun(**dict(row))
