"""Every vehicle's window at once: the fleet ranking's numbers, in one statement.

The per-vehicle path (`store.performance`) reads one device's rows and rollups through its
primary key. Done 10,000 times that would be 10,000 × eight index probes; here each source is
read once for the whole fleet, by time range:

* rollups of the window's whole hours (and of the hour before it, for the baselines), by the
  rollups' hour index, skipping dirty device-hours;
* raw rows where no rollup applies: the window's partial first hour, the hours not rolled up
  yet at its end, and every dirty device-hour;
* the baseline reading of a device that has no reading in the hour before the window: looked
  up one by one, so only quiet devices pay for it.

Pieces are joined in time order with the rules of `energy_engine.energy`, exactly as in the
SQL window functions of migrations 0003/0004, so every vehicle's numbers equal what
`GET /v1/analytics/performance/{id}` answers for the same window (tests/integration/
test_fleet_analytics.py checks that on random streams). Meters count for a vehicle over the
part of the window they were assigned to it; the few assignments that start or end inside the
window go through `meter_window_energy` one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from energy_engine.analytics.store import Performance, VehicleWindow
from energy_engine.db import Connection
from energy_engine.settings import EnergySemantics, Settings

HOUR = timedelta(hours=1)

# The pieces of one stream for every device: {table}, {device}, {kwh} and {extra} (the extra
# column(s) summed per device) name the stream; {only} restricts the devices.
#   $1 window from, $2 window to,
#   $3/$4 rollup hours [from, to) before the window (the baseline hour; empty when not rolled),
#   $5/$6 rollup hours [from, to) in the window,
#   $7/$8 raw rows [from, to) at the start (the partial hour, and the baseline hour if no rollup)
#   $6 .. $2 raw rows at the end (not rolled up yet, or a partial hour).
_PIECES = """
{stream}_pieces AS MATERIALIZED (
    SELECT u.{device} AS device, u.first_at, u.last_at, u.first_kwh, u.last_kwh,
           u.added_kwh AS added, u.skipped, u.readings, {rollup_extra}
    FROM {stream}_rollups AS u
    WHERE ((u.hour >= $3 AND u.hour < $4) OR (u.hour >= $5 AND u.hour < $6))
      AND NOT EXISTS (SELECT FROM rollup_dirty AS d
                      WHERE d.stream = '{stream}' AND d.device_id = u.{device}
                        AND d.hour = u.hour)
      {only_u}
    UNION ALL
    SELECT r.{device}, r.read_at, r.read_at, r.{kwh}, r.{kwh}, 0, 0, 1, {raw_extra}
    FROM {stream}_readings AS r
    WHERE r.read_at >= $7 AND r.read_at < $8 {only_r}
    UNION ALL
    SELECT r.{device}, r.read_at, r.read_at, r.{kwh}, r.{kwh}, 0, 0, 1, {raw_extra}
    FROM {stream}_readings AS r
    WHERE r.read_at >= $6 AND r.read_at < $2 {only_r}
    UNION ALL
    SELECT r.{device}, r.read_at, r.read_at, r.{kwh}, r.{kwh}, 0, 0, 1, {raw_extra}
    FROM rollup_dirty AS d
    JOIN {stream}_readings AS r
      ON r.{device} = d.device_id AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.stream = '{stream}'
      AND ((d.hour >= $3 AND d.hour < $4) OR (d.hour >= $5 AND d.hour < $6))
      AND r.read_at >= $3 AND r.read_at < $2 {only_r}
),
-- Devices with readings in the window but none in the hour before: their baseline (the last
-- reading within the lookback) is looked up one device at a time.
{stream}_baselines AS (
    SELECT p.device, b.read_at AS first_at, b.read_at AS last_at, b.{kwh} AS first_kwh,
           b.{kwh} AS last_kwh, 0::float8 AS added, 0 AS skipped, 0 AS readings, {null_extra}
    FROM (SELECT device FROM {stream}_pieces GROUP BY device HAVING min(first_at) >= $1) AS p
    CROSS JOIN LATERAL (
        SELECT read_at, {kwh}
        FROM {stream}_readings
        WHERE {device} = p.device AND read_at < $3 AND read_at >= $1 - $9::interval
        ORDER BY read_at DESC
        LIMIT 1
    ) AS b
),
{stream}_lags AS (
    SELECT device, first_at, first_kwh, added, skipped, readings, {extra_names},
           lag(last_at) OVER w AS prev_at, lag(last_kwh) OVER w AS prev_kwh
    FROM (SELECT * FROM {stream}_pieces UNION ALL SELECT * FROM {stream}_baselines) AS p
    WINDOW w AS (PARTITION BY device ORDER BY first_at)
),
{stream}_steps AS (
    SELECT device, added, skipped, readings, {extra_names},
           CASE WHEN $11 THEN first_kwh
                WHEN first_kwh >= prev_kwh THEN first_kwh - prev_kwh
                WHEN prev_kwh IS NOT NULL THEN first_kwh  -- a counter reset
           END AS joined,
           EXTRACT(epoch FROM first_at - prev_at)::float8 AS seconds
    FROM (
        -- A predecessor before the window is a baseline only within the lookback.
        SELECT device, first_at, first_kwh, added, skipped, readings, {extra_names},
               CASE WHEN prev_at >= $1 - $9::interval THEN prev_at END AS prev_at,
               CASE WHEN prev_at >= $1 - $9::interval THEN prev_kwh END AS prev_kwh
        FROM {stream}_lags
        WHERE first_at >= $1
    ) AS counted
),
{stream}_totals AS (
    SELECT device,
           sum(readings)::bigint AS readings,
           coalesce(sum(added), 0)
               + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                                 OR joined * 3600 <= $10 * seconds), 0) AS kwh,
           (sum(skipped) + count(*) FILTER (WHERE joined * 3600 > $10 * seconds))::bigint
               AS skipped
           {extra_sums}
    FROM {stream}_steps
    GROUP BY device
)"""

_VEHICLE_PIECES = _PIECES.format(
    stream="vehicle",
    device="vehicle_id",
    kwh="kwh_delivered_dc",
    rollup_extra="u.battery_temp_sum AS temp_sum",
    raw_extra="r.battery_temp::float8",
    null_extra="0::float8",
    extra_names="temp_sum",
    extra_sums=", sum(temp_sum) AS temp_sum",
    only_u="",
    only_r="",
)

_METER_PIECES = _PIECES.format(
    stream="meter",
    device="meter_id",
    kwh="kwh_consumed_ac",
    rollup_extra="0::float8 AS unused",
    raw_extra="0::float8",
    null_extra="0::float8",
    extra_names="unused",
    extra_sums="",
    only_u="AND u.meter_id IN (SELECT meter_id FROM segments WHERE whole)",
    only_r="AND r.meter_id IN (SELECT meter_id FROM segments WHERE whole)",
)

# Per known vehicle: DC readings, kWh, skipped, battery temperature sum; the meters assigned
# during the window (in window order) and their AC readings, kWh and skipped.
#   $9 baseline lookback, $10 max power kW, $11 interval semantics.
# Composed from this module's constants only; every value is a bind parameter.
FLEET = f"""
WITH segments AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, $1) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $2) AS seg_to,
           valid_from <= $1 AND coalesce(valid_to, 'infinity') >= $2 AS whole
    FROM assignments
    WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1)
),
{_VEHICLE_PIECES},
{_METER_PIECES},
meter_parts AS (
    SELECT s.vehicle_id, s.meter_id, s.seg_from,
           coalesce(t.readings, 0) AS readings, coalesce(t.kwh, 0) AS kwh,
           coalesce(t.skipped, 0) AS skipped
    FROM segments AS s
    LEFT JOIN meter_totals AS t ON t.device = s.meter_id
    WHERE s.whole
    UNION ALL
    SELECT s.vehicle_id, s.meter_id, s.seg_from, e.readings, e.kwh, e.skipped
    FROM segments AS s
    CROSS JOIN LATERAL meter_window_energy(
        s.meter_id, s.seg_from, s.seg_to, $9, $10, $11, $1, $2) AS e
    WHERE NOT s.whole AND s.seg_from < s.seg_to
),
ac AS (
    SELECT vehicle_id, array_agg(meter_id ORDER BY seg_from) AS meter_ids,
           sum(readings)::bigint AS readings, sum(kwh) AS kwh, sum(skipped)::bigint AS skipped
    FROM meter_parts
    GROUP BY vehicle_id
),
known AS (
    SELECT vehicle_id FROM vehicle_state
    UNION
    SELECT vehicle_id FROM assignments
)
SELECT k.vehicle_id,
       coalesce(dc.readings, 0) AS readings, coalesce(dc.kwh, 0) AS kwh,
       coalesce(dc.skipped, 0) AS skipped,
       dc.temp_sum / nullif(dc.readings, 0) AS avg_battery_temp,
       coalesce(ac.meter_ids, '{{}}') AS meter_ids, coalesce(ac.readings, 0) AS meter_readings,
       coalesce(ac.kwh, 0) AS meter_kwh, coalesce(ac.skipped, 0) AS meter_skipped
