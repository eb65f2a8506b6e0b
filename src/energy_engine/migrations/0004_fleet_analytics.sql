-- Fleet analytics and time series (issue 4).
--
-- * A rollup now also names the device's reading just before its hour (`prev_at`/`prev_kwh`,
--   NULL when there is none). The increment into the hour's first reading then needs no
--   ordering of the pieces: the fleet ranking sums 240,000 rollups of a day with a hash
--   aggregate instead of sorting them into a window function (EXPLAIN ANALYZE over 10,000
--   vehicles: about 90 instead of 250 ms a stream). A late reading can change the
--   predecessor of the next rolled hour of its device: the refresher recomputes it when it
--   redoes the dirty hour, and until then readers look the predecessor up themselves.
--   Existing rollups lack the columns' values, so they are dropped: the refresher rebuilds
--   them from history (analytics read raw rows meanwhile, exactly as before).
-- * The vehicle window function also returns the SoC range (the rollups always kept it), for
--   the per-step series. Same arguments, one more pair of columns: dropped and created again.
-- * Rollups get an index on the hour: the fleet ranking reads one window's hours for every
--   device at once, a range the (device, hour) primary key cannot serve without reading all
--   of it. One entry per device-hour, 1/60 of the history's index entries.
DELETE FROM meter_rollups;
DELETE FROM vehicle_rollups;
DELETE FROM rollup_dirty;
UPDATE rollup_watermarks SET at = '-infinity';
ALTER TABLE meter_rollups ADD COLUMN prev_at timestamptz, ADD COLUMN prev_kwh double precision;
ALTER TABLE vehicle_rollups ADD COLUMN prev_at timestamptz, ADD COLUMN prev_kwh double precision;

DROP FUNCTION vehicle_window_energy(text, timestamptz, timestamptz, interval, double precision, boolean);

-- Read-only functions: PARALLEL SAFE lets a statement that calls them (the fleet's AC side)
-- still aggregate rollups with parallel workers; a function left at the default (unsafe)
-- rules out parallel plans for the whole statement.
ALTER FUNCTION meter_window_energy(
    text, timestamptz, timestamptz, interval, double precision, boolean, timestamptz, timestamptz
) PARALLEL SAFE;

CREATE INDEX meter_rollups_hour ON meter_rollups (hour);
CREATE INDEX vehicle_rollups_hour ON vehicle_rollups (hour);

-- Energy of one vehicle over [window_from, window_to): readings, counted kWh, skipped
-- (implausible) increments, the sum of battery temperatures and the SoC range, from rollups where they are
-- complete and raw rows elsewhere. Equal to energy_engine.energy.window_energy.
CREATE FUNCTION vehicle_window_energy(
    vehicle text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (
    readings bigint, kwh double precision, skipped bigint, battery_temp_sum double precision,
    soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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
            0::float8 AS temp_sum, NULL::real AS soc_min, NULL::real AS soc_max,
            false AS counted
     FROM vehicle_readings
     WHERE vehicle_id = vehicle AND read_at < window_from AND read_at >= window_from - lookback
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, r.soc, r.soc, true
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at < (SELECT hour_from FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, r.soc, r.soc, true
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= (SELECT hour_to FROM bounds)
      AND r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, r.soc, r.soc, true
    FROM dirty AS d
    JOIN vehicle_readings AS r
      ON r.vehicle_id = vehicle AND r.read_at >= d.hour AND r.read_at < d.hour + interval '1 hour'
    WHERE r.read_at >= window_from AND r.read_at < window_to
    UNION ALL
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           u.battery_temp_sum, u.soc_min, u.soc_max, true
    FROM vehicle_rollups AS u
    WHERE u.vehicle_id = vehicle
      AND u.hour >= (SELECT hour_from FROM bounds) AND u.hour < (SELECT hour_to FROM bounds)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
),
steps AS (
    SELECT counted, added, skipped, readings, temp_sum, soc_min, soc_max,
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
       sum(temp_sum),
       min(soc_min),
       max(soc_max)
FROM steps
WHERE counted
$$;
