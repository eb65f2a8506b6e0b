"""Every vehicle's window at once: the fleet ranking's numbers, in one statement.

The per-vehicle path (`store.performance`) reads one device's rows and rollups through its
primary key. Done 10,000 times that would be 10,000 × eight index probes; here each source is
read once for the whole fleet, by time range:

* day rollups of the window's whole UTC days and hour rollups of its other whole hours, by
  their time indexes, skipping devices with dirty hours;
* raw rows where no rollup applies: the window's partial first hour, the hours not rolled up
  yet at its end, and every dirty device-hour.

No piece needs sorting into place: each carries the reading before it and a rollup the
increment from it (migrations/0004, 0005), so a hash aggregate sums a device's pieces. Only raw
readings are ordered, within their short runs, and each run's first reading looks its
predecessor up. The increments follow the rules of `energy_engine.energy`, so every vehicle's
numbers equal what `GET /v1/analytics/performance/{id}` answers for the same window
(tests/integration/test_fleet_analytics.py checks that on random streams). Meters count for a
vehicle over the part of the window they were assigned to it; the few assignments that start
or end inside the window go through `meter_segment_energy` one by one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from energy_engine.analytics.store import Performance, VehicleWindow
from energy_engine.db import Connection, Pool
from energy_engine.rollups import store as rollups
from energy_engine.settings import EnergySemantics, Settings

HOUR = timedelta(hours=1)

# The totals of one stream for every device: {stream}, {device}, {kwh} and the extra column
# (summed per device) name the stream.
#   $1 window from, $2 window to, $3/$4 the rolled-up whole hours [from, to) of the window,
#   $5 the end of the raw rows at the start (the partial first hour, [$1, $5)),
#   $6 max power kW, $7 interval semantics, $8 $1 minus the baseline lookback (a predecessor
#   before it is no baseline).
# Every piece (a rollup or a raw reading) carries the reading before it, so the increment into
# it is computed row by row, with no ordering of the pieces:
#  * rollups of devices without dirty hours (nearly all): their stored predecessor, summed per
#    device by a (parallel) hash aggregate straight off the rollups' hour index;
#  * rollups of devices with dirty hours: skipping the dirty hours, and looking the predecessor
#    up for the next rolled hour after a dirty one (its stored one may be stale);
#  * raw readings, in runs (the partial first hour, the hours not rolled up yet, each dirty
#    hour): the previous reading of the run, or for a run's first reading, looked up.
# The increment into a piece, by the rules of energy_engine.energy (energy_increment and
# energy_plausible, migrations/0006, which survive poison values); a predecessor before the
# window is the baseline, and counts only within the lookback ($8).
_JOINED = """CASE WHEN $7 THEN {first_kwh}
                WHEN {prev_at} >= $8 THEN energy_increment({first_kwh}, {prev_kwh}, false)
           END"""
_SECONDS = "CASE WHEN {prev_at} >= $8 THEN date_part('epoch', {first_at} - {prev_at}) END"
_STEP = _JOINED + " AS joined,\n           " + _SECONDS + " AS seconds"
# Sums of steps (joined, seconds, added, skipped, readings, extra) per device.
_SUMS = """sum(readings) AS readings,
           sum(added + CASE WHEN seconds IS NULL OR energy_plausible(joined, seconds, $6)
                            THEN coalesce(joined, 0) ELSE 0 END) AS kwh,
           sum(skipped + CASE WHEN NOT energy_plausible(joined, seconds, $6) THEN 1 ELSE 0 END)
               AS skipped,
           sum(extra) AS extra"""

_TOTALS = """
-- The increment into each rollup's first reading is stored with it (migrations/0005): counted
-- when its predecessor is within the window or the baseline lookback.
-- Whole UTC days come from day rollups, the hours around them from hour rollups.
{stream}_settled AS (
    SELECT u.device, sum(u.readings) AS readings,
           sum(u.added_kwh + CASE WHEN u.prev_at >= $8 THEN u.joined_kwh
                                  WHEN $7 THEN u.first_kwh
                                  ELSE 0
                             END) AS kwh,
           sum(u.skipped + CASE WHEN u.prev_at >= $8 THEN u.joined_skipped ELSE 0 END) AS skipped,
           sum(u.extra) AS extra
    FROM (
        SELECT {device} AS device, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, {rollup_extra}
        FROM {stream}_rollups
        WHERE hour >= $3 AND hour < rollup_days_from($3, $4)
        UNION ALL
        SELECT {device}, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, {rollup_extra}
        FROM {stream}_day_rollups
        WHERE day >= rollup_days_from($3, $4) AND day < rollup_days_to($3, $4)
        UNION ALL
        SELECT {device}, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, {rollup_extra}
        FROM {stream}_rollups
        WHERE hour >= rollup_days_to($3, $4) AND hour < $4
    ) AS u
    GROUP BY u.device
),
{stream}_dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = '{stream}' AND hour < $4
),
-- The next rolled hour after a dirty one: its stored predecessor may be stale.
{stream}_suspect AS MATERIALIZED (
    SELECT DISTINCT d.device, n.hour
    FROM {stream}_dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM {stream}_rollups AS u
        WHERE u.{device} = d.device AND u.hour > d.hour
    ) AS n
    WHERE n.hour >= $3 AND n.hour < $4
      AND NOT EXISTS (SELECT FROM {stream}_dirty AS o WHERE o.device = d.device AND o.hour = n.hour)
),
{stream}_unsettled_pieces AS (
    SELECT u.{device} AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, {rollup_extra}
    FROM {stream}_rollups AS u
    WHERE u.hour >= $3 AND u.hour < $4
      AND u.{device} IN (SELECT device FROM {stream}_dirty)
      AND NOT EXISTS (SELECT FROM {stream}_dirty AS d
                      WHERE d.device = u.{device} AND d.hour = u.hour)
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
        WHERE {device} = u.{device} AND read_at < u.hour AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
),
{stream}_raw AS (
    SELECT r.{device} AS device, r.read_at, r.{kwh} AS kwh, {raw_extra}, $1 AS run
    FROM {stream}_readings AS r
    WHERE r.read_at >= $1 AND r.read_at < $5
    UNION ALL
    SELECT r.{device}, r.read_at, r.{kwh}, {raw_extra}, $4
    FROM {stream}_readings AS r
    WHERE r.read_at >= $4 AND r.read_at < $2
    UNION ALL
    SELECT r.{device}, r.read_at, r.{kwh}, {raw_extra}, d.hour
    FROM {stream}_dirty AS d
    JOIN {stream}_readings AS r
      ON r.{device} = d.device AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.hour >= $3 AND r.read_at >= $3 AND r.read_at < $4
),
{stream}_raw_lags AS (
    SELECT device, read_at, kwh, extra, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM {stream}_raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
{stream}_pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, extra
    FROM {stream}_unsettled_pieces
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
        WHERE {device} = l.device AND read_at < l.run AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
    WHERE l.prev_at IS NULL
),
{stream}_totals AS (
    SELECT device, sum(readings)::bigint AS readings, sum(kwh) AS kwh,
           sum(skipped)::bigint AS skipped, sum(extra) AS extra
    FROM (
        -- Devices with dirty hours are left out after summing: cheaper than testing each
        -- rollup (EXPLAIN ANALYZE: 150 ms of anti join for 240,000 rollups).
        SELECT * FROM {stream}_settled
        WHERE device NOT IN (SELECT device FROM {stream}_dirty)
        UNION ALL
        SELECT device, {sums}
        FROM (
            SELECT device, added, skipped, readings, extra,
                   {piece_step}
            FROM {stream}_pieces
        ) AS steps
        GROUP BY device
    ) AS parts
    GROUP BY device
)"""


def _totals(stream: str, device: str, kwh: str, rollup_extra: str, raw_extra: str) -> str:
    return _TOTALS.format(
        stream=stream,
        device=device,
        kwh=kwh,
        rollup_extra=rollup_extra,
        raw_extra=raw_extra,
        sums=_SUMS,
        piece_step=_STEP.format(
            first_kwh="first_kwh", prev_at="prev_at", prev_kwh="prev_kwh", first_at="first_at"
        ),
    )


_VEHICLE_TOTALS = _totals(
    stream="vehicle",
    device="vehicle_id",
    kwh="kwh_delivered_dc",
    rollup_extra="battery_temp_sum AS extra",
    raw_extra="r.battery_temp::float8 AS extra",
)

_METER_TOTALS = _totals(
    stream="meter",
    device="meter_id",
    kwh="kwh_consumed_ac",
    rollup_extra="0::float8 AS extra",
    raw_extra="0::float8 AS extra",
)

# Per known vehicle (reported or assigned): its DC readings, kWh, skipped and average battery
# temperature, and the meters assigned during the window (in window order) with their AC
# readings, kWh and skipped. $9 is the baseline lookback. A meter assigned for the whole window
# is read with every other (meter_totals); one assigned for part of it, by itself. One
# statement: the Python side gets one row per vehicle instead of joining two lists.
FLEET = f"""
WITH {_VEHICLE_TOTALS},
segments AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, $1) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $2) AS seg_to,
           valid_from <= $1 AND coalesce(valid_to, 'infinity') >= $2 AS whole
    FROM assignments
    WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1)
),
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
    CROSS JOIN LATERAL meter_segment_energy(s.meter_id, s.seg_from, s.seg_to, $9, $6, $7) AS e
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
       coalesce(dc.skipped, 0) AS skipped, dc.extra / dc.readings AS avg_battery_temp,
       coalesce(ac.meter_ids, '{{}}') AS meter_ids, coalesce(ac.readings, 0) AS meter_readings,
       coalesce(ac.kwh, 0) AS meter_kwh, coalesce(ac.skipped, 0) AS meter_skipped
