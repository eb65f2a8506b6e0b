"""Writes readings: history insert, hot-row merge and rollup marks in one statement per stream.

The statements are the domain's named SQL (`sql.load`); the hot-row merge and the dirty-hour
mark they call are SQL functions shared with the importer (migrations/0001_baseline.sql).
A batch of both streams is one transaction, so that it is stored whole or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import asyncpg

from energy_engine import sql
from energy_engine.db import Connection, days_spanned, ensure_partitions

queries = sql.load("energy_engine.ingest")


class MeterRow(Protocol):
    """What storing a meter reading reads: a validated `MeterReading`, or a reading of the
    queue already validated by the API (`queue.worker`)."""

    @property
    def meter_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def kwh_consumed_ac(self) -> float: ...
    @property
    def voltage(self) -> float: ...


class VehicleRow(Protocol):
    """What storing a vehicle reading reads (see MeterRow)."""

    @property
    def vehicle_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def soc(self) -> float: ...
    @property
    def kwh_delivered_dc(self) -> float: ...
    @property
    def battery_temp(self) -> float: ...


async def insert_meter_readings(conn: Connection, readings: Sequence[MeterRow]) -> list[int]:
    """Store meter readings; returns the 1-based positions of those that were new."""
    accepted: list[int] = await conn.fetchval(
        queries.insert_meter_readings,
        [r.meter_id for r in readings],
        [r.timestamp for r in readings],
        [r.kwh_consumed_ac for r in readings],
        [r.voltage for r in readings],
    )
    return accepted


async def insert_vehicle_readings(conn: Connection, readings: Sequence[VehicleRow]) -> list[int]:
    """Store vehicle readings; returns the 1-based positions of those that were new."""
    accepted: list[int] = await conn.fetchval(
        queries.insert_vehicle_readings,
        [r.vehicle_id for r in readings],
        [r.timestamp for r in readings],
        [r.soc for r in readings],
        [r.kwh_delivered_dc for r in readings],
        [r.battery_temp for r in readings],
    )
    return accepted


async def _insert_all(
    conn: Connection, meters: Sequence[MeterRow], vehicles: Sequence[VehicleRow]
) -> tuple[list[int], list[int]]:
    if meters and vehicles:
        async with conn.transaction():  # all or nothing across the two streams
            return (
                await insert_meter_readings(conn, meters),
                await insert_vehicle_readings(conn, vehicles),
            )
    if meters:
        return await insert_meter_readings(conn, meters), []
    return [], await insert_vehicle_readings(conn, vehicles)


def _is_missing_partition(exc: asyncpg.CheckViolationError) -> bool:
    return "no partition of relation" in str(exc)


async def write_readings(
    conn: Connection, meters: Sequence[MeterRow], vehicles: Sequence[VehicleRow]
) -> tuple[list[int], list[int]]:
    """Store readings of both streams atomically; the new ones' positions, per stream."""
    try:
        return await _insert_all(conn, meters, vehicles)
    except asyncpg.CheckViolationError as exc:
        # A day with no partition yet (the maintenance task creates them ahead, so this is
        # rare): create the days this batch spans and retry once.
        if not _is_missing_partition(exc):
            raise
        stamps = [r.timestamp for r in meters] + [r.timestamp for r in vehicles]
        await ensure_partitions(conn, *days_spanned(stamps))
        return await _insert_all(conn, meters, vehicles)
