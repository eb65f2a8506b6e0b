"""The engine's window functions called one at a time, for tests that check them alone.

The routes call `stream_window_energy` inside larger statements (analytics/queries.sql);
these helpers call it directly for each side, with the same arguments, so the tests can
compare each side of a window with raw history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from energy_engine.analytics.store import VehicleWindow
from energy_engine.db import Connection
from energy_engine.settings import EnergySemantics, Settings

VEHICLE_WINDOW = """
SELECT readings, kwh, skipped, sensor_sum / nullif(readings, 0) AS avg_battery_temp
FROM stream_window_energy('vehicle', $1, $2, $3, $4, $5, $6, $2, $3)
"""

# The meters assigned to the vehicle during the window, each for its part of the window.
METER_WINDOWS = """
WITH segments AS (
    SELECT meter_id,
           greatest(valid_from, $2) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $3) AS seg_to
    FROM assignments
    WHERE vehicle_id = $1 AND valid_from < $3 AND (valid_to IS NULL OR valid_to > $2)
)
SELECT s.meter_id, s.seg_from, s.seg_to, e.readings, e.kwh, e.skipped
FROM segments AS s
CROSS JOIN LATERAL stream_window_energy(
    'meter', s.meter_id, s.seg_from, s.seg_to, $4, $5, $6, $2, $3) AS e
WHERE s.seg_from < s.seg_to
ORDER BY s.seg_from
"""


@dataclass(frozen=True, slots=True)
class MeterWindow:
    """AC side of one assignment's part of a window."""

    meter_id: str
    start: datetime
    end: datetime
    readings: int
    kwh: float
    skipped: int


def _args(settings: Settings) -> tuple[object, ...]:
    return (
        settings.baseline_lookback,
        settings.max_power_kw,
        settings.energy_semantics is EnergySemantics.INTERVAL,
    )


async def vehicle_window(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime, settings: Settings
) -> VehicleWindow:
    """DC energy, reading count and average battery temperature of a vehicle in [start, end)."""
    row = await conn.fetchrow(VEHICLE_WINDOW, vehicle_id, start, end, *_args(settings))
    assert row is not None  # an aggregate always yields a row
    return VehicleWindow(row["readings"], row["kwh"], row["skipped"], row["avg_battery_temp"])


async def meter_windows(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime, settings: Settings
) -> list[MeterWindow]:
    """AC energy of each meter assigned to the vehicle, over its assigned part of [start, end)."""
    rows = await conn.fetch(METER_WINDOWS, vehicle_id, start, end, *_args(settings))
    return [
        MeterWindow(
            r["meter_id"], r["seg_from"], r["seg_to"], r["readings"], r["kwh"], r["skipped"]
        )
        for r in rows
    ]
