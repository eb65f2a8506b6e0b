-- Hourly rollups: analytics read about 24 rows an hour-aligned day instead of 1,440 readings.
--
-- A rollup holds one device-hour: its first and last reading, and the energy added *between
-- readings of that hour* (the increment into the hour's first reading depends on the reading
-- before it, possibly in another hour, so it is computed when a window is read). That makes a
-- rollup depend on its own hour's rows only, so late data corrects exactly the hour it lands in.
--
-- Exactness: hours before the `rolled` watermark have rollups, unless they are marked dirty
-- (a reading arrived for them after they were sealed); everything else is read raw. A window
-- is pieced together from the baseline reading, raw rows at its edges and in dirty hours, and
-- rollups of the clean whole hours in between; the increments between consecutive pieces are
-- computed with the same rules as between raw readings, so the answer equals the raw one.
--
-- Watermarks: writers mark (device, hour) dirty when they insert a reading older than `sealed`,
-- holding a share lock on the `sealed` row until they commit. The refresher moves `sealed`
-- forward first (the UPDATE waits for those writers), and only then aggregates the hours below
-- it, so every reading is either seen by that aggregation or marked dirty.
CREATE TABLE meter_rollups (
    meter_id      text             NOT NULL,
    hour          timestamptz      NOT NULL,
    readings      integer          NOT NULL,
    first_at      timestamptz      NOT NULL,
    last_at       timestamptz      NOT NULL,
    first_kwh     double precision NOT NULL,
    last_kwh      double precision NOT NULL,
    added_kwh     double precision NOT NULL,  -- plausible increments between this hour's readings
    skipped       integer          NOT NULL,  -- implausible ones
    voltage_sum   double precision NOT NULL,
    voltage_min   real             NOT NULL,
    voltage_max   real             NOT NULL,
    PRIMARY KEY (meter_id, hour)
);

CREATE TABLE vehicle_rollups (
    vehicle_id       text             NOT NULL,
    hour             timestamptz      NOT NULL,
    readings         integer          NOT NULL,
    first_at         timestamptz      NOT NULL,
    last_at          timestamptz      NOT NULL,
    first_kwh        double precision NOT NULL,
    last_kwh         double precision NOT NULL,
    added_kwh        double precision NOT NULL,
    skipped          integer          NOT NULL,
    battery_temp_sum double precision NOT NULL,
    battery_temp_min real             NOT NULL,
    battery_temp_max real             NOT NULL,
    soc_min          real             NOT NULL,
    soc_max          real             NOT NULL,
    PRIMARY KEY (vehicle_id, hour)
);

-- Device-hours whose rollup misses readings that arrived after the hour was sealed. The
-- generation lets the refresher delete only the marks it has seen.
CREATE SEQUENCE rollup_generation;
CREATE TABLE rollup_dirty (
    stream     text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    device_id  text        NOT NULL,
    hour       timestamptz NOT NULL,
    generation bigint      NOT NULL,
    PRIMARY KEY (stream, device_id, hour)
);

-- 'sealed': readings before it mark their hour dirty. 'rolled': hours before it have rollups.
-- Both start at -infinity: nothing is rolled until the refresher has run (analytics then read
-- raw rows, exactly as before rollups existed).
CREATE TABLE rollup_watermarks (
    name text        PRIMARY KEY CHECK (name IN ('sealed', 'rolled')),
    at   timestamptz NOT NULL
);
INSERT INTO rollup_watermarks (name, at) VALUES ('sealed', '-infinity'), ('rolled', '-infinity');

-- The energy rules the rollups were computed with; other settings mean a rebuild.
CREATE TABLE rollup_rules (
    only_row       boolean          PRIMARY KEY DEFAULT true CHECK (only_row),
    interval_kwh   boolean          NOT NULL,
    max_power_kw   double precision NOT NULL
);

-- Lets the refresher read one hour of history without scanning the whole day partition; a
-- BRIN index on an append-mostly time column costs a few pages per partition.
CREATE INDEX meter_readings_read_at ON meter_readings USING brin (read_at);
CREATE INDEX vehicle_readings_read_at ON vehicle_readings USING brin (read_at);

-- Energy of one vehicle over [window_from, window_to): readings, counted kWh, skipped
-- (implausible) increments and the sum of battery temperatures, from rollups where they are
-- complete and raw rows elsewhere. Equal to energy_engine.energy.window_energy.
CREATE FUNCTION vehicle_window_energy(
    vehicle text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint, battery_temp_sum double precision)
