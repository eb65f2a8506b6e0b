-- Marks of each hour rollup: for the hour's k-th reading (in time order) its offset into the
-- hour in whole milliseconds, and the running totals up to and including it of the energy
-- added between the hour's readings, the implausible increments skipped, and (vehicles) the
-- battery temperature. Any millisecond of the hour then splits a rollup in two without its raw
-- readings: the k readings before the cut are found by binary search over the offsets
-- (width_bucket), their totals are the k-th marks and the rest is the hour's total minus them.
-- A fleet window starting or ending inside an hour (a day from half past) reads one rollup and
-- its marks per device at each edge instead of every raw reading of the two partial hours.
--
-- The increment into a reading from the one before it in the same hour is in the marks, so a
-- cut after the hour's first reading needs no predecessor lookup: that reading is at most an
-- hour before the cut. About 12 bytes a reading for meters and 16 for vehicles, in tables of
-- their own: in the rollup rows they made every scan of hour rollups read eight times the
-- pages. Written by the statement that writes the rollup (rollups/queries.sql), deleted with it
-- (delete_expired_rollups below, and `reset`). `cum_skipped` is NULL for an hour that skipped
-- nothing (most hours). Keyed by hour first: the fleet reads one hour of every device.
CREATE TABLE meter_rollup_marks (
    hour        timestamptz        NOT NULL,
    meter_id    text               NOT NULL,
    reading_ms  integer[]          NOT NULL,
    cum_added   double precision[] NOT NULL,
    cum_skipped integer[],
    PRIMARY KEY (hour, meter_id)
);

CREATE TABLE vehicle_rollup_marks (
    hour             timestamptz        NOT NULL,
    vehicle_id       text               NOT NULL,
    reading_ms       integer[]          NOT NULL,
    cum_added        double precision[] NOT NULL,
    cum_skipped      integer[],
    cum_battery_temp real[]             NOT NULL,
    PRIMARY KEY (hour, vehicle_id)
);

CREATE VIEW stream_rollup_marks AS
SELECT 'meter'::text AS stream, meter_id AS device_id, hour, reading_ms, cum_added,
       cum_skipped, NULL::real[] AS cum_sensor
FROM meter_rollup_marks
UNION ALL
SELECT 'vehicle'::text, vehicle_id, hour, reading_ms, cum_added, cum_skipped, cum_battery_temp
FROM vehicle_rollup_marks;

-- 'marked': hour rollups from this hour on have marks. Those written before this migration do
-- not; it starts at the hour rolling continues from, and a rebuild (`reset`) lowers it to
-- -infinity with the other watermarks.
ALTER TABLE rollup_watermarks DROP CONSTRAINT rollup_watermarks_name_check;
ALTER TABLE rollup_watermarks ADD CONSTRAINT rollup_watermarks_name_check
    CHECK (name IN ('sealed', 'rolled', 'marked'));
INSERT INTO rollup_watermarks (name, at)
SELECT 'marked', at FROM rollup_watermarks WHERE name = 'rolled';

