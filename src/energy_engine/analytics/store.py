"""Window energy of one device and one time range, from hourly rollups and raw edges.

The statements are named ones of this package's SQL file. The SQL functions
`vehicle_window_energy` and `meter_window_energy` (migrations/0001_baseline.sql) piece a
window together from the baseline reading, raw rows at the edges and in hours not rolled up
(yet), and the rollups of whole hours in between. Every read is an index range scan of one
device's rows or rollups, so the cost depends on the window and never on how much history is
stored. Increments follow `energy_engine.energy`; tests/reference_sql.py holds the raw-history
queries the answers are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from energy_engine import sql
from energy_engine.db import Connection
from energy_engine.settings import EnergySemantics, Settings

queries = sql.load("energy_engine.analytics")


class VehicleWindow(NamedTuple):
    """DC side of a window. (A named tuple: the fleet ranking builds one per vehicle, 10,000 a
    request, and named tuples build about three times faster than frozen dataclasses.)"""

    readings: int
    kwh: float
    skipped: int
    avg_battery_temp: float | None


def _args(settings: Settings) -> tuple[object, ...]:
    return (
        settings.baseline_lookback,
        settings.max_power_kw,
        settings.energy_semantics is EnergySemantics.INTERVAL,
    )


class Performance(NamedTuple):
    """Both sides of a vehicle's window, AC summed over the meters it was assigned to."""

    dc: VehicleWindow
    meter_ids: list[str]  # in window order, a meter repeated if assigned twice
    meter_readings: int
    meter_kwh: float
    meter_skipped: int


async def performance(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime, settings: Settings
) -> Performance | None:
    """The vehicle's window, or None when the vehicle never reported nor was assigned."""
    row = await conn.fetchrow(queries.performance, vehicle_id, start, end, *_args(settings))
    assert row is not None
    if not row["known"]:
        return None
    return Performance(
        dc=VehicleWindow(row["readings"], row["kwh"], row["skipped"], row["avg_battery_temp"]),
        meter_ids=list(row["meter_ids"]),
        meter_readings=row["meter_readings"],
        meter_kwh=row["meter_kwh"],
        meter_skipped=row["meter_skipped"],
    )


@dataclass(frozen=True, slots=True)
class StepWindow:
    """One step of a series: its window and both sides of it, like a report."""

    start: datetime
    end: datetime
    found: Performance  # meter_ids left empty: a point names no meters
    soc_min: float | None
    soc_max: float | None


async def series(
    conn: Connection,
    vehicle_id: str,
    start: datetime,
    end: datetime,
    step: str,
    settings: Settings,
) -> list[StepWindow]:
    """The vehicle's window in steps of one `step` ('hour' or 'day')."""
    length = timedelta(hours=1) if step == "hour" else timedelta(days=1)
    rows = await conn.fetch(queries.series, vehicle_id, start, end, *_args(settings), length, step)
    return [
        StepWindow(
            r["step_from"],
            r["step_to"],
            Performance(
                dc=VehicleWindow(r["readings"], r["kwh"], r["skipped"], r["avg_battery_temp"]),
                meter_ids=[],
                meter_readings=r["meter_readings"],
                meter_kwh=r["meter_kwh"],
                meter_skipped=r["meter_skipped"],
            ),
            r["soc_min"],
            r["soc_max"],
        )
        for r in rows
    ]
