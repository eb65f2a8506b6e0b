"""Writes readings: history insert, hot-row merge and rollup marks in one statement per stream.

The statements are the domain's named SQL (`sql.load`); the hot-row merge and the dirty-hour
mark they call are SQL functions shared with the importer (migrations/0001_baseline.sql).
A batch of both streams is one transaction, so that it is stored whole or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from energy_engine import sql
from energy_engine.db import Connection, days_spanned, ensure_partitions
from energy_engine.ingest.models import MeterReading, VehicleReading

queries = sql.load("energy_engine.ingest")


async def insert_meter_readings(conn: Connection, readings: Sequence[MeterReading]) -> list[int]:
    """Store meter readings; returns the 1-based positions of those that were new."""
    accepted: list[int] = await conn.fetchval(
        queries.insert_meter_readings,
        [r.meter_id for r in readings],
        [r.timestamp for r in readings],
        [r.kwh_consumed_ac for r in readings],
        [r.voltage for r in readings],
    )
    return accepted


async def insert_vehicle_readings(
    conn: Connection, readings: Sequence[VehicleReading]
) -> list[int]:
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
    conn: Connection, meters: Sequence[MeterReading], vehicles: Sequence[VehicleReading]
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
    conn: Connection, meters: Sequence[MeterReading], vehicles: Sequence[VehicleReading]
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