-- delete_expired_rollups (0003_maintenance.sql) deletes an hour rollup's marks with it; the
-- count returned is still of rollups.
CREATE OR REPLACE FUNCTION delete_expired_rollups(
    rollups regclass, time_column text, span interval, cutoff timestamptz, batch integer
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
BEGIN
    IF rollups IN ('meter_rollups'::regclass, 'vehicle_rollups'::regclass) THEN
        EXECUTE format('WITH gone AS ('
                       '    DELETE FROM %1$s WHERE ctid = ANY (ARRAY('
                       '        SELECT ctid FROM %1$s WHERE hour <= $1 - $2 LIMIT $3))'
                       '    RETURNING %2$I AS device_id, hour'
                       '), marks AS ('
                       '    DELETE FROM %3$s AS m USING gone'
                       '    WHERE m.hour = gone.hour AND m.%2$I = gone.device_id'
                       ') SELECT count(*) FROM gone',
                       rollups,
                       CASE WHEN rollups = 'meter_rollups'::regclass THEN 'meter_id'
                            ELSE 'vehicle_id' END,
                       CASE WHEN rollups = 'meter_rollups'::regclass THEN 'meter_rollup_marks'
                            ELSE 'vehicle_rollup_marks' END)
        INTO gone
        USING cutoff, span, batch;
        RETURN gone;
    END IF;
    IF rollups NOT IN ('meter_day_rollups'::regclass, 'vehicle_day_rollups'::regclass) THEN
        RAISE EXCEPTION '% is not a rollup table', rollups;
    END IF;
    EXECUTE format('DELETE FROM %s WHERE ctid = ANY (ARRAY('
                   'SELECT ctid FROM %s WHERE %I <= $1 - $2 LIMIT $3))',
                   rollups, rollups, time_column)
    USING cutoff, span, batch;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END;
$$;

-- rollup_hours (0005_packed_history.sql) with the marks: the running totals come from the
-- same ordered window as the increments, and each hour's are aggregated in time order.
DROP FUNCTION rollup_hours(text, boolean, double precision, timestamptz, timestamptz, text[],
                           text[], timestamptz[]);
CREATE FUNCTION rollup_hours(
    of_stream text, interval_kwh boolean, max_kw double precision,
    from_at timestamptz, to_at timestamptz, only_devices text[],
    dirty_devices text[], dirty_hours timestamptz[]
) RETURNS TABLE (
    device_id text, hour timestamptz, readings bigint, first_at timestamptz,
    last_at timestamptz, first_kwh double precision, last_kwh double precision,
    added_kwh double precision, skipped bigint, sensor_sum real, sensor_min real,
    sensor_max real, soc_min real, soc_max real, prev_at timestamptz,
    prev_kwh double precision, joined_kwh double precision, joined_skipped smallint,
    reading_ms integer[], cum_added double precision[], cum_skipped integer[],
    cum_sensor real[]
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT h.device_id, h.hour, h.readings, h.first_at, h.last_at, h.first_kwh, h.last_kwh,
       h.added_kwh, h.skipped, h.sensor_sum, h.sensor_min, h.sensor_max, h.soc_min, h.soc_max,
       p.read_at, p.kwh,
       coalesce(rollup_joined_kwh(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                  interval_kwh), 0),
       coalesce(rollup_joined_skipped(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                      interval_kwh), 0::smallint),
       h.reading_ms, h.cum_added, CASE WHEN h.skipped > 0 THEN h.cum_skipped END, h.cum_sensor
FROM (
    SELECT marks.device_id, marks.hour, count(*) AS readings, min(marks.read_at) AS first_at,
           max(marks.read_at) AS last_at,
           (array_agg(marks.kwh ORDER BY marks.read_at))[1] AS first_kwh,
           (array_agg(marks.kwh ORDER BY marks.read_at DESC))[1] AS last_kwh,
           coalesce(sum(marks.added) FILTER (WHERE marks.plausible), 0) AS added_kwh,
           count(*) FILTER (WHERE NOT marks.plausible) AS skipped,
           sum(marks.sensor) AS sensor_sum, min(marks.sensor) AS sensor_min,
           max(marks.sensor) AS sensor_max, min(marks.soc) AS soc_min, max(marks.soc) AS soc_max,
           array_agg(marks.ms ORDER BY marks.read_at) AS reading_ms,
           array_agg(marks.cum_added ORDER BY marks.read_at) AS cum_added,
           array_agg(marks.cum_skipped ORDER BY marks.read_at) AS cum_skipped,
           array_agg(marks.cum_sensor ORDER BY marks.read_at) AS cum_sensor
    FROM (
        SELECT steps.*,
               floor(EXTRACT(epoch FROM steps.read_at - steps.hour) * 1000)::integer AS ms,
               sum(CASE WHEN steps.plausible THEN steps.added ELSE 0 END) OVER w AS cum_added,
               (sum(CASE WHEN NOT steps.plausible THEN 1 ELSE 0 END) OVER w)::integer AS cum_skipped,
               sum(steps.sensor) OVER w AS cum_sensor
        FROM (
            SELECT pairs.*, energy_plausible(pairs.added, pairs.seconds, max_kw) AS plausible
            FROM (
                SELECT r.device_id, date_trunc('hour', r.read_at) AS hour, r.read_at, r.kwh,
                       r.sensor, r.soc,
                       energy_increment(r.kwh, lag(r.kwh) OVER w, interval_kwh) AS added,
                       EXTRACT(epoch FROM r.read_at - lag(r.read_at) OVER w)::float8 AS seconds
                FROM (
                    SELECT *
                    FROM stream_history(of_stream, from_at, to_at) AS s
                    WHERE only_devices IS NULL
                    UNION ALL
                    SELECT *
                    FROM stream_history(of_stream, from_at, to_at) AS s
                    WHERE s.device_id = ANY(only_devices)
                    UNION ALL
                    SELECT s.*
                    FROM unnest(dirty_devices, dirty_hours) AS d (device_id, hour)
                    CROSS JOIN LATERAL stream_device_history(of_stream, d.device_id, d.hour,
                                                             d.hour + interval '1 hour') AS s
                ) AS r
                WINDOW w AS (PARTITION BY r.device_id, date_trunc('hour', r.read_at)
                             ORDER BY r.read_at)
            ) AS pairs
        ) AS steps
        WINDOW w AS (PARTITION BY steps.device_id, steps.hour ORDER BY steps.read_at
                     ROWS UNBOUNDED PRECEDING)
    ) AS marks
    GROUP BY marks.device_id, marks.hour
) AS h
LEFT JOIN LATERAL stream_reading_before(of_stream, h.device_id, h.hour, '-infinity',
                                         '-infinity', 'infinity') AS p ON true
$$;

-- The offset of a cut into its hour in whole milliseconds (fleet.plan cuts only on whole
-- milliseconds), to search a rollup's `reading_ms` with.
CREATE FUNCTION hour_offset_ms(cut timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT floor(EXTRACT(epoch FROM cut - date_trunc('hour', cut, 'UTC')) * 1000)::integer
$$;

-- The totals per device of the devices' rollups over the window, without the raw pieces
-- and dirty devices `stream_fleet_totals` adds: all of them when the window has no raw
-- piece and no device a dirty hour before its end (analytics/fleet.py then runs the fleet
-- statement on this alone, planned in a fraction of the time). Same arguments.
-- A window of 24 whole hours or more starts with its first day's span rollups when they are
-- kept; the rest is whole UTC days from day rollups and the hours around them from hour
-- rollups, from `rollups_from` (the window's first whole hour, or with marks the hour it starts
-- in) to `hours_to`, and with marks the partial first and last hours' corrections.
CREATE FUNCTION stream_fleet_settled(
    of_stream text, window_from timestamptz, window_to timestamptz, hours_from timestamptz,
    hours_to timestamptz, raw_to timestamptz, max_kw double precision, interval_kwh boolean,
    baseline_from timestamptz, rollups_from timestamptz, marked_start boolean,
    marked_end boolean
) RETURNS TABLE (
    device text, readings bigint, kwh double precision, skipped bigint,
    sensor_sum double precision
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT u.device_id AS device, sum(u.readings) AS readings,
       sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh,
                                           baseline_from, interval_kwh)) AS kwh,
       sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped, baseline_from))
           AS skipped,
       sum(u.sensor_sum) AS sensor_sum
