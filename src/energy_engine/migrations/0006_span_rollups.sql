-- Span rollups: for each whole hour of the last day rolled up, every device's 24 hours from
-- it, summed from its hour rollups with the meaning of a day rollup (readings, the energy
-- added between them, the first and last reading, the increment into the first from the one
-- before). The fleet ranking's default window is the last 24 whole hours, which is rarely a
-- UTC day: from hour rollups it reads 24 rows a device (480,000 for 10,000 vehicles and their
-- meters), from a span one. The refresher writes the span from hour h once h + 24 h is rolled
-- (rollups/store.py), and again whenever it redoes or repairs one of its hours; while a device
-- has a dirty hour, readers use its hour rollups instead, as with day rollups. Spans are kept
-- for one day of start hours: older windows are read from day and hour rollups as before.
CREATE TABLE meter_span_rollups (
    meter_id       text             NOT NULL,
    span_from      timestamptz      NOT NULL,
    readings       integer          NOT NULL,
    first_kwh      double precision NOT NULL,
    last_at        timestamptz      NOT NULL,
    last_kwh       double precision NOT NULL,
    added_kwh      double precision NOT NULL,
    skipped        integer          NOT NULL,
    prev_at        timestamptz,
    joined_kwh     double precision NOT NULL,
    joined_skipped smallint         NOT NULL,
    PRIMARY KEY (meter_id, span_from)
);
CREATE INDEX meter_span_rollups_span_from ON meter_span_rollups (span_from);

CREATE TABLE vehicle_span_rollups (
    vehicle_id       text             NOT NULL,
    span_from        timestamptz      NOT NULL,
    readings         integer          NOT NULL,
    first_kwh        double precision NOT NULL,
    last_at          timestamptz      NOT NULL,
    last_kwh         double precision NOT NULL,
    added_kwh        double precision NOT NULL,
    skipped          integer          NOT NULL,
    prev_at          timestamptz,
    joined_kwh       double precision NOT NULL,
    joined_skipped   smallint         NOT NULL,
    battery_temp_sum double precision NOT NULL,
    soc_min          real             NOT NULL,
    soc_max          real             NOT NULL,
    PRIMARY KEY (vehicle_id, span_from)
);
CREATE INDEX vehicle_span_rollups_span_from ON vehicle_span_rollups (span_from);

-- The start hours whose spans are written, for both streams (a device without readings in a
-- span has no row in it, so the rows alone cannot tell a span that is kept from one that is not).
CREATE TABLE rollup_span_starts (
    span_from timestamptz PRIMARY KEY
);

CREATE VIEW stream_span_rollups AS
SELECT 'meter'::text AS stream, meter_id AS device_id, span_from, readings, first_kwh, last_at,
       last_kwh, added_kwh, skipped, prev_at, joined_kwh, joined_skipped,
       NULL::float8 AS sensor_sum, NULL::real AS soc_min, NULL::real AS soc_max
FROM meter_span_rollups
UNION ALL
SELECT 'vehicle'::text, vehicle_id, span_from, readings, first_kwh, last_at, last_kwh,
       added_kwh, skipped, prev_at, joined_kwh, joined_skipped, battery_temp_sum, soc_min,
       soc_max
FROM vehicle_span_rollups;

-- The span rollups of the start hours [from_at, to_at) (rolling), or of the kept spans that
-- hold the device-hours (devices, hours) redone or repaired (redoing); the other pair NULL.
-- As rollup_days, with the span's start in place of the day's.
CREATE FUNCTION rollup_spans(
    of_stream text, from_at timestamptz, to_at timestamptz, devices text[],
    hours timestamptz[]
) RETURNS TABLE (
    device_id text, span_from timestamptz, readings integer, first_kwh double precision,
    last_at timestamptz, last_kwh double precision, added_kwh double precision,
    skipped integer, prev_at timestamptz, joined_kwh double precision,
    joined_skipped smallint, sensor_sum double precision, soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT u.device_id, u.span_from,
       sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1],
       max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh, u.span_from,
                                           false)),
       sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped,
                                             u.span_from))::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1],
       (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1],
       sum(u.sensor_sum), min(u.soc_min), max(u.soc_max)
FROM (
    SELECT k.span_from, s.*
    FROM generate_series(from_at, to_at - interval '1 hour', interval '1 hour') AS k (span_from)
    JOIN stream_rollups AS s
      ON s.stream = of_stream AND s.hour >= k.span_from
     AND s.hour < k.span_from + interval '1 day'
    UNION ALL
    SELECT t.span_from, s.*
    FROM (
        SELECT DISTINCT d.device_id, k.span_from
        FROM unnest(devices, hours) AS d (device_id, hour)
        JOIN rollup_span_starts AS k
          ON k.span_from > d.hour - interval '1 day' AND k.span_from <= d.hour
    ) AS t
    JOIN stream_rollups AS s
      ON s.stream = of_stream AND s.device_id = t.device_id AND s.hour >= t.span_from
     AND s.hour < t.span_from + interval '1 day'
) AS u
GROUP BY u.device_id, u.span_from
$$;

-- Where the fleet's rolled hours [hour_from, hour_to) go on after the span from hour_from:
-- a day after it when the window holds the day and the span is kept, else hour_from (no span).
-- Not inlined (its subquery), so evaluated once per scan it bounds.
CREATE FUNCTION rollup_span_to(hour_from timestamptz, hour_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN hour_to >= hour_from + interval '1 day'
             AND EXISTS (SELECT FROM rollup_span_starts AS k WHERE k.span_from = hour_from)
            THEN hour_from + interval '1 day'
            ELSE hour_from
       END
$$;

-- The fleet's totals per device, with the span rollups (the rest as in 0005_packed_history).
CREATE OR REPLACE FUNCTION stream_fleet_totals(
    of_stream text, window_from timestamptz, window_to timestamptz, hours_from timestamptz,
    hours_to timestamptz, raw_to timestamptz, max_kw double precision, interval_kwh boolean,
    baseline_from timestamptz
) RETURNS TABLE (
    device text, readings bigint, kwh double precision, skipped bigint,
    sensor_sum double precision
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH
-- A window of 24 whole hours or more starts with its first day's span rollups when they are
-- kept; the rest is whole UTC days from day rollups and the hours around them from hour
-- rollups.
settled AS (
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
        WHERE stream = of_stream AND span_from = hours_from
          AND rollup_span_to(hours_from, hours_to) > hours_from
        UNION ALL
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_rollups
        WHERE stream = of_stream AND hour >= rollup_span_to(hours_from, hours_to)
          AND hour < rollup_days_from(rollup_span_to(hours_from, hours_to), hours_to)
        UNION ALL
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_day_rollups
        WHERE stream = of_stream
          AND day >= rollup_days_from(rollup_span_to(hours_from, hours_to), hours_to)
          AND day < rollup_days_to(rollup_span_to(hours_from, hours_to), hours_to)
        UNION ALL
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_rollups
        WHERE stream = of_stream
          AND hour >= rollup_days_to(rollup_span_to(hours_from, hours_to), hours_to)
          AND hour < hours_to
    ) AS u
    GROUP BY u.device_id
),
dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = of_stream AND hour < hours_to
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
raw AS (
    SELECT r.device_id AS device, r.read_at, r.kwh, r.sensor::float8 AS sensor,
           window_from AS run
    FROM stream_history(of_stream, window_from, raw_to) AS r
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, hours_to
    FROM stream_history(of_stream, hours_to, window_to) AS r
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