FROM known AS k
LEFT JOIN vehicle_totals AS dc ON dc.device = k.vehicle_id
LEFT JOIN ac ON ac.vehicle_id = k.vehicle_id
"""  # noqa: S608


@dataclass(frozen=True, slots=True)
class Plan:
    """Which hours of a window come from rollups and which from raw rows."""

    baseline_rollups: tuple[datetime, datetime]
    window_rollups: tuple[datetime, datetime]
    raw_start: tuple[datetime, datetime]

    def args(self) -> tuple[datetime, ...]:
        return (*self.baseline_rollups, *self.window_rollups, *self.raw_start)


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def plan(start: datetime, end: datetime, rolled: datetime | None) -> Plan:
    """Split [start, end) (and the hour before it) into rolled-up hours and raw ranges.

    `rolled` is the watermark: every hour before it has rollups (None: nothing rolled yet).
    """
    before = _floor_hour(start) - HOUR
    rolled_before = rolled is not None and before + HOUR <= rolled
    hour_from = _floor_hour(start) if _floor_hour(start) == start else _floor_hour(start) + HOUR
    hour_to = hour_from if rolled is None else max(hour_from, min(_floor_hour(end), rolled))
    return Plan(
        baseline_rollups=(before, before + HOUR if rolled_before else before),
        window_rollups=(hour_from, hour_to),
        raw_start=(_floor_hour(start) if rolled_before else before, min(hour_from, end)),
    )


ROLLED = "SELECT CASE WHEN isfinite(at) THEN at END FROM rollup_watermarks WHERE name = 'rolled'"


async def fleet_numbers(
    conn: Connection, start: datetime, end: datetime, settings: Settings
) -> dict[str, Performance]:
    """Every known vehicle's window [start, end), by vehicle id."""
    # One snapshot for the watermark and the rollups it vouches for. A custom plan: the
    # statement runs for many milliseconds, and knowing the window prunes the partitions
    # while planning. The sorts of a whole fleet's pieces need more than the default 4 MB.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        await conn.execute("SET LOCAL work_mem = '64MB'")
        rolled = await conn.fetchval(ROLLED)
        rows = await conn.fetch(
            FLEET,
            start,
            end,
            *plan(start, end, rolled).args(),
            settings.baseline_lookback,
            settings.max_power_kw,
            settings.energy_semantics is EnergySemantics.INTERVAL,
        )
    return {
        r["vehicle_id"]: Performance(
            dc=VehicleWindow(r["readings"], r["kwh"], r["skipped"], r["avg_battery_temp"]),
            meter_ids=list(r["meter_ids"]),
            meter_readings=r["meter_readings"],
            meter_kwh=r["meter_kwh"],
            meter_skipped=r["meter_skipped"],
        )
        for r in rows
    }
