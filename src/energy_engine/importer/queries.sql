-- The importer's statements (store.py says how a chunk moves through them). The hot-row merge
-- and the dirty-hour mark are the ingest path's own SQL functions
-- (migrations/0001_baseline.sql), so that an import stores what the API stores.

-- name: create_staging_tables
-- This session's staging tables, shaped like the history (LIKE copies the columns and their
-- types) so that one binary COPY payload fits both; TEMP, so each import session has its own.
CREATE TEMP TABLE IF NOT EXISTS import_meter_readings (LIKE meter_readings)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_meter_new (LIKE meter_readings)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_vehicle_readings (LIKE vehicle_readings)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_vehicle_new (LIKE vehicle_readings)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_meter_hours (hour timestamptz, meter_id text)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_vehicle_hours (hour timestamptz, vehicle_id text)
    ON COMMIT DELETE ROWS;

-- name: history_column_types
-- The SQL type of each column of history table $1: binary COPY needs them exactly.
SELECT attname, format_type(atttypid, atttypmod)
FROM pg_attribute
WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped;

-- name: rollups_exist
-- Whether this database keeps the hourly rollups that writers mark dirty.
SELECT to_regclass('rollup_dirty') IS NOT NULL;

-- name: lock_sealed
-- The rollups' `sealed` watermark, share-locked until the chunk commits, so that the refresher
-- seals past the chunk's readings only once they are visible (NULL: nothing sealed yet).
SELECT CASE WHEN isfinite(at) THEN at END
FROM rollup_watermarks
WHERE name = 'sealed'
FOR SHARE;

-- name: meter_readings_are_new
-- `import_meter_new` holds each device's oldest, second newest and newest row of the chunk:
-- is every device's oldest row newer than its hot row? (Grouped first: one hot-row probe a
-- device.)
SELECT NOT EXISTS (
    SELECT FROM (
        SELECT meter_id, min(read_at) AS oldest FROM import_meter_new GROUP BY meter_id
    ) AS e
    JOIN meter_state AS s USING (meter_id)
    WHERE e.oldest <= s.read_at
);

-- name: vehicle_readings_are_new
SELECT NOT EXISTS (
    SELECT FROM (
        SELECT vehicle_id, min(read_at) AS oldest FROM import_vehicle_new GROUP BY vehicle_id
    ) AS e
    JOIN vehicle_state AS s USING (vehicle_id)
    WHERE e.oldest <= s.read_at
);

-- name: forget_new_meter_readings
DELETE FROM import_meter_new;

-- name: forget_new_vehicle_readings
DELETE FROM import_vehicle_new;

-- name: insert_meter_readings
-- The general path: insert into history what is not stored yet, in (device, time) order, and
-- keep what was inserted in `import_meter_new` for the merge and the marks.
WITH inserted AS (
    INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)
    SELECT meter_id, read_at, kwh_consumed_ac, voltage
    FROM import_meter_readings
    ORDER BY meter_id, read_at
    ON CONFLICT DO NOTHING
    RETURNING meter_id, read_at, kwh_consumed_ac, voltage
)
INSERT INTO import_meter_new (meter_id, read_at, kwh_consumed_ac, voltage)
SELECT meter_id, read_at, kwh_consumed_ac, voltage FROM inserted;

-- name: insert_vehicle_readings
WITH inserted AS (
    INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)
    SELECT vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
    FROM import_vehicle_readings
    ORDER BY vehicle_id, read_at
    ON CONFLICT DO NOTHING
    RETURNING vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
)
INSERT INTO import_vehicle_new (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)
SELECT vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp FROM inserted;

-- name: merge_new_meter_readings
-- Folds the new readings in `import_meter_new` into the hot rows: each device's newest, with
-- the one before it. The table holds at least the two newest new readings of each device
-- (the chunk's ends when all its rows were new, else every row the history insert took).
SELECT merge_meter_state(array_agg(state))
FROM (
    SELECT ROW(meter_id, read_at, kwh_consumed_ac, voltage, now(),
               lag(read_at) OVER w, lag(kwh_consumed_ac) OVER w)::meter_state AS state,
           lead(read_at) OVER w IS NULL AS is_newest
    FROM import_meter_new
    WINDOW w AS (PARTITION BY meter_id ORDER BY read_at)
) AS newest
WHERE is_newest;

-- name: merge_new_vehicle_readings
SELECT merge_vehicle_state(array_agg(state))
FROM (
    SELECT ROW(vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, now(),
               lag(read_at) OVER w, lag(kwh_delivered_dc) OVER w)::vehicle_state AS state,
           lead(read_at) OVER w IS NULL AS is_newest
    FROM import_vehicle_new
    WINDOW w AS (PARTITION BY vehicle_id ORDER BY read_at)
) AS newest
WHERE is_newest;

-- name: mark_meter_hours
-- After a COPY straight into history every row is new; the reader listed their (hour,
-- device) pairs in `import_meter_hours`. Marks those before the sealed watermark $1.
SELECT mark_dirty_hours('meter', array_agg(meter_id), array_agg(hour))
FROM import_meter_hours
WHERE hour < $1;

-- name: mark_vehicle_hours
SELECT mark_dirty_hours('vehicle', array_agg(vehicle_id), array_agg(hour))
FROM import_vehicle_hours
WHERE hour < $1;

-- name: mark_new_meter_hours
-- After the general path: the rows the history insert took, older than the sealed watermark
-- $1, as the ingest statement marks them. Reduced to their hours first: a chunk may hold a
-- quarter million rows, and the function takes arrays.
SELECT mark_dirty_hours('meter', array_agg(meter_id), array_agg(hour))
FROM (SELECT DISTINCT meter_id, date_trunc('hour', read_at) AS hour
      FROM import_meter_new
      WHERE read_at < $1) AS late;

-- name: mark_new_vehicle_hours
SELECT mark_dirty_hours('vehicle', array_agg(vehicle_id), array_agg(hour))
FROM (SELECT DISTINCT vehicle_id, date_trunc('hour', read_at) AS hour
      FROM import_vehicle_new
      WHERE read_at < $1) AS late;

-- name: assignment_stored
-- Whether this very assignment (vehicle $1, meter $2, from $3) is stored already.
SELECT EXISTS (
    SELECT FROM assignments WHERE vehicle_id = $1 AND meter_id = $2 AND valid_from = $3
);
