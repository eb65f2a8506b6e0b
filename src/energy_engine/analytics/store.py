"""Window energy of one device and one time range, from hourly rollups and raw edges.

The SQL functions `vehicle_window_energy` and `meter_window_energy` (migrations/0003) piece a
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

from energy_engine.db import Connection
from energy_engine.settings import EnergySemantics, Settings

# $1 vehicle, $2 from, $3 to, $4 baseline lookback, $5 max power kW, $6 interval semantics
VEHICLE_WINDOW = """
SELECT readings, kwh, skipped, battery_temp_sum / nullif(readings, 0) AS avg_battery_temp
FROM vehicle_window_energy($1, $2, $3, $4, $5, $6)
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
CROSS JOIN LATERAL meter_window_energy(s.meter_id, s.seg_from, s.seg_to, $4, $5, $6, $2, $3) AS e
WHERE s.seg_from < s.seg_to
ORDER BY s.seg_from
"""


class VehicleWindow(NamedTuple):
    """DC side of a window. (Named tuples: the fleet ranking makes 10,000 per request, and
    frozen dataclasses took three times as long to build.)"""

    readings: int
    kwh: float
    skipped: int
    avg_battery_temp: float | None


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


# Everything the performance report needs, in one round trip: whether the vehicle is known at
# all (for the 404), its DC side, and each assigned meter's AC side in window order.
PERFORMANCE = """
WITH segments AS (
    SELECT meter_id,
           greatest(valid_from, $2) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $3) AS seg_to,
           valid_from <= $2 AND coalesce(valid_to, 'infinity') >= $3 AS whole
    FROM assignments
    WHERE vehicle_id = $1 AND valid_from < $3 AND (valid_to IS NULL OR valid_to > $2)
),
-- A meter assigned for the whole window is read with the window's own bounds (parameters,
-- which prune partitions when the statement starts); a meter assigned for part of it by
-- meter_segment_energy, planned on the part's bounds (migrations/0005).
meters AS (
    SELECT s.meter_id, s.seg_from, e.readings, e.kwh, e.skipped
    FROM segments AS s
    CROSS JOIN LATERAL meter_window_energy(s.meter_id, $2, $3, $4, $5, $6, $2, $3) AS e
    WHERE s.whole
    UNION ALL
    SELECT s.meter_id, s.seg_from, e.readings, e.kwh, e.skipped
    FROM segments AS s
    CROSS JOIN LATERAL meter_segment_energy(s.meter_id, s.seg_from, s.seg_to, $4, $5, $6) AS e
    WHERE NOT s.whole AND s.seg_from < s.seg_to
)
SELECT EXISTS (SELECT FROM vehicle_state WHERE vehicle_id = $1)
           OR EXISTS (SELECT FROM assignments WHERE vehicle_id = $1) AS known,
       dc.readings, dc.kwh, dc.skipped,
       dc.battery_temp_sum / nullif(dc.readings, 0) AS avg_battery_temp,
       m.meter_ids, m.meter_readings, m.meter_kwh, m.meter_skipped
FROM vehicle_window_energy($1, $2, $3, $4, $5, $6) AS dc,
     (SELECT coalesce(array_agg(meter_id ORDER BY seg_from), '{}') AS meter_ids,
             coalesce(sum(readings), 0) AS meter_readings,
             coalesce(sum(kwh), 0) AS meter_kwh,
             coalesce(sum(skipped), 0) AS meter_skipped
      FROM meters) AS m
"""


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
    row = await conn.fetchrow(PERFORMANCE, vehicle_id, start, end, *_args(settings))
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


# One row per step of [$2, $3): steps start at UTC hour or day boundaries ($7 one hour or
# one day, $8 'hour' or 'day'), the first and last cut to the window. Each step is its own
# window, answered by the same functions as the report (so a step's numbers are what the
# report says for that step): DC side, SoC range, and AC over the meters assigned during it.
SERIES = """
WITH steps AS (
    SELECT greatest(b, $2) AS step_from, least(b + $7::interval, $3) AS step_to
    FROM generate_series(
        date_trunc($8::text, $2::timestamptz, 'UTC'),
        $3::timestamptz - interval '1 microsecond',
        $7::interval
    ) AS b
)
SELECT s.step_from, s.step_to,
       dc.readings, dc.kwh, dc.skipped,
       dc.battery_temp_sum / nullif(dc.readings, 0) AS avg_battery_temp,
       dc.soc_min, dc.soc_max,
       ac.readings AS meter_readings, ac.kwh AS meter_kwh, ac.skipped AS meter_skipped
FROM steps AS s
CROSS JOIN LATERAL vehicle_window_energy($1, s.step_from, s.step_to, $4, $5, $6) AS dc
CROSS JOIN LATERAL (
    SELECT coalesce(sum(e.readings), 0)::bigint AS readings,
           coalesce(sum(e.kwh), 0) AS kwh,
           coalesce(sum(e.skipped), 0)::bigint AS skipped
    FROM assignments AS a
    CROSS JOIN LATERAL meter_window_energy(
        a.meter_id, greatest(a.valid_from, s.step_from),
        least(coalesce(a.valid_to, 'infinity'), s.step_to), $4, $5, $6, $2, $3) AS e
    WHERE a.vehicle_id = $1 AND a.valid_from < s.step_to
      AND (a.valid_to IS NULL OR a.valid_to > s.step_from)
) AS ac
ORDER BY s.step_from
"""


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
    rows = await conn.fetch(SERIES, vehicle_id, start, end, *_args(settings), length, step)
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