LANGUAGE sql STABLE AS $$
WITH bounds AS (
    SELECT hour_from,
           greatest(hour_from, least(date_trunc('hour', window_to), rolled)) AS hour_to
    FROM (SELECT CASE WHEN date_trunc('hour', window_from) = window_from THEN window_from
                      ELSE date_trunc('hour', window_from) + interval '1 hour' END AS hour_from,
                 (SELECT at FROM rollup_watermarks WHERE name = 'rolled') AS rolled) AS b
),
dirty AS (
    SELECT d.hour
    FROM rollup_dirty AS d, bounds AS b
    WHERE d.stream = 'vehicle' AND d.device_id = vehicle
      AND d.hour >= b.hour_from AND d.hour < b.hour_to
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_delivered_dc AS first_kwh,
            kwh_delivered_dc AS last_kwh, 0::float8 AS added, 0 AS skipped, 0 AS readings,
            0::float8 AS temp_sum, false AS counted
     FROM vehicle_readings
     WHERE vehicle_id = vehicle AND read_at < window_from AND read_at >= window_from - lookback
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, true
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at < (SELECT hour_from FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, true
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= (SELECT hour_to FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, true
    FROM dirty AS d
    JOIN vehicle_readings AS r
      ON r.vehicle_id = vehicle AND r.read_at >= d.hour AND r.read_at < d.hour + interval '1 hour'
    WHERE r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           u.battery_temp_sum, true
    FROM vehicle_rollups AS u
    WHERE u.vehicle_id = vehicle
      AND u.hour >= (SELECT hour_from FROM bounds) AND u.hour < (SELECT hour_to FROM bounds)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
),
steps AS (
    SELECT counted, added, skipped, readings, temp_sum,
           CASE WHEN interval_kwh THEN first_kwh
                WHEN first_kwh >= lag(last_kwh) OVER w THEN first_kwh - lag(last_kwh) OVER w
                WHEN lag(last_kwh) OVER w IS NOT NULL THEN first_kwh  -- a counter reset
           END AS joined,
           EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8 AS seconds
    FROM pieces
    WINDOW w AS (ORDER BY first_at)
)
SELECT coalesce(sum(readings), 0)::bigint,
       coalesce(sum(added), 0)
           + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                             OR joined * 3600 <= max_kw * seconds), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE joined * 3600 > max_kw * seconds))::bigint,
       sum(temp_sum)
FROM steps
WHERE counted
$$;

-- The same for one meter over [window_from, window_to): readings, counted kWh, skipped.
-- [outer_from, outer_to) encloses the window and is known when the query is planned (the
-- caller's whole window, while window_from/to are one assignment's part of it): repeated on
-- every scan, it lets PostgreSQL prune the partitions outside it.
CREATE FUNCTION meter_window_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean,
    outer_from timestamptz, outer_to timestamptz
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE sql STABLE AS $$
WITH bounds AS (
    SELECT hour_from,
           greatest(hour_from, least(date_trunc('hour', window_to), rolled)) AS hour_to
    FROM (SELECT CASE WHEN date_trunc('hour', window_from) = window_from THEN window_from
                      ELSE date_trunc('hour', window_from) + interval '1 hour' END AS hour_from,
                 (SELECT at FROM rollup_watermarks WHERE name = 'rolled') AS rolled) AS b
),
dirty AS (
    SELECT d.hour
    FROM rollup_dirty AS d, bounds AS b
    WHERE d.stream = 'meter' AND d.device_id = meter
      AND d.hour >= b.hour_from AND d.hour < b.hour_to
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_consumed_ac AS first_kwh,
            kwh_consumed_ac AS last_kwh, 0::float8 AS added, 0 AS skipped, 0 AS readings,
            false AS counted
     FROM meter_readings
     WHERE meter_id = meter AND read_at < window_from AND read_at >= window_from - lookback
       AND read_at >= outer_from - lookback AND read_at < outer_to
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_consumed_ac, r.kwh_consumed_ac, 0, 0, 1, true
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at < (SELECT hour_from FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_consumed_ac, r.kwh_consumed_ac, 0, 0, 1, true
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at >= (SELECT hour_to FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_consumed_ac, r.kwh_consumed_ac, 0, 0, 1, true
    FROM dirty AS d
    JOIN meter_readings AS r
      ON r.meter_id = meter AND r.read_at >= d.hour AND r.read_at < d.hour + interval '1 hour'
    WHERE r.read_at >= window_from AND r.read_at < window_to
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           true
    FROM meter_rollups AS u
    WHERE u.meter_id = meter
      AND u.hour >= (SELECT hour_from FROM bounds) AND u.hour < (SELECT hour_to FROM bounds)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
),
steps AS (
    SELECT counted, added, skipped, readings,
           CASE WHEN interval_kwh THEN first_kwh
                WHEN first_kwh >= lag(last_kwh) OVER w THEN first_kwh - lag(last_kwh) OVER w
                WHEN lag(last_kwh) OVER w IS NOT NULL THEN first_kwh  -- a counter reset
           END AS joined,
           EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8 AS seconds
    FROM pieces
    WINDOW w AS (ORDER BY first_at)
)
SELECT coalesce(sum(readings), 0)::bigint,
       coalesce(sum(added), 0)
           + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                             OR joined * 3600 <= max_kw * seconds), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE joined * 3600 > max_kw * seconds))::bigint
FROM steps
WHERE counted
$$;
