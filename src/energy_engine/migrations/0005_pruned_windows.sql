-- Faster windows (issue 4's performance targets). EXPLAIN ANALYZE and py-spy on 10,000
-- vehicles × 24 h and 100 vehicles × 30 days showed where the time went; each change below
-- keeps every answer exactly what raw history gives (the property tests in
-- tests/integration/test_rollups.py and test_fleet_analytics.py).
--
-- * Stored joined step. The increment from the reading before a rollup's hour (`prev_at`) into
--   its first reading depends only on the two readings and the energy rules, except that a
--   window counts it only when that predecessor is inside the window or the baseline lookback.
--   The rollup stores it (`joined_kwh`, `joined_skipped`), so a settled device's rollups are
--   summed without ordering them: the window functions sum them into one piece instead of
--   sorting 720 rollups of 30 days through a window function, and the fleet ranking sums a
--   comparison per rollup.
-- * Day rollups: a device's complete UTC day, with the same meaning as an hour rollup. A 30-day
--   window reads 30 of them and at most 46 hour rollups; a calendar day of the fleet 10,000
--   instead of 240,000.
-- * Partition pruning when a statement starts. The request pool runs generic plans
--   (db.create_pool), which prune history partitions at executor start-up by what they know
--   then: parameters and stable function calls, not values of a subquery or CTE. The window
--   functions bounded their scans of unrolled and dirty hours by CTE values, so each of those
--   scans started on every day partition of the window (31 for 30 days) to read an hour or
--   two: 5 of the 6.3 ms of a 30-day report. Those hours are now read through small PL/pgSQL
--   functions whose plans take the bounds as parameters (`*_readings_between`); an inlined
--   function bound prunes as well, but is evaluated once per partition (40 watermark lookups a
--   scan). Meters assigned for part of a window go through `meter_segment_energy` likewise.

-- The increment from `prev_kwh` to `kwh` by the rules of energy_engine.energy.increment.
CREATE FUNCTION energy_increment(
    kwh double precision, prev_kwh double precision, interval_kwh boolean
)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN interval_kwh THEN kwh
            WHEN kwh >= prev_kwh THEN kwh - prev_kwh
            ELSE kwh  -- a counter reset
       END
$$;

-- The increment from the reading before a rollup's hour into its first reading, counted
-- (when plausible) and skipped (when not); none without a predecessor.
CREATE FUNCTION rollup_joined_kwh(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN energy_increment(first_kwh, prev_kwh, interval_kwh) * 3600
                 <= max_kw * date_part('epoch', first_at - prev_at)
            THEN energy_increment(first_kwh, prev_kwh, interval_kwh)
            ELSE 0
       END
$$;

CREATE FUNCTION rollup_joined_skipped(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN energy_increment(first_kwh, prev_kwh, interval_kwh) * 3600
                 > max_kw * date_part('epoch', first_at - prev_at)
            THEN 1
            ELSE 0
       END::smallint
$$;

ALTER TABLE meter_rollups
    ADD COLUMN joined_kwh double precision NOT NULL DEFAULT 0,
    ADD COLUMN joined_skipped smallint NOT NULL DEFAULT 0;
ALTER TABLE vehicle_rollups
    ADD COLUMN joined_kwh double precision NOT NULL DEFAULT 0,
    ADD COLUMN joined_skipped smallint NOT NULL DEFAULT 0;

UPDATE meter_rollups AS u
SET joined_kwh = rollup_joined_kwh(u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
                                   r.max_power_kw, r.interval_kwh),
    joined_skipped = rollup_joined_skipped(u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
                                           r.max_power_kw, r.interval_kwh)
FROM rollup_rules AS r
WHERE u.prev_at IS NOT NULL;

UPDATE vehicle_rollups AS u
SET joined_kwh = rollup_joined_kwh(u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
                                   r.max_power_kw, r.interval_kwh),
    joined_skipped = rollup_joined_skipped(u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
                                           r.max_power_kw, r.interval_kwh)
FROM rollup_rules AS r
WHERE u.prev_at IS NOT NULL;

-- Day rollups: a device's complete UTC day summed from its hour rollups, with the same
-- meaning (readings, the energy added between the day's readings, its first reading, last
-- reading and the increment into its first reading from the one before). A 30-day window reads
-- 30 of them and at most 46 hour rollups at its ends instead of 720 hour rollups; the fleet
-- ranking of a calendar day reads 10,000 instead of 240,000. The refresher writes a day when
-- its last hour is rolled, and again whenever it redoes one of its hours or repairs the
-- predecessor of one; while a device has a dirty hour, readers use its hour rollups instead.
CREATE TABLE meter_day_rollups (
    meter_id       text             NOT NULL,
    day            timestamptz      NOT NULL,
    readings       integer          NOT NULL,
    first_kwh      double precision NOT NULL,
    last_at        timestamptz      NOT NULL,
    last_kwh       double precision NOT NULL,
    added_kwh      double precision NOT NULL,
    skipped        integer          NOT NULL,
    prev_at        timestamptz,
    joined_kwh     double precision NOT NULL,
    joined_skipped smallint         NOT NULL,
    PRIMARY KEY (meter_id, day)
);
CREATE INDEX meter_day_rollups_day ON meter_day_rollups (day);

CREATE TABLE vehicle_day_rollups (
    vehicle_id       text             NOT NULL,
    day              timestamptz      NOT NULL,
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
    PRIMARY KEY (vehicle_id, day)
);
CREATE INDEX vehicle_day_rollups_day ON vehicle_day_rollups (day);

-- The complete days rolled up so far (rollups/store.py keeps them from now on; the same sums).
INSERT INTO meter_day_rollups
SELECT u.meter_id, date_trunc('day', u.hour, 'UTC'), sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1], max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                              THEN u.joined_kwh ELSE 0 END),
       sum(u.skipped + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                            THEN u.joined_skipped ELSE 0 END)::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1], (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1]
