"""Writes imported chunks into history and the hot store, with the ingest path's semantics.

Each chunk is one transaction, both streams in it (meters first, the order the ingest writers
use). A stream's rows arrive sorted by (device, time), each (device, time) once (the first row
of the file wins, as the first write does), and take one of two paths:

* New readings only. When every row of a device is newer than its hot row, none can be in
  the history yet: the hot row holds the newest reading stored, and dropping old partitions
  only removes older ones. That holds for any append-only feed and every first import. The
  rows are then COPied straight into the history table, skipping what the general path costs
  per row (a staging table, the conflict check's second index probe, returning and ranking
  every row). The primary key stays the arbiter: should another writer have stored one of
  the rows meanwhile, the COPY fails on it, is rolled back to its savepoint, and the chunk
  takes the general path.
* The general path: the rows are COPied into a staging table and inserted into history in
  (device, time) order, skipping those stored already, as the ingest statement does; the
  rows it took are kept in `import_*_new`.

Either way each device's two newest new readings go to the hot-row merge, and the hours of
new readings older than the `sealed` watermark are marked dirty: the SQL functions the ingest
statements call (migrations/0001_baseline.sql). tests/integration/test_import.py checks
that an import stores exactly what the API stores for the same readings, split into chunks
differently, rollup marks included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from energy_engine import sql
from energy_engine.db import Connection, ensure_partitions
from energy_engine.importer.chunks import Batch, Chunk
from energy_engine.importer.layout import (
    METER_COLUMNS,
    METER_HOUR_COLUMNS,
    VEHICLE_COLUMNS,
    VEHICLE_HOUR_COLUMNS,
    Layout,
)

queries = sql.load("energy_engine.importer")


@dataclass(frozen=True, slots=True)
class _Stream:
    """One stream's tables (COPY targets) and statements."""

    history: str
    columns: tuple[str, ...]
    staging: str
    new: str
    hours: str
    hour_columns: tuple[str, ...]
    are_new: str
    forget_new: str
    insert: str
    merge_new: str
    mark_hours: str
    mark_new_hours: str


METERS = _Stream(
    history="meter_readings",
    columns=METER_COLUMNS,
    staging="import_meter_readings",
    new="import_meter_new",
    hours="import_meter_hours",
    hour_columns=METER_HOUR_COLUMNS,
    are_new=queries.meter_readings_are_new,
    forget_new=queries.forget_new_meter_readings,
    insert=queries.insert_meter_readings,
    merge_new=queries.merge_new_meter_readings,
    mark_hours=queries.mark_meter_hours,
    mark_new_hours=queries.mark_new_meter_hours,
)
VEHICLES = _Stream(
    history="vehicle_readings",
    columns=VEHICLE_COLUMNS,
    staging="import_vehicle_readings",
    new="import_vehicle_new",
    hours="import_vehicle_hours",
    hour_columns=VEHICLE_HOUR_COLUMNS,
    are_new=queries.vehicle_readings_are_new,
    forget_new=queries.forget_new_vehicle_readings,
    insert=queries.insert_vehicle_readings,
    merge_new=queries.merge_new_vehicle_readings,
    mark_hours=queries.mark_vehicle_hours,
    mark_new_hours=queries.mark_new_vehicle_hours,
)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """Readings of a chunk that were new, per stream."""

    meters_inserted: int
    vehicles_inserted: int
    appended: int  # streams whose rows were all new and went straight into history

    @property
    def inserted(self) -> int:
        """New readings, both streams."""
        return self.meters_inserted + self.vehicles_inserted


async def history_layouts(conn: Connection) -> tuple[Layout, Layout]:
    """How to pack rows for this database's history tables (their float types may differ)."""
    layouts = []
    for stream in (METERS, VEHICLES):
        rows = await conn.fetch(queries.history_column_types, stream.history)
        types: dict[str, str] = {row["attname"]: row["format_type"] for row in rows}
        layouts.append(Layout.of(stream.columns, types))
    return layouts[0], layouts[1]


async def rollups_exist(conn: Connection) -> bool:
    """Whether this database keeps hourly rollups that imports must mark dirty."""
    found: bool = await conn.fetchval(queries.rollups_exist)
    return found


async def create_staging_tables(conn: Connection) -> None:
    """This session's staging tables (TEMP: private to the connection, gone with it)."""
    await conn.execute(queries.create_staging_tables)


class Partitions:
    """The days known to have history partitions, so that each is ensured once a run."""

    def __init__(self) -> None:
        self.ensured: tuple[date, date] | None = None

    async def ensure(self, conn: Connection, first_day: date, last_day: date) -> None:
        """Create missing partitions for [first_day, last_day], outside any chunk transaction
        (the function holds an advisory lock until its transaction ends)."""
        known = self.ensured
        if known is not None and known[0] <= first_day and last_day <= known[1]:
            return
        if known is not None:  # keep one contiguous known range
            first_day, last_day = min(first_day, known[0]), max(last_day, known[1])
        await ensure_partitions(conn, first_day, last_day)
        self.ensured = (first_day, last_day)


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload  # the whole payload in one write: the transport sends it as fast as it can


async def _copy(conn: Connection, table: str, columns: tuple[str, ...], payload: bytes) -> None:
    await conn.copy_to_table(table, source=_once(payload), columns=list(columns), format="binary")


async def _write(
    conn: Connection, stream: _Stream, batch: Batch, sealed: datetime | None
) -> tuple[int, bool]:
    await _copy(conn, stream.new, stream.columns, batch.ends)
    if await conn.fetchval(stream.are_new):
        try:
            async with conn.transaction():  # a savepoint, to fall back from
                await _copy(conn, stream.history, stream.columns, batch.copy)
                await conn.execute(stream.merge_new)
                if sealed is not None and batch.oldest is not None and batch.oldest < sealed:
                    await _copy(conn, stream.hours, stream.hour_columns, batch.hours)
                    await conn.execute(stream.mark_hours, sealed)
            return batch.kept, True
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            pass  # another writer stored some of these meanwhile: take the general path
    await conn.execute(stream.forget_new)
    await _copy(conn, stream.staging, stream.columns, batch.copy)
    status = await conn.execute(stream.insert)  # "INSERT 0 <rows>"
    await conn.execute(stream.merge_new)
    if sealed is not None:
        await conn.execute(stream.mark_new_hours, sealed)
    return int(status.rsplit(" ", 1)[1]), False


async def write_chunk(conn: Connection, chunk: Chunk, *, rollups: bool) -> ChunkResult:
    """Store a chunk's readings of both streams in one transaction; the new ones, per stream.

    The history partitions of the chunk's days must exist (`Partitions.ensure`). With
    `rollups` (`rollups_exist`), hours already sealed that get new readings are marked dirty.
    """
    meters = vehicles = (0, False)
    if not chunk.rows:
        return ChunkResult(0, 0, 0)
    async with conn.transaction():
        sealed = await conn.fetchval(queries.lock_sealed) if rollups else None
        if chunk.meters.kept:
            meters = await _write(conn, METERS, chunk.meters, sealed)
        if chunk.vehicles.kept:
            vehicles = await _write(conn, VEHICLES, chunk.vehicles, sealed)
    return ChunkResult(meters[0], vehicles[0], meters[1] + vehicles[1])
