"""Every vehicle's window at once: the fleet ranking's numbers, in one statement.

The per-vehicle path (`store.performance`) reads one device's rows and rollups through its
primary key. Done 10,000 times that would be 10,000 × eight index probes; here each source is
read once for the whole fleet, by time range:

* rollups of the window's whole hours, by the rollups' hour index, skipping dirty hours;
* raw rows where no rollup applies: the window's partial first hour, the hours not rolled up
  yet at its end, and every dirty device-hour.

No piece needs sorting into place: each carries the reading before it (a rollup stores it,
migrations/0004), so the increment into it is computed row by row and a hash aggregate sums a
device's pieces. Only raw readings are ordered, within their short runs, and each run's first
reading looks its predecessor up. The increments follow the rules of `energy_engine.energy`,
so every vehicle's numbers equal what `GET /v1/analytics/performance/{id}` answers for the
same window (tests/integration/test_fleet_analytics.py checks that on random streams).
Meters count for a vehicle over the
part of the window they were assigned to it; the few assignments that start or end inside the
window go through `meter_window_energy` one by one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from energy_engine.analytics.store import Performance, VehicleWindow
from energy_engine.db import Connection
from energy_engine.settings import EnergySemantics, Settings

HOUR = timedelta(hours=1)

# The totals of one stream for every device: {stream}, {device}, {kwh} and the extra column
# (summed per device) name the stream; {only} restricts the devices.
#   $1 window from, $2 window to, $3/$4 the rolled-up whole hours [from, to) of the window,
#   $5 the end of the raw rows at the start (the partial first hour, [$1, $5)),
#   $6 baseline lookback, $7 max power kW, $8 interval semantics.
# Every piece (a rollup or a raw reading) carries the reading before it, so the increment into
# it is computed row by row: stored with the rollup, looked up for a rollup whose hour follows
# a dirty one (its stored predecessor may be stale), the previous raw reading of the same run,
# or looked up for a run's first reading.
_TOTALS = """
{stream}_suspect AS (
    SELECT DISTINCT d.device_id AS device, n.hour
    FROM rollup_dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM {stream}_rollups AS u
        WHERE u.{device} = d.device_id AND u.hour > d.hour
    ) AS n
    WHERE d.stream = '{stream}' AND n.hour >= $3 AND n.hour < $4
),
{stream}_rollup_pieces AS (
    SELECT u.{device} AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, {rollup_extra}
    FROM {stream}_rollups AS u
    WHERE u.hour >= $3 AND u.hour < $4 {only_u}
      AND NOT EXISTS (SELECT FROM rollup_dirty AS d
                      WHERE d.stream = '{stream}' AND d.device_id = u.{device}
                        AND d.hour = u.hour)
      AND NOT EXISTS (SELECT FROM {stream}_suspect AS s
                      WHERE s.device = u.{device} AND s.hour = u.hour)
    UNION ALL
    SELECT u.{device}, u.first_at, u.first_kwh, p.read_at, p.{kwh},
           u.added_kwh, u.skipped, u.readings, {rollup_extra}
    FROM {stream}_suspect AS s
    JOIN {stream}_rollups AS u ON u.{device} = s.device AND u.hour = s.hour
    LEFT JOIN LATERAL (
        SELECT read_at, {kwh}
        FROM {stream}_readings
        WHERE {device} = u.{device} AND read_at < u.hour AND read_at >= $1 - $6::interval
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
    WHERE NOT EXISTS (SELECT FROM rollup_dirty AS d
                      WHERE d.stream = '{stream}' AND d.device_id = u.{device}
                        AND d.hour = u.hour)
      {only_u}
),
-- Raw readings in runs: the partial first hour, the hours not rolled up yet, each dirty hour.
{stream}_raw AS (
    SELECT r.{device} AS device, r.read_at, r.{kwh} AS kwh, {raw_extra}, $1 AS run
    FROM {stream}_readings AS r
    WHERE r.read_at >= $1 AND r.read_at < $5 {only_r}
    UNION ALL
    SELECT r.{device}, r.read_at, r.{kwh}, {raw_extra}, $4
    FROM {stream}_readings AS r
    WHERE r.read_at >= $4 AND r.read_at < $2 {only_r}
    UNION ALL
    SELECT r.{device}, r.read_at, r.{kwh}, {raw_extra}, d.hour
    FROM rollup_dirty AS d
    JOIN {stream}_readings AS r
      ON r.{device} = d.device_id AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.stream = '{stream}' AND d.hour >= $3 AND d.hour < $4
      AND r.read_at >= $3 AND r.read_at < $4 {only_r}
),
{stream}_raw_lags AS (
    SELECT device, read_at, kwh, extra, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM {stream}_raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
{stream}_pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, extra
    FROM {stream}_rollup_pieces
    UNION ALL
    SELECT device, read_at, kwh, prev_at, prev_kwh, 0, 0, 1, extra
    FROM {stream}_raw_lags
    WHERE prev_at IS NOT NULL
    UNION ALL
    SELECT l.device, l.read_at, l.kwh, p.read_at, p.{kwh}, 0, 0, 1, l.extra
    FROM {stream}_raw_lags AS l
    LEFT JOIN LATERAL (
        SELECT read_at, {kwh}
        FROM {stream}_readings
        WHERE {device} = l.device AND read_at < l.run AND read_at >= $1 - $6::interval
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
    WHERE l.prev_at IS NULL
),
{stream}_steps AS (
    -- A predecessor before the window is the baseline, and counts only within the lookback.
    SELECT device, added, skipped, readings, extra,
           CASE WHEN $8 THEN first_kwh
                WHEN prev_at >= $1 - $6::interval THEN
                    CASE WHEN first_kwh >= prev_kwh THEN first_kwh - prev_kwh
                         ELSE first_kwh  -- a counter reset
                    END
           END AS joined,
           CASE WHEN prev_at >= $1 - $6::interval
                THEN EXTRACT(epoch FROM first_at - prev_at)::float8
           END AS seconds
    FROM {stream}_pieces
),
{stream}_totals AS (
    SELECT device,
           sum(readings)::bigint AS readings,
           coalesce(sum(added), 0)
               + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                                 OR joined * 3600 <= $7 * seconds), 0) AS kwh,
           (sum(skipped) + count(*) FILTER (WHERE joined * 3600 > $7 * seconds))::bigint
               AS skipped,
           sum(extra) AS extra
    FROM {stream}_steps
    GROUP BY device
)"""

_VEHICLE_TOTALS = _TOTALS.format(
    stream="vehicle",
    device="vehicle_id",
    kwh="kwh_delivered_dc",
    rollup_extra="u.battery_temp_sum AS extra",
    raw_extra="r.battery_temp::float8 AS extra",
    only_u="",
    only_r="",
)

_WHOLE = "(SELECT meter_id FROM segments WHERE whole)"
_METER_TOTALS = _TOTALS.format(
    stream="meter",
    device="meter_id",
    kwh="kwh_consumed_ac",
    rollup_extra="0::float8 AS extra",
    raw_extra="0::float8 AS extra",
    only_u=f"AND u.meter_id IN {_WHOLE}",
    only_r=f"AND r.meter_id IN {_WHOLE}",
)

# Per known vehicle: DC readings, kWh, skipped, battery temperature sum; the meters assigned
# during the window (in window order) and their AC readings, kWh and skipped.
#   $1..$8 as for _TOTALS.
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
{_VEHICLE_TOTALS},
{_METER_TOTALS},
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
        s.meter_id, s.seg_from, s.seg_to, $6, $7, $8, $1, $2) AS e
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
       dc.extra / nullif(dc.readings, 0) AS avg_battery_temp,
       coalesce(ac.meter_ids, '{{}}') AS meter_ids, coalesce(ac.readings, 0) AS meter_readings,
       coalesce(ac.kwh, 0) AS meter_kwh, coalesce(ac.skipped, 0) AS meter_skipped
FROM known AS k
LEFT JOIN vehicle_totals AS dc ON dc.device = k.vehicle_id
LEFT JOIN ac ON ac.vehicle_id = k.vehicle_id
"""  # noqa: S608


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def plan(start: datetime, end: datetime, rolled: datetime | None) -> tuple[datetime, ...]:
    """The whole hours of [start, end) answered from rollups, [hour_from, hour_to), and the end
    of the raw rows before them; `rolled` is the watermark (None: nothing rolled yet)."""
    hour_from = start if _floor_hour(start) == start else _floor_hour(start) + HOUR
    hour_to = hour_from if rolled is None else max(hour_from, min(_floor_hour(end), rolled))
    return hour_from, hour_to, min(hour_from, end)


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
            *plan(start, end, rolled),
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