FROM meter_rollups AS u
WHERE u.hour < (SELECT date_trunc('day', at, 'UTC') FROM rollup_watermarks WHERE name = 'rolled')
GROUP BY u.meter_id, date_trunc('day', u.hour, 'UTC');

INSERT INTO vehicle_day_rollups
SELECT u.vehicle_id, date_trunc('day', u.hour, 'UTC'), sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1], max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                              THEN u.joined_kwh ELSE 0 END),
       sum(u.skipped + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                            THEN u.joined_skipped ELSE 0 END)::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1], (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1],
       sum(u.battery_temp_sum), min(u.soc_min), max(u.soc_max)
FROM vehicle_rollups AS u
WHERE u.hour < (SELECT date_trunc('day', at, 'UTC') FROM rollup_watermarks WHERE name = 'rolled')
GROUP BY u.vehicle_id, date_trunc('day', u.hour, 'UTC');

-- The whole UTC days of the rolled hours [hour_from, hour_to): [rollup_days_from,
-- rollup_days_to); the hours before and after them are read from hour rollups.
CREATE FUNCTION rollup_days_from(hour_from timestamptz, hour_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT least(date_trunc('day', hour_from - interval '1 microsecond', 'UTC') + interval '1 day',
             hour_to)
$$;

CREATE FUNCTION rollup_days_to(hour_from timestamptz, hour_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT greatest(rollup_days_from(hour_from, hour_to), date_trunc('day', hour_to, 'UTC'))
$$;

-- The `rolled` watermark. A function call, unlike a subquery, can bound a partition scan when
-- the statement starts. PL/pgSQL keeps its query planned for the session.
CREATE FUNCTION rollups_rolled() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT at FROM rollup_watermarks WHERE name = 'rolled');
END
$$;

-- The first whole hour of a window starting at `window_from`.
CREATE FUNCTION window_hour_from(window_from timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN date_trunc('hour', window_from) = window_from THEN window_from
            ELSE date_trunc('hour', window_from) + interval '1 hour'
       END
$$;

-- The end of the window's whole hours that have rollups: [window_hour_from, window_hour_to).
CREATE FUNCTION window_hour_to(window_from timestamptz, window_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT greatest(window_hour_from(window_from),
                least(date_trunc('hour', window_to), rollups_rolled()))
$$;

-- One device's readings in [from_at, to_at). The window functions read the hours not rolled
-- up yet and the dirty hours through these: the bounds depend on the `rolled` watermark or on
-- a dirty hour, and inlined into a statement such a bound either cannot prune partitions when
-- the statement starts (a subquery's value) or is evaluated once per partition when it does
-- (a function call: about 40 watermark lookups per scan, 1.6 ms of a 24 h report). Here the
-- bounds are parameters of a plan PL/pgSQL keeps for the session, pruned when it starts.
CREATE FUNCTION vehicle_readings_between(vehicle text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (read_at timestamptz, kwh double precision, battery_temp real, soc real)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT r.read_at, r.kwh_delivered_dc, r.battery_temp, r.soc
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= from_at AND r.read_at < to_at;
END
$$;

CREATE FUNCTION meter_readings_between(meter text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (read_at timestamptz, kwh double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT r.read_at, r.kwh_consumed_ac
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at >= from_at AND r.read_at < to_at;
END
$$;

-- As in 0004, with every raw-row scan bounded by the functions above. The pieces and the
-- arithmetic are unchanged.
CREATE OR REPLACE FUNCTION vehicle_window_energy(
    vehicle text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (
    readings bigint, kwh double precision, skipped bigint, battery_temp_sum double precision,
    soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH bounds AS MATERIALIZED (  -- once per call (OFFSET 0: the watermark read once)
    SELECT hf, ht, rollup_days_from(hf, ht) AS df, rollup_days_to(hf, ht) AS dt,
           (SELECT array_agg(d.hour ORDER BY d.hour)  -- NULL: no dirty hour
            FROM rollup_dirty AS d
            WHERE d.stream = 'vehicle' AND d.device_id = vehicle AND d.hour < b.ht) AS dirty_before
    FROM (SELECT window_hour_from(window_from) AS hf,
                 window_hour_to(window_from, window_to) AS ht
          OFFSET 0) AS b
),
dirty AS (
    SELECT hour
    FROM unnest((SELECT dirty_before FROM bounds)) AS hour
    WHERE hour >= (SELECT hf FROM bounds)
),
-- Whether every rollup of the window can be trusted with its stored predecessor: the device
-- has no dirty hour before the rolled part of the window ends (a late reading may precede a
-- rollup's first reading more closely than its stored predecessor until the refresher redoes
-- the hour). Nearly always true; otherwise each rollup is a piece of its own.
settled AS (
    SELECT (SELECT dirty_before FROM bounds) IS NULL AS yes
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_delivered_dc AS first_kwh,
            kwh_delivered_dc AS last_kwh, 0::float8 AS added, 0::bigint AS skipped,
            0::bigint AS readings, 0::float8 AS temp_sum, NULL::real AS soc_min,
            NULL::real AS soc_max, false AS counted, false AS joined_in
     FROM vehicle_readings
     WHERE vehicle_id = vehicle AND read_at < window_from AND read_at >= window_from - lookback
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    -- the partial first hour
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, r.soc, r.soc, true, false
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= window_from
      AND r.read_at < least(window_hour_from(window_from), window_to)
    UNION ALL
    -- the hours not rolled up (yet), and the partial last hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.battery_temp, r.soc, r.soc, true, false
    FROM vehicle_readings_between(vehicle, greatest((SELECT ht FROM bounds), window_from),
                                  window_to) AS r
    UNION ALL
    -- the rolled hours, when settled: one piece summing every rollup with the increment into
    -- its first reading from its stored predecessor (counted when within the window or the
    -- baseline lookback, like a lag would), ordered by its start, ending with the last one
    SELECT window_hour_from(window_from), l.last_at, NULL, l.last_kwh, a.added, a.skipped,
           a.readings, a.temp_sum, a.soc_min, a.soc_max, true, true
    FROM (
        SELECT sum(u.added_kwh + CASE WHEN u.prev_at >= window_from - lookback THEN u.joined_kwh
                                      WHEN interval_kwh THEN u.first_kwh
                                      ELSE 0
                                 END) AS added,
               sum(u.skipped + CASE WHEN u.prev_at >= window_from - lookback
                                    THEN u.joined_skipped ELSE 0 END) AS skipped,
               sum(u.readings) AS readings, sum(u.battery_temp_sum) AS temp_sum,
               min(u.soc_min) AS soc_min, max(u.soc_max) AS soc_max
        FROM (  -- whole days from day rollups, the hours around them from hour rollups
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_rollups
            WHERE vehicle_id = vehicle AND hour >= (SELECT hf FROM bounds)
              AND hour < (SELECT df FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_day_rollups
            WHERE vehicle_id = vehicle
              AND day >= (SELECT df FROM bounds)
              AND day < (SELECT dt FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_rollups
            WHERE vehicle_id = vehicle
              AND hour >= (SELECT dt FROM bounds)
              AND hour < (SELECT ht FROM bounds)
        ) AS u
        WHERE (SELECT yes FROM settled)
        HAVING count(*) > 0
    ) AS a,
    (   -- the last rolled reading, for the next piece to join to
        SELECT last_at, last_kwh
        FROM vehicle_rollups
        WHERE vehicle_id = vehicle AND hour < (SELECT ht FROM bounds)
        ORDER BY hour DESC
        LIMIT 1
    ) AS l
    UNION ALL
    -- otherwise: every clean rollup, and the raw rows of the dirty hours
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           u.battery_temp_sum, u.soc_min, u.soc_max, true, false
    FROM vehicle_rollups AS u
    WHERE u.vehicle_id = vehicle
      AND u.hour >= (SELECT hf FROM bounds)
      AND u.hour < (SELECT ht FROM bounds)
      AND NOT (SELECT yes FROM settled)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.battery_temp, r.soc, r.soc, true, false
    FROM dirty AS d
    CROSS JOIN LATERAL vehicle_readings_between(
        vehicle, greatest(d.hour, window_from), least(d.hour + interval '1 hour', window_to)) AS r
),
steps AS (
    SELECT counted, added, skipped, readings, temp_sum, soc_min, soc_max,
           CASE WHEN joined_in THEN NULL  -- the settled rollups' piece joined itself
                WHEN interval_kwh THEN first_kwh
                WHEN first_kwh >= lag(last_kwh) OVER w THEN first_kwh - lag(last_kwh) OVER w
                WHEN lag(last_kwh) OVER w IS NOT NULL THEN first_kwh  -- a counter reset
           END AS joined,
           CASE WHEN NOT joined_in
                THEN EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8
           END AS seconds
    FROM pieces
    WINDOW w AS (ORDER BY first_at)
)
SELECT coalesce(sum(readings), 0)::bigint,
       coalesce(sum(added), 0)
           + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                             OR joined * 3600 <= max_kw * seconds), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE joined * 3600 > max_kw * seconds))::bigint,
       sum(temp_sum),
       min(soc_min),
       max(soc_max)
FROM steps
WHERE counted
$$;

CREATE OR REPLACE FUNCTION meter_window_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean,
    outer_from timestamptz, outer_to timestamptz
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH bounds AS MATERIALIZED (  -- once per call (OFFSET 0: the watermark read once)
    SELECT hf, ht, rollup_days_from(hf, ht) AS df, rollup_days_to(hf, ht) AS dt,
           (SELECT array_agg(d.hour ORDER BY d.hour)  -- NULL: no dirty hour
            FROM rollup_dirty AS d
            WHERE d.stream = 'meter' AND d.device_id = meter AND d.hour < b.ht) AS dirty_before
    FROM (SELECT window_hour_from(window_from) AS hf,
                 window_hour_to(window_from, window_to) AS ht
          OFFSET 0) AS b
),
dirty AS (
    SELECT hour
    FROM unnest((SELECT dirty_before FROM bounds)) AS hour
    WHERE hour >= (SELECT hf FROM bounds)
),
settled AS (  -- as in vehicle_window_energy
    SELECT (SELECT dirty_before FROM bounds) IS NULL AS yes
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_consumed_ac AS first_kwh,
            kwh_consumed_ac AS last_kwh, 0::float8 AS added, 0::bigint AS skipped,
            0::bigint AS readings, false AS counted, false AS joined_in
     FROM meter_readings
     WHERE meter_id = meter AND read_at < window_from AND read_at >= window_from - lookback
       AND read_at >= outer_from - lookback AND read_at < outer_to
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    -- the partial first hour
    SELECT r.read_at, r.read_at, r.kwh_consumed_ac, r.kwh_consumed_ac, 0, 0, 1, true, false
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at >= window_from
      AND r.read_at < least(window_hour_from(window_from), window_to)
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    -- the hours not rolled up (yet), and the partial last hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, true, false
    FROM meter_readings_between(meter, greatest((SELECT ht FROM bounds), window_from),
                                window_to) AS r
    UNION ALL
    -- the rolled hours, when settled: one piece (as in vehicle_window_energy)
    SELECT window_hour_from(window_from), l.last_at, NULL, l.last_kwh, a.added, a.skipped,
           a.readings, true, true
    FROM (
        SELECT sum(u.added_kwh + CASE WHEN u.prev_at >= window_from - lookback THEN u.joined_kwh
                                      WHEN interval_kwh THEN u.first_kwh
                                      ELSE 0
                                 END) AS added,
               sum(u.skipped + CASE WHEN u.prev_at >= window_from - lookback
                                    THEN u.joined_skipped ELSE 0 END) AS skipped,
               sum(u.readings) AS readings
        FROM (  -- whole days from day rollups, the hours around them from hour rollups
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_rollups
            WHERE meter_id = meter AND hour >= (SELECT hf FROM bounds)
              AND hour < (SELECT df FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_day_rollups
            WHERE meter_id = meter
              AND day >= (SELECT df FROM bounds)
              AND day < (SELECT dt FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_rollups
            WHERE meter_id = meter
              AND hour >= (SELECT dt FROM bounds)
              AND hour < (SELECT ht FROM bounds)
        ) AS u
        WHERE (SELECT yes FROM settled)
        HAVING count(*) > 0
    ) AS a,
    (   -- the last rolled reading, for the next piece to join to
        SELECT last_at, last_kwh
        FROM meter_rollups
        WHERE meter_id = meter AND hour < (SELECT ht FROM bounds)
        ORDER BY hour DESC
        LIMIT 1
    ) AS l
    UNION ALL
    -- otherwise: every clean rollup, and the raw rows of the dirty hours
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           true, false
    FROM meter_rollups AS u
    WHERE u.meter_id = meter
      AND u.hour >= (SELECT hf FROM bounds)
      AND u.hour < (SELECT ht FROM bounds)
      AND NOT (SELECT yes FROM settled)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, true, false
    FROM dirty AS d
    CROSS JOIN LATERAL meter_readings_between(
        meter, greatest(d.hour, window_from), least(d.hour + interval '1 hour', window_to)) AS r
),
steps AS (
    SELECT counted, added, skipped, readings,
           CASE WHEN joined_in THEN NULL  -- the settled rollups' piece joined itself
                WHEN interval_kwh THEN first_kwh
                WHEN first_kwh >= lag(last_kwh) OVER w THEN first_kwh - lag(last_kwh) OVER w
                WHEN lag(last_kwh) OVER w IS NOT NULL THEN first_kwh  -- a counter reset
           END AS joined,
           CASE WHEN NOT joined_in
                THEN EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8
           END AS seconds
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

-- `meter_window_energy` for one assignment's part of a window, planned on its own. Inlined in
-- a statement, the function's scans are bounded by the part's start and end only as values of
-- the assignment row, which cannot prune partitions when the statement starts: every scan
-- started on every partition of the enclosing window (EXPLAIN ANALYZE of a 30-day report: 125
-- partition scans started, 4 read). Here the bounds are parameters. Statements call it for
-- the parts that do not cover the whole window (a meter switched inside it), which are rare.
CREATE FUNCTION meter_segment_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT e.readings, e.kwh, e.skipped
    FROM meter_window_energy(meter, window_from, window_to, lookback, max_kw, interval_kwh,
                             window_from, window_to) AS e;
END
$$;