FROM (
    SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
           joined_skipped, sensor_sum
    FROM stream_span_rollups
    WHERE stream = of_stream AND span_from = rollups_from
      AND rollup_span_to(rollups_from, hours_to) > rollups_from
    UNION ALL
    SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
           joined_skipped, sensor_sum
    FROM stream_rollups
    WHERE stream = of_stream AND hour >= rollup_span_to(rollups_from, hours_to)
      AND hour < rollup_days_from(rollup_span_to(rollups_from, hours_to), hours_to)
    UNION ALL
    SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
           joined_skipped, sensor_sum
    FROM stream_day_rollups
    WHERE stream = of_stream
      AND day >= rollup_days_from(rollup_span_to(rollups_from, hours_to), hours_to)
      AND day < rollup_days_to(rollup_span_to(rollups_from, hours_to), hours_to)
    UNION ALL
    SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
           joined_skipped, sensor_sum
    FROM stream_rollups
    WHERE stream = of_stream
      AND hour >= rollup_days_to(rollup_span_to(rollups_from, hours_to), hours_to)
      AND hour < hours_to
    UNION ALL
    -- With marks, the rollups above start at the hour the window starts in, and its
    -- readings before the cut are taken away again: k readings, the increments into all
    -- but the first of them (marks) and the increment into the first (the same join the
    -- hour, day or span rollup it begins counted). Nothing when none is before the cut.
    SELECT device_id, -k, -cum_added[k], prev_at, -joined_kwh, -first_kwh,
           -coalesce(cum_skipped[k], 0), -joined_skipped, -cum_sensor[k]
    FROM (
        SELECT u.*, m.cum_added, m.cum_skipped, m.cum_sensor,
               width_bucket(hour_offset_ms(window_from) - 1, m.reading_ms) AS k
        FROM stream_rollups AS u
        JOIN stream_rollup_marks AS m
          ON m.stream = of_stream AND m.hour = u.hour AND m.device_id = u.device_id
        WHERE marked_start AND u.stream = of_stream AND u.hour = rollups_from
          AND m.hour = rollups_from
    ) AS edge
    WHERE k > 0
    UNION ALL
    -- The partial last hour [hours_to, window_to): its rollup's readings before the cut.
    SELECT device_id, k, cum_added[k], prev_at, joined_kwh, first_kwh,
           coalesce(cum_skipped[k], 0), joined_skipped, cum_sensor[k]
    FROM (
        SELECT u.*, m.cum_added, m.cum_skipped, m.cum_sensor,
               width_bucket(hour_offset_ms(window_to) - 1, m.reading_ms) AS k
        FROM stream_rollups AS u
        JOIN stream_rollup_marks AS m
          ON m.stream = of_stream AND m.hour = u.hour AND m.device_id = u.device_id
        WHERE marked_end AND u.stream = of_stream AND u.hour = hours_to
          AND m.hour = hours_to
    ) AS edge
    WHERE k > 0
) AS u
GROUP BY u.device_id
HAVING sum(u.readings) > 0  -- a device whose only readings are before the cut
$$;

