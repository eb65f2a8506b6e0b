-- The read side's share of the energy rule, as functions its statements call instead of
-- repeating it (analytics/queries.sql, rollups/queries.sql). Plain SQL functions: PostgreSQL
-- inlines them into the calling statement, so plans are those of the written-out expressions.

-- The increment into a window's piece (a rollup, or a run of raw readings) from the reading
-- before it, given that increment by `rollup_joined_kwh` (0001_baseline.sql): counted only when
-- the predecessor is at or after `baseline_from` (within the window, or the baseline lookback
-- before it). Without one, interval semantics still count the piece's own first reading.
CREATE FUNCTION window_joined_kwh(
    prev_at timestamptz, joined_kwh double precision, first_kwh double precision,
    baseline_from timestamptz, interval_kwh boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN prev_at >= baseline_from THEN joined_kwh
            WHEN interval_kwh THEN first_kwh
            ELSE 0
       END
$$;

-- Whether that increment was skipped as implausible (`rollup_joined_skipped`), 1 or 0, under
-- the same baseline rule.
CREATE FUNCTION window_joined_skipped(
    prev_at timestamptz, joined_skipped integer, baseline_from timestamptz
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN prev_at >= baseline_from THEN joined_skipped ELSE 0 END
$$;

-- Both streams' history in one shape, for statements written once for either stream: filtered
-- on `stream` with a constant, a query reads only that stream's table, through its own indexes
-- and partitions (the planner drops the other branch of the UNION while planning). `sensor` is
-- the meter's voltage or the vehicle's battery temperature; `soc` is NULL for meters.
CREATE VIEW stream_readings AS
SELECT 'meter'::text AS stream, meter_id AS device_id, read_at, kwh_consumed_ac AS kwh,
       voltage AS sensor, NULL::real AS soc
FROM meter_readings
UNION ALL
SELECT 'vehicle'::text, vehicle_id, read_at, kwh_delivered_dc, battery_temp, soc
FROM vehicle_readings;

-- The hour rollups of one stream (`of_stream`, 'meter' or 'vehicle'), computed from its raw
-- readings (rollups/queries.sql writes them to the stream's table). The readings are those of
-- one of three sets, chosen by the arguments (the others NULL), each a branch of the UNION:
--   from_at, to_at                  every reading of the hours [from_at, to_at),
--   from_at, to_at, only_devices    those of some devices only (rolling a failed batch apart),
--   dirty_devices, dirty_hours      every reading of those device-hours (redoing them).
-- The branches not asked for cost nothing: `only_devices IS NULL` is checked once, a NULL
-- bound prunes every partition when the statement starts, `= ANY(NULL)` matches no index
-- entry, and NULL arrays unnest to no rows.
-- The energy added between an hour's readings follows energy_increment and energy_plausible
-- (0001_baseline.sql); the increment into the hour's first reading, from the reading before the
-- hour however far back, is rollup_joined_kwh/_skipped's. A plain SQL function: PostgreSQL
-- inlines it into the calling statement, with `of_stream` a constant.
CREATE FUNCTION rollup_hours(
    of_stream text, interval_kwh boolean, max_kw double precision,
    from_at timestamptz, to_at timestamptz, only_devices text[],
    dirty_devices text[], dirty_hours timestamptz[]
) RETURNS TABLE (
    device_id text, hour timestamptz, readings bigint, first_at timestamptz,
    last_at timestamptz, first_kwh double precision, last_kwh double precision,
    added_kwh double precision, skipped bigint, sensor_sum real, sensor_min real,
    sensor_max real, soc_min real, soc_max real, prev_at timestamptz,
    prev_kwh double precision, joined_kwh double precision, joined_skipped smallint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT h.device_id, h.hour, h.readings, h.first_at, h.last_at, h.first_kwh, h.last_kwh,
       h.added_kwh, h.skipped, h.sensor_sum, h.sensor_min, h.sensor_max, h.soc_min, h.soc_max,
       p.read_at, p.kwh,
       coalesce(rollup_joined_kwh(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                  interval_kwh), 0),
       coalesce(rollup_joined_skipped(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                      interval_kwh), 0::smallint)
FROM (
    SELECT steps.device_id, steps.hour, count(*) AS readings, min(steps.read_at) AS first_at,
           max(steps.read_at) AS last_at,
           (array_agg(steps.kwh ORDER BY steps.read_at))[1] AS first_kwh,
           (array_agg(steps.kwh ORDER BY steps.read_at DESC))[1] AS last_kwh,
           coalesce(sum(steps.added)
                        FILTER (WHERE energy_plausible(steps.added, steps.seconds, max_kw)), 0)
               AS added_kwh,
           count(*) FILTER (WHERE NOT energy_plausible(steps.added, steps.seconds, max_kw))
               AS skipped,
           sum(steps.sensor) AS sensor_sum, min(steps.sensor) AS sensor_min,
           max(steps.sensor) AS sensor_max, min(steps.soc) AS soc_min, max(steps.soc) AS soc_max
    FROM (
        SELECT r.device_id, date_trunc('hour', r.read_at) AS hour, r.read_at, r.kwh, r.sensor,
               r.soc,
               energy_increment(r.kwh, lag(r.kwh) OVER w, interval_kwh) AS added,
               EXTRACT(epoch FROM r.read_at - lag(r.read_at) OVER w)::float8 AS seconds
        FROM (
            SELECT *
            FROM stream_readings AS s
            WHERE s.stream = of_stream AND s.read_at >= from_at AND s.read_at < to_at
              AND only_devices IS NULL
            UNION ALL
            SELECT *
            FROM stream_readings AS s
            WHERE s.stream = of_stream AND s.read_at >= from_at AND s.read_at < to_at
              AND s.device_id = ANY(only_devices)
            UNION ALL
            SELECT s.*
            FROM unnest(dirty_devices, dirty_hours) AS d (device_id, hour)
            JOIN stream_readings AS s
              ON s.stream = of_stream AND s.device_id = d.device_id AND s.read_at >= d.hour
             AND s.read_at < d.hour + interval '1 hour'
        ) AS r
        WINDOW w AS (PARTITION BY r.device_id, date_trunc('hour', r.read_at) ORDER BY r.read_at)
    ) AS steps
    GROUP BY steps.device_id, steps.hour
) AS h
LEFT JOIN LATERAL (
    -- Not through stream_readings: over a UNION, ORDER BY … LIMIT 1 merges every partition's
    -- newest row instead of reading the partitions newest first and stopping at the first.
    (SELECT r.read_at, r.kwh_consumed_ac AS kwh
     FROM meter_readings AS r
     WHERE of_stream = 'meter' AND r.meter_id = h.device_id AND r.read_at < h.hour
     ORDER BY r.read_at DESC
     LIMIT 1)
    UNION ALL
    (SELECT r.read_at, r.kwh_delivered_dc
     FROM vehicle_readings AS r
     WHERE of_stream = 'vehicle' AND r.vehicle_id = h.device_id AND r.read_at < h.hour
     ORDER BY r.read_at DESC
     LIMIT 1)
) AS p ON true
$$;

-- Both streams' hour rollups in one shape, as stream_readings for the readings: `sensor_sum`
-- is the voltage or battery temperature sum, `soc_min`/`soc_max` NULL for meters.
CREATE VIEW stream_rollups AS
SELECT 'meter'::text AS stream, meter_id AS device_id, hour, readings, first_kwh, last_at,
       last_kwh, added_kwh, skipped, prev_at, joined_kwh, joined_skipped,
       voltage_sum AS sensor_sum, NULL::real AS soc_min, NULL::real AS soc_max
FROM meter_rollups
UNION ALL
SELECT 'vehicle'::text, vehicle_id, hour, readings, first_kwh, last_at, last_kwh, added_kwh,
       skipped, prev_at, joined_kwh, joined_skipped, battery_temp_sum, soc_min, soc_max
FROM vehicle_rollups;

-- The day rollups of one stream from its hour rollups of complete UTC days (rollups/queries.sql
-- writes them to the stream's table): the energy added between the day's readings is each
-- hour's, plus the increment into every hour's first reading but the day's first, whose
-- predecessor is before the day (window_joined_kwh's rule, with the day as the window). The
-- days are those of the hours [from_at, to_at), all rolled, or the complete days of the
-- device-hours (devices, hours) that were redone or repaired; the other pair NULL. Inlined
-- into the calling statement like rollup_hours.
CREATE FUNCTION rollup_days(
    of_stream text, from_at timestamptz, to_at timestamptz, devices text[],
    hours timestamptz[]
) RETURNS TABLE (
    device_id text, day timestamptz, readings integer, first_kwh double precision,
    last_at timestamptz, last_kwh double precision, added_kwh double precision,
    skipped integer, prev_at timestamptz, joined_kwh double precision,
    joined_skipped smallint, sensor_sum double precision, soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT u.device_id, date_trunc('day', u.hour, 'UTC'),
       sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1],
       max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh,
                                           date_trunc('day', u.hour, 'UTC'), false)),
       sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped,
                                             date_trunc('day', u.hour, 'UTC')))::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1],
       (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1],
       sum(u.sensor_sum), min(u.soc_min), max(u.soc_max)
FROM (
    SELECT *
    FROM stream_rollups AS s
    WHERE s.stream = of_stream AND s.hour >= from_at AND s.hour < to_at
    UNION ALL
    SELECT s.*
    FROM (
        SELECT DISTINCT d.device_id, date_trunc('day', d.hour, 'UTC') AS day
        FROM unnest(devices, hours) AS d (device_id, hour)
    ) AS touched
    JOIN stream_rollups AS s
      ON s.stream = of_stream AND s.device_id = touched.device_id AND s.hour >= touched.day
     AND s.hour < touched.day + interval '1 day'
    WHERE touched.day + interval '1 day' <= rollups_rolled()
) AS u
GROUP BY u.device_id, date_trunc('day', u.hour, 'UTC')
$$;
