-- The analytics reads: one vehicle's window (the report and the series), and every vehicle's
-- window at once (the fleet ranking).
--
-- A vehicle's window is pieced together by the SQL functions `vehicle_window_energy` and
-- `meter_window_energy` (migrations/0001_baseline.sql) from the baseline reading, raw rows at
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
ORDER BY s.step_from;

-- name: fleet_session
-- Inside the fleet statement's transaction, before it. Custom plans: the statement runs for
-- many milliseconds, and knowing the window prunes partitions while planning. Hash aggregates
-- over a fleet need more than the default 4 MB. Both in one round trip.
SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '64MB';

-- name: fleet
-- Every known vehicle's window at once (analytics/fleet.py): per vehicle (reported or
-- assigned) its DC readings, kWh, skipped and average battery temperature, and the meters
-- assigned during the window (in window order) with their AC readings, kWh and skipped. One
-- statement: the Python side gets one row per vehicle instead of joining two lists.
--   $1 window from, $2 window to, $3/$4 the rolled-up whole hours [from, to) of the window,
--   $5 the end of the raw rows at the start (the partial first hour, [$1, $5)),
--   $6 max power kW, $7 interval semantics, $8 $1 minus the baseline lookback (a predecessor
--   before it is no baseline), $9 the baseline lookback.
-- Each stream's totals per device (vehicle_*, then the same for meter_*) are pieced together
-- from parts that each carry the reading before them, so the increment into a part is
-- computed row by row, with no ordering of the parts:
--  * rollups of devices without dirty hours (nearly all): their stored predecessor, summed per
--    device by a (parallel) hash aggregate straight off the rollups' hour index;
--  * rollups of devices with dirty hours: skipping the dirty hours, and looking the predecessor
--    up for the next rolled hour after a dirty one (its stored one may be stale);
--  * raw readings, in runs (the partial first hour, the hours not rolled up yet, each dirty
--    hour): the previous reading of the run, or for a run's first reading, looked up.
-- The increment into a part follows energy_engine.energy through `rollup_joined_kwh` and
-- `rollup_joined_skipped` (migrations/0001_baseline.sql); `window_joined_kwh` and `window_joined_skipped`
-- (migrations/0001_baseline.sql) count it only when its predecessor is within the window or the baseline
-- lookback ($8). A meter assigned for the whole window is read with every other (meter_totals);
-- one assigned for part of it, by itself (meter_segment_energy).
WITH
-- The increment into each rollup's first reading is stored with it (migrations/0001_baseline.sql): counted
-- when its predecessor is within the window or the baseline lookback.
-- Whole UTC days come from day rollups, the hours around them from hour rollups.
vehicle_settled AS (
    SELECT u.device, sum(u.readings) AS readings,
           sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh, $8, $7))
               AS kwh,
           sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped, $8)) AS skipped,
           sum(u.extra) AS extra
    FROM (
        SELECT vehicle_id AS device, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, battery_temp_sum AS extra
        FROM vehicle_rollups
        WHERE hour >= $3 AND hour < rollup_days_from($3, $4)
        UNION ALL
        SELECT vehicle_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, battery_temp_sum AS extra
        FROM vehicle_day_rollups
        WHERE day >= rollup_days_from($3, $4) AND day < rollup_days_to($3, $4)
        UNION ALL
        SELECT vehicle_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, battery_temp_sum AS extra
        FROM vehicle_rollups
        WHERE hour >= rollup_days_to($3, $4) AND hour < $4
    ) AS u
    GROUP BY u.device
),
vehicle_dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = 'vehicle' AND hour < $4
),
-- The next rolled hour after a dirty one: its stored predecessor may be stale.
vehicle_suspect AS MATERIALIZED (
    SELECT DISTINCT d.device, n.hour
    FROM vehicle_dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM vehicle_rollups AS u
        WHERE u.vehicle_id = d.device AND u.hour > d.hour
    ) AS n
    WHERE n.hour >= $3 AND n.hour < $4
      AND NOT EXISTS (SELECT FROM vehicle_dirty AS o WHERE o.device = d.device AND o.hour = n.hour)
),
vehicle_unsettled_pieces AS (
    SELECT u.vehicle_id AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, battery_temp_sum AS extra
    FROM vehicle_rollups AS u
    WHERE u.hour >= $3 AND u.hour < $4
      AND u.vehicle_id IN (SELECT device FROM vehicle_dirty)
      AND NOT EXISTS (SELECT FROM vehicle_dirty AS d
                      WHERE d.device = u.vehicle_id AND d.hour = u.hour)
      AND NOT EXISTS (SELECT FROM vehicle_suspect AS s
                      WHERE s.device = u.vehicle_id AND s.hour = u.hour)
    UNION ALL
    SELECT u.vehicle_id, u.first_at, u.first_kwh, p.read_at, p.kwh_delivered_dc,
           u.added_kwh, u.skipped, u.readings, battery_temp_sum AS extra
    FROM vehicle_suspect AS s
    JOIN vehicle_rollups AS u ON u.vehicle_id = s.device AND u.hour = s.hour
    LEFT JOIN LATERAL (
        SELECT read_at, kwh_delivered_dc
        FROM vehicle_readings
        WHERE vehicle_id = u.vehicle_id AND read_at < u.hour AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
),
vehicle_raw AS (
    SELECT r.vehicle_id AS device, r.read_at, r.kwh_delivered_dc AS kwh, r.battery_temp::float8 AS extra, $1 AS run
    FROM vehicle_readings AS r
    WHERE r.read_at >= $1 AND r.read_at < $5
    UNION ALL
    SELECT r.vehicle_id, r.read_at, r.kwh_delivered_dc, r.battery_temp::float8 AS extra, $4
    FROM vehicle_readings AS r
    WHERE r.read_at >= $4 AND r.read_at < $2
    UNION ALL
    SELECT r.vehicle_id, r.read_at, r.kwh_delivered_dc, r.battery_temp::float8 AS extra, d.hour
    FROM vehicle_dirty AS d
    JOIN vehicle_readings AS r
      ON r.vehicle_id = d.device AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.hour >= $3 AND r.read_at >= $3 AND r.read_at < $4
),
vehicle_raw_lags AS (
    SELECT device, read_at, kwh, extra, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM vehicle_raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
vehicle_pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, extra
    FROM vehicle_unsettled_pieces
    UNION ALL
    SELECT device, read_at, kwh, prev_at, prev_kwh, 0, 0, 1, extra
    FROM vehicle_raw_lags
    WHERE prev_at IS NOT NULL
    UNION ALL
    SELECT l.device, l.read_at, l.kwh, p.read_at, p.kwh_delivered_dc, 0, 0, 1, l.extra
    FROM vehicle_raw_lags AS l
    LEFT JOIN LATERAL (
        SELECT read_at, kwh_delivered_dc
        FROM vehicle_readings
        WHERE vehicle_id = l.device AND read_at < l.run AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
    WHERE l.prev_at IS NULL
),
vehicle_totals AS (
    SELECT device, sum(readings)::bigint AS readings, sum(kwh) AS kwh,
           sum(skipped)::bigint AS skipped, sum(extra) AS extra
    FROM (
        -- Devices with dirty hours are left out after summing: cheaper than testing each
        -- rollup with an anti join.
        SELECT * FROM vehicle_settled
        WHERE device NOT IN (SELECT device FROM vehicle_dirty)
        UNION ALL
        SELECT device, sum(readings) AS readings,
               sum(added + window_joined_kwh(
                       prev_at,
                       rollup_joined_kwh(first_at, first_kwh, prev_at, prev_kwh, $6, $7),
                       first_kwh, $8, $7)) AS kwh,
               sum(skipped + window_joined_skipped(
                       prev_at,
                       rollup_joined_skipped(first_at, first_kwh, prev_at, prev_kwh, $6, $7),
                       $8)) AS skipped,
               sum(extra) AS extra
        FROM vehicle_pieces
        GROUP BY device
    ) AS parts
    GROUP BY device
),
segments AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, $1) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $2) AS seg_to,
           valid_from <= $1 AND coalesce(valid_to, 'infinity') >= $2 AS whole
    FROM assignments
    WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1)
),
-- The meters' totals: as the vehicles' above, on the meters' tables.
meter_settled AS (
    SELECT u.device, sum(u.readings) AS readings,
           sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh, $8, $7))
               AS kwh,
           sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped, $8)) AS skipped,
           sum(u.extra) AS extra
    FROM (
        SELECT meter_id AS device, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, 0::float8 AS extra
        FROM meter_rollups
        WHERE hour >= $3 AND hour < rollup_days_from($3, $4)
        UNION ALL
        SELECT meter_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, 0::float8 AS extra
        FROM meter_day_rollups
        WHERE day >= rollup_days_from($3, $4) AND day < rollup_days_to($3, $4)
        UNION ALL
        SELECT meter_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, 0::float8 AS extra
        FROM meter_rollups
        WHERE hour >= rollup_days_to($3, $4) AND hour < $4
    ) AS u
    GROUP BY u.device
),
meter_dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = 'meter' AND hour < $4
),
-- The next rolled hour after a dirty one: its stored predecessor may be stale.
meter_suspect AS MATERIALIZED (
    SELECT DISTINCT d.device, n.hour
    FROM meter_dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM meter_rollups AS u
        WHERE u.meter_id = d.device AND u.hour > d.hour
    ) AS n
    WHERE n.hour >= $3 AND n.hour < $4
      AND NOT EXISTS (SELECT FROM meter_dirty AS o WHERE o.device = d.device AND o.hour = n.hour)
),
meter_unsettled_pieces AS (
    SELECT u.meter_id AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, 0::float8 AS extra
    FROM meter_rollups AS u
    WHERE u.hour >= $3 AND u.hour < $4
      AND u.meter_id IN (SELECT device FROM meter_dirty)
      AND NOT EXISTS (SELECT FROM meter_dirty AS d
                      WHERE d.device = u.meter_id AND d.hour = u.hour)
      AND NOT EXISTS (SELECT FROM meter_suspect AS s
                      WHERE s.device = u.meter_id AND s.hour = u.hour)
    UNION ALL
    SELECT u.meter_id, u.first_at, u.first_kwh, p.read_at, p.kwh_consumed_ac,
           u.added_kwh, u.skipped, u.readings, 0::float8 AS extra
    FROM meter_suspect AS s
    JOIN meter_rollups AS u ON u.meter_id = s.device AND u.hour = s.hour
    LEFT JOIN LATERAL (
        SELECT read_at, kwh_consumed_ac
        FROM meter_readings
        WHERE meter_id = u.meter_id AND read_at < u.hour AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
),
meter_raw AS (
    SELECT r.meter_id AS device, r.read_at, r.kwh_consumed_ac AS kwh, 0::float8 AS extra, $1 AS run
    FROM meter_readings AS r
    WHERE r.read_at >= $1 AND r.read_at < $5
    UNION ALL
    SELECT r.meter_id, r.read_at, r.kwh_consumed_ac, 0::float8 AS extra, $4
    FROM meter_readings AS r
    WHERE r.read_at >= $4 AND r.read_at < $2
    UNION ALL
    SELECT r.meter_id, r.read_at, r.kwh_consumed_ac, 0::float8 AS extra, d.hour
    FROM meter_dirty AS d
    JOIN meter_readings AS r
      ON r.meter_id = d.device AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.hour >= $3 AND r.read_at >= $3 AND r.read_at < $4
),
meter_raw_lags AS (
    SELECT device, read_at, kwh, extra, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM meter_raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
meter_pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, extra
    FROM meter_unsettled_pieces
    UNION ALL
    SELECT device, read_at, kwh, prev_at, prev_kwh, 0, 0, 1, extra
    FROM meter_raw_lags
    WHERE prev_at IS NOT NULL
    UNION ALL
    SELECT l.device, l.read_at, l.kwh, p.read_at, p.kwh_consumed_ac, 0, 0, 1, l.extra
    FROM meter_raw_lags AS l
    LEFT JOIN LATERAL (
        SELECT read_at, kwh_consumed_ac
        FROM meter_readings
        WHERE meter_id = l.device AND read_at < l.run AND read_at >= $8
        ORDER BY read_at DESC
        LIMIT 1
    ) AS p ON true
    WHERE l.prev_at IS NULL
),
meter_totals AS (
    SELECT device, sum(readings)::bigint AS readings, sum(kwh) AS kwh,
           sum(skipped)::bigint AS skipped, sum(extra) AS extra
    FROM (
        SELECT * FROM meter_settled
        WHERE device NOT IN (SELECT device FROM meter_dirty)
        UNION ALL
        SELECT device, sum(readings) AS readings,
               sum(added + window_joined_kwh(
                       prev_at,
                       rollup_joined_kwh(first_at, first_kwh, prev_at, prev_kwh, $6, $7),
                       first_kwh, $8, $7)) AS kwh,
               sum(skipped + window_joined_skipped(
                       prev_at,
                       rollup_joined_skipped(first_at, first_kwh, prev_at, prev_kwh, $6, $7),
                       $8)) AS skipped,
               sum(extra) AS extra
        FROM meter_pieces
        GROUP BY device
    ) AS parts
    GROUP BY device
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
       coalesce(dc.skipped, 0) AS skipped, dc.extra / dc.readings AS avg_battery_temp,
       coalesce(ac.meter_ids, '{}') AS meter_ids, coalesce(ac.readings, 0) AS meter_readings,
       coalesce(ac.kwh, 0) AS meter_kwh, coalesce(ac.skipped, 0) AS meter_skipped
FROM known AS k
LEFT JOIN vehicle_totals AS dc ON dc.device = k.vehicle_id
LEFT JOIN ac ON ac.vehicle_id = k.vehicle_id;
