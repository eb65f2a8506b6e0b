-- Poison readings (hardening). A register value such as 1e308, -1e308, NaN or ±Infinity in
-- history (written before the API bounded values, or by `energy-engine import`) made the
-- energy arithmetic fail: `added * 3600` and `kwh - prev_kwh` overflow double precision
-- ("value out of range: overflow"), so the refresher failed for every device of its batch and
-- every report, series and fleet view over that history answered 500.
--
-- * One increment function and one plausibility test, used by every statement (the window
--   functions below, rollups/store.py, analytics/fleet.py, status/store.py), that cannot
--   overflow: an increment too large to represent is +Infinity, and the max-power test
--   divides the allowed energy instead of multiplying the increment. Every sum then adds
--   plausible increments only, each bounded by max power × time: sums cannot overflow either.
-- * The max-power rule now bounds the power needed in either direction: a counter "reset" to a
--   huge negative value (-1e308) is as impossible as a jump to 1e308, and counting it would
--   make the sums overflow in turn. Registers never go negative in real data (nor in the
--   tests' random streams), so only rolled hours holding a negative reading can change: they
--   are marked dirty below and redone by the refresher (readers read them raw meanwhile).
-- * `rollup_quarantine`: device-hours the refresher could not aggregate (rollups/store.py
--   narrows a failing batch down to its device-hours and rolls every other one up). A
--   quarantined hour stays dirty, so readers take its raw rows; it is tried again once a new
--   reading changes it (its dirty mark's generation).

-- The increment from `prev_kwh` to `kwh` by the rules of energy_engine.energy.increment; NULL
-- without a previous reading (cumulative semantics). A difference beyond the largest double
-- (both huge, of opposite signs) is +Infinity instead of an overflow error.
CREATE OR REPLACE FUNCTION energy_increment(
    kwh double precision, prev_kwh double precision, interval_kwh boolean
)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN interval_kwh THEN kwh
            WHEN prev_kwh IS NULL THEN NULL
            WHEN kwh >= prev_kwh THEN
                CASE WHEN prev_kwh >= 0 OR kwh <= 0  -- the same sign: a finite difference
                          OR (kwh < 1e300::float8 AND prev_kwh > -1e300::float8)
                     THEN kwh - prev_kwh
                     ELSE 'Infinity'::float8
                END
            ELSE kwh  -- a counter reset
       END
$$;

-- Whether `added` kWh within `seconds` needs at most `max_kw` either way (energy.is_plausible);
-- NULL when either is unknown. Divided rather than multiplied out: `added * 3600` overflows
-- for a poison value, `max_kw * seconds / 3600` never does; NaN and ±Infinity compare false.
CREATE FUNCTION energy_plausible(
    added double precision, seconds double precision, max_kw double precision
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT abs(added) <= max_kw * seconds / 3600
$$;

CREATE OR REPLACE FUNCTION rollup_joined_kwh(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN energy_plausible(energy_increment(first_kwh, prev_kwh, interval_kwh),
                                  date_part('epoch', first_at - prev_at), max_kw)
            THEN energy_increment(first_kwh, prev_kwh, interval_kwh)
            ELSE 0
       END
$$;

CREATE OR REPLACE FUNCTION rollup_joined_skipped(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN NOT energy_plausible(energy_increment(first_kwh, prev_kwh, interval_kwh),
                                      date_part('epoch', first_at - prev_at), max_kw)
            THEN 1
            ELSE 0
       END::smallint
$$;

CREATE TABLE rollup_quarantine (
    stream     text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    device_id  text        NOT NULL,
    hour       timestamptz NOT NULL,
    generation bigint      NOT NULL,  -- of the dirty mark whose redo failed
    failed_at  timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL,
    PRIMARY KEY (stream, device_id, hour)
);

-- Rolled hours holding a negative reading may count differently now (see above): redo them.
-- One scan of history, once.
INSERT INTO rollup_dirty (stream, device_id, hour, generation)
SELECT 'meter', meter_id, hour, nextval('rollup_generation')
FROM (SELECT DISTINCT meter_id, date_trunc('hour', read_at) AS hour
      FROM meter_readings
      WHERE kwh_consumed_ac < 0
        AND read_at < (SELECT at FROM rollup_watermarks WHERE name = 'rolled')) AS negative
ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation;
INSERT INTO rollup_dirty (stream, device_id, hour, generation)
SELECT 'vehicle', vehicle_id, hour, nextval('rollup_generation')
FROM (SELECT DISTINCT vehicle_id, date_trunc('hour', read_at) AS hour
      FROM vehicle_readings
      WHERE kwh_delivered_dc < 0
        AND read_at < (SELECT at FROM rollup_watermarks WHERE name = 'rolled')) AS negative
ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation;

-- The window functions as in 0005, with the increment and the plausibility test above.
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
           CASE WHEN NOT joined_in  -- the settled rollups' piece joined itself
                THEN energy_increment(first_kwh, lag(last_kwh) OVER w, interval_kwh)
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
                                             OR energy_plausible(joined, seconds, max_kw)), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE NOT energy_plausible(joined, seconds, max_kw)))::bigint,
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
           CASE WHEN NOT joined_in  -- the settled rollups' piece joined itself
                THEN energy_increment(first_kwh, lag(last_kwh) OVER w, interval_kwh)
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
                                             OR energy_plausible(joined, seconds, max_kw)), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE NOT energy_plausible(joined, seconds, max_kw)))::bigint
FROM steps
WHERE counted
$$;
