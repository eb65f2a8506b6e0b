-- The analytics reads: one vehicle's window (the report and the series), and every vehicle's
-- window at once (the fleet ranking).
--
-- A device's window is pieced together by the SQL function `stream_window_energy`
-- (migrations/0001_baseline.sql) from the baseline reading, raw rows at
-- the edges and in hours not rolled up (yet), and the rollups of whole hours in between; every
-- read is an index range scan of one device. They run on the request pool as generic plans,
-- which prune partitions when they start (tests/integration/test_query_plans.py, and
-- docs/analytics-plans.md, written by `make plans`).
--
-- Parameters of the per-vehicle statements: $1 vehicle, $2 window from, $3 window to,
-- $4 baseline lookback, $5 max power kW, $6 interval semantics.

-- name: performance
-- Everything the performance report needs, in one round trip: whether the vehicle is known at
-- all (for the 404), its DC side, and each assigned meter's AC side in window order.
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
-- meter_segment_energy, planned on the part's bounds (migrations/0001_baseline.sql).
meters AS (
    SELECT s.meter_id, s.seg_from, e.readings, e.kwh, e.skipped
    FROM segments AS s
    CROSS JOIN LATERAL stream_window_energy('meter', s.meter_id, $2, $3, $4, $5, $6, $2, $3) AS e
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
       dc.sensor_sum / nullif(dc.readings, 0) AS avg_battery_temp,
       m.meter_ids, m.meter_readings, m.meter_kwh, m.meter_skipped
FROM stream_window_energy('vehicle', $1, $2, $3, $4, $5, $6, $2, $3) AS dc,
     (SELECT coalesce(array_agg(meter_id ORDER BY seg_from), '{}') AS meter_ids,
             coalesce(sum(readings), 0) AS meter_readings,
             coalesce(sum(kwh), 0) AS meter_kwh,
             coalesce(sum(skipped), 0) AS meter_skipped
      FROM meters) AS m;

-- name: series
-- One row per step of [$2, $3): steps start at UTC hour or day boundaries ($7 one hour or
-- one day, $8 'hour' or 'day'), the first and last cut to the window. Each step is its own
-- window, answered by the same functions as the report (so a step's numbers are what the
-- report says for that step): DC side, SoC range, and AC over the meters assigned during it.
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
       dc.sensor_sum / nullif(dc.readings, 0) AS avg_battery_temp,
       dc.soc_min, dc.soc_max,
       ac.readings AS meter_readings, ac.kwh AS meter_kwh, ac.skipped AS meter_skipped
FROM steps AS s
CROSS JOIN LATERAL stream_window_energy('vehicle', $1, s.step_from, s.step_to, $4, $5, $6, $2, $3)
    AS dc
CROSS JOIN LATERAL (
    SELECT coalesce(sum(e.readings), 0)::bigint AS readings,
           coalesce(sum(e.kwh), 0) AS kwh,
           coalesce(sum(e.skipped), 0)::bigint AS skipped
    FROM assignments AS a
    CROSS JOIN LATERAL stream_window_energy(
        'meter', a.meter_id, greatest(a.valid_from, s.step_from),
        least(coalesce(a.valid_to, 'infinity'), s.step_to), $4, $5, $6, $2, $3) AS e
    WHERE a.vehicle_id = $1 AND a.valid_from < s.step_to
      AND (a.valid_to IS NULL OR a.valid_to > s.step_from)
) AS ac
ORDER BY s.step_from;

-- name: fleet_session
-- Inside the fleet statement's transaction, before it. Custom plans: the statement runs for
-- many milliseconds, and knowing the window prunes partitions while planning. Hash aggregates
-- over a fleet need more than the default 4 MB. Both in one round trip.
SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '64MB';

-- name: fleet_timeout
-- The fleet statement's own statement_timeout ($1, e.g. '20000ms'), for this transaction.
SELECT set_config('statement_timeout', $1, true);

-- name: any_dirty_before
-- Whether any device of either stream has a dirty hour before $1 (fleet.prepare).
SELECT EXISTS (SELECT FROM rollup_dirty WHERE hour < $1);

-- name: fleet
-- Every known vehicle's window at once (analytics/fleet.py): per vehicle (reported or
-- assigned) its DC readings, kWh, skipped and average battery temperature, and the meters
-- assigned during the window (in window order) with their AC readings, kWh and skipped. One
-- statement: the Python side gets one row per vehicle instead of joining two lists.
--   $1 window from, $2 window to, $3/$4 the rolled-up whole hours [from, to) of the window,
--   $5 the end of the raw rows at the start (the partial first hour, [$1, $5)),
--   $6 max power kW, $7 interval semantics, $8 $1 minus the baseline lookback (a predecessor
--   before it is no baseline), $9 the baseline lookback, $10 where the rollups read start
--   ($3, or the hour the window starts in when $11), $11/$12 whether the partial first and
--   last hours come from their rollups' marks (fleet.plan).
-- Each stream's totals per device come from `stream_fleet_totals`
-- (migrations/0007_minute_marks.sql), which pieces them together from rollups and raw runs,
-- or from its rollups alone, `stream_fleet_settled` (fleet.SETTLED). A
-- meter assigned for the whole window is read with every other (meter_totals); one assigned
-- for part of it, by itself (meter_segment_energy).
WITH
vehicle_totals AS (
    SELECT * FROM stream_fleet_totals('vehicle', $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12)
),
segments AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, $1) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $2) AS seg_to,
           valid_from <= $1 AND coalesce(valid_to, 'infinity') >= $2 AS whole
    FROM assignments
    WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1)
),
meter_totals AS (
    SELECT * FROM stream_fleet_totals('meter', $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12)
),
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
       coalesce(dc.skipped, 0) AS skipped, dc.sensor_sum / dc.readings AS avg_battery_temp,
       coalesce(ac.meter_ids, '{}') AS meter_ids, coalesce(ac.readings, 0) AS meter_readings,
       coalesce(ac.kwh, 0) AS meter_kwh, coalesce(ac.skipped, 0) AS meter_skipped
FROM known AS k
LEFT JOIN vehicle_totals AS dc ON dc.device = k.vehicle_id
LEFT JOIN ac ON ac.vehicle_id = k.vehicle_id;