-- stream_fleet_totals (0006_span_rollups.sql) with edges from the marks: `marked_start` when
-- the window starts inside a marked, rolled hour whose end it reaches, `marked_end` when it
-- ends inside one after its first whole hour (analytics/fleet.py decides). Its rollups, for
-- the devices without dirty hours, are stream_fleet_settled's (above).
DROP FUNCTION stream_fleet_totals(text, timestamptz, timestamptz, timestamptz, timestamptz,
                                  timestamptz, double precision, boolean, timestamptz);
CREATE FUNCTION stream_fleet_totals(
    of_stream text, window_from timestamptz, window_to timestamptz, hours_from timestamptz,
    hours_to timestamptz, raw_to timestamptz, max_kw double precision, interval_kwh boolean,
    baseline_from timestamptz, rollups_from timestamptz, marked_start boolean,
    marked_end boolean
) RETURNS TABLE (
    device text, readings bigint, kwh double precision, skipped bigint,
    sensor_sum double precision
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH
settled AS (
    SELECT *
    FROM stream_fleet_settled(of_stream, window_from, window_to, hours_from, hours_to, raw_to,
                              max_kw, interval_kwh, baseline_from, rollups_from,
                              marked_start, marked_end)
),
-- The devices with dirty hours before the window's end (its last partial hour included when
-- that comes from marks): their pieces are read below, none of their rollups in `settled`.
dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = of_stream
      AND hour < CASE WHEN marked_end THEN hours_to + interval '1 hour' ELSE hours_to END
),
-- The next rolled hour after a dirty one: its stored predecessor may be stale.
suspect AS MATERIALIZED (
    SELECT DISTINCT d.device, n.hour
    FROM dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM stream_rollups AS u
        WHERE u.stream = of_stream AND u.device_id = d.device AND u.hour > d.hour
    ) AS n
    WHERE n.hour >= hours_from AND n.hour < hours_to
      AND NOT EXISTS (SELECT FROM dirty AS o WHERE o.device = d.device AND o.hour = n.hour)
),
unsettled_pieces AS (
    SELECT u.device_id AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, u.sensor_sum
    FROM stream_rollups AS u
    WHERE u.stream = of_stream AND u.hour >= hours_from AND u.hour < hours_to
      AND u.device_id IN (SELECT device FROM dirty)
      AND NOT EXISTS (SELECT FROM dirty AS d WHERE d.device = u.device_id AND d.hour = u.hour)
      AND NOT EXISTS (SELECT FROM suspect AS s
                      WHERE s.device = u.device_id AND s.hour = u.hour)
    UNION ALL
    SELECT u.device_id, u.first_at, u.first_kwh, p.read_at, p.kwh, u.added_kwh, u.skipped,
           u.readings, u.sensor_sum
    FROM suspect AS s
    JOIN stream_rollups AS u
      ON u.stream = of_stream AND u.device_id = s.device AND u.hour = s.hour
    LEFT JOIN LATERAL stream_reading_before(of_stream, u.device_id, u.hour, baseline_from,
                                            baseline_from, window_to) AS p ON true
),
-- Raw readings of the partial hours at the window's edges: every device's, or with marks
-- only those of the devices with dirty hours (the rest come from the marks in `settled`).
raw AS (
    SELECT r.device_id AS device, r.read_at, r.kwh, r.sensor::float8 AS sensor,
           window_from AS run
    FROM stream_history(of_stream, window_from, raw_to) AS r
    WHERE NOT marked_start
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, window_from
    FROM (SELECT DISTINCT device FROM dirty) AS d
    CROSS JOIN LATERAL stream_device_history(of_stream, d.device, window_from, raw_to) AS r
    WHERE marked_start
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, hours_to
    FROM stream_history(of_stream, hours_to, window_to) AS r
    WHERE NOT marked_end
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, hours_to
    FROM (SELECT DISTINCT device FROM dirty) AS d
    CROSS JOIN LATERAL stream_device_history(of_stream, d.device, hours_to, window_to) AS r
    WHERE marked_end
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, d.hour
    FROM dirty AS d
    CROSS JOIN LATERAL stream_device_history(of_stream, d.device, d.hour,
                                             d.hour + interval '1 hour') AS r
    WHERE d.hour >= hours_from AND r.read_at >= hours_from AND r.read_at < hours_to
),
raw_lags AS (
    SELECT device, read_at, kwh, sensor, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, sensor_sum
    FROM unsettled_pieces
    UNION ALL
    SELECT device, read_at, kwh, prev_at, prev_kwh, 0, 0, 1, sensor
    FROM raw_lags
    WHERE prev_at IS NOT NULL
    UNION ALL
    SELECT l.device, l.read_at, l.kwh, p.read_at, p.kwh, 0, 0, 1, l.sensor
    FROM raw_lags AS l
    LEFT JOIN LATERAL stream_reading_before(of_stream, l.device, l.run, baseline_from,
                                            baseline_from, window_to) AS p ON true
    WHERE l.prev_at IS NULL
)
SELECT device, sum(readings)::bigint, sum(kwh), sum(skipped)::bigint, sum(sensor_sum)
FROM (
    -- Devices with dirty hours are left out after summing: cheaper than testing each rollup
    -- with an anti join.
    SELECT * FROM settled
    WHERE device NOT IN (SELECT device FROM dirty)
    UNION ALL
    SELECT device, sum(readings) AS readings,
           sum(added + window_joined_kwh(
                   prev_at,
                   rollup_joined_kwh(first_at, first_kwh, prev_at, prev_kwh, max_kw,
                                     interval_kwh),
                   first_kwh, baseline_from, interval_kwh)) AS kwh,
           sum(skipped + window_joined_skipped(
                   prev_at,
                   rollup_joined_skipped(first_at, first_kwh, prev_at, prev_kwh, max_kw,
                                         interval_kwh),
                   baseline_from)) AS skipped,
           sum(sensor_sum) AS sensor_sum
    FROM pieces
    GROUP BY device
) AS parts
GROUP BY device
$$;