FROM known AS k
LEFT JOIN vehicle_totals AS dc ON dc.device = k.vehicle_id
LEFT JOIN ac ON ac.vehicle_id = k.vehicle_id
"""  # noqa: S608 (composed from this module's constants; every value is a bind parameter)


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def plan(start: datetime, end: datetime, rolled: datetime | None) -> tuple[datetime, ...]:
    """The whole hours of [start, end) answered from rollups, [hour_from, hour_to), and the end
    of the raw rows before them; `rolled` is the watermark (None: nothing rolled yet)."""
    hour_from = start if _floor_hour(start) == start else _floor_hour(start) + HOUR
    hour_to = hour_from if rolled is None else max(hour_from, min(_floor_hour(end), rolled))
    return hour_from, hour_to, min(hour_from, end)


# Custom plans: the statements run for many milliseconds, and knowing the window prunes
# partitions while planning. Hash aggregates over a fleet need more than the default 4 MB.
# Both in one round trip.
_SESSION = "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '64MB'"


async def prepare(
    conn: Connection, start: datetime, end: datetime, settings: Settings
) -> tuple[object, ...]:
    """Inside a transaction: set the fleet statement up and return its arguments."""
    await conn.execute(_SESSION)
    rolled = (await rollups.watermarks(conn))["rolled"]
    return (
        start,
        end,
        *plan(start, end, rolled),
        settings.max_power_kw,
        settings.energy_semantics is EnergySemantics.INTERVAL,
        start - settings.baseline_lookback,
        settings.baseline_lookback,
    )


async def fleet_numbers(
    pool: Pool, start: datetime, end: datetime, settings: Settings
) -> dict[str, Performance]:
    """Every known vehicle's window [start, end), by vehicle id."""
    async with pool.acquire() as conn:
        # One snapshot for the watermark and the rollups it vouches for.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(FLEET, *await prepare(conn, start, end, settings))
    return {
        r[0]: Performance(VehicleWindow(r[1], r[2], r[3], r[4]), list(r[5]), r[6], r[7], r[8])
        for r in rows
    }
