-- The ingest path's writes: one statement a stream, one round trip a batch.
--
-- Each statement inserts the batch into the day-partitioned history in (device, time) order,
-- skipping (device, time) pairs already stored (the first write wins), and returns the 1-based
-- positions of the readings that were new (the first of repeats within the batch). Of the new
-- readings it hands each device's newest, with the one before it, to the hot-row merge, and
-- marks the hours of those older than the rollups' `sealed` watermark dirty: both SQL
-- functions of migrations/0001_baseline.sql. `sealed` is share-locked until commit, so the
-- refresher seals past these readings only after they are visible.
--
-- The merge and the mark are CTEs that call a function; a CTE that modifies nothing runs only
-- when read, so the final SELECT reads both (each yields exactly one row).
-- The two statements differ only in table and column names.

-- name: insert_meter_readings
WITH batch AS (
    SELECT *
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[])
        WITH ORDINALITY AS b (meter_id, read_at, kwh_consumed_ac, voltage, position)
),
inserted AS (
    INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)
    SELECT meter_id, read_at, kwh_consumed_ac, voltage
    FROM batch
    ORDER BY meter_id, read_at, position
    ON CONFLICT DO NOTHING
    RETURNING meter_id, read_at, kwh_consumed_ac, voltage
),
sealed AS (
    SELECT at FROM rollup_watermarks WHERE name = 'sealed' FOR SHARE
),
dirtied AS (
    SELECT mark_dirty_hours('meter', array_agg(meter_id), array_agg(read_at))
    FROM inserted
    WHERE read_at < (SELECT at FROM sealed)
),
newest AS (
    SELECT ROW(meter_id, read_at, kwh_consumed_ac, voltage, now(),
               lag(read_at) OVER w, lag(kwh_consumed_ac) OVER w)::meter_state AS state,
           lead(read_at) OVER w IS NULL AS is_newest
    FROM inserted
    WINDOW w AS (PARTITION BY meter_id ORDER BY read_at)
),
merged AS (
    SELECT merge_meter_state(array_agg(state)) FROM newest WHERE is_newest
)
SELECT (
    SELECT coalesce(array_agg(first_position ORDER BY first_position), '{}')
    FROM (
        SELECT min(b.position) AS first_position
        FROM batch AS b
        JOIN inserted AS i USING (meter_id, read_at)
        GROUP BY b.meter_id, b.read_at
    ) AS accepted
)
FROM dirtied, merged;

-- name: insert_vehicle_readings
WITH batch AS (
    SELECT *
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[])
        WITH ORDINALITY AS b (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, position)
),
inserted AS (
    INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)
    SELECT vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
    FROM batch
    ORDER BY vehicle_id, read_at, position
    ON CONFLICT DO NOTHING
    RETURNING vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
),
sealed AS (
    SELECT at FROM rollup_watermarks WHERE name = 'sealed' FOR SHARE
),
dirtied AS (
    SELECT mark_dirty_hours('vehicle', array_agg(vehicle_id), array_agg(read_at))
    FROM inserted
    WHERE read_at < (SELECT at FROM sealed)
),
newest AS (
    SELECT ROW(vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, now(),
               lag(read_at) OVER w, lag(kwh_delivered_dc) OVER w)::vehicle_state AS state,
           lead(read_at) OVER w IS NULL AS is_newest
    FROM inserted
    WINDOW w AS (PARTITION BY vehicle_id ORDER BY read_at)
),
merged AS (
    SELECT merge_vehicle_state(array_agg(state)) FROM newest WHERE is_newest
)
SELECT (
    SELECT coalesce(array_agg(first_position ORDER BY first_position), '{}')
    FROM (
        SELECT min(b.position) AS first_position
        FROM batch AS b
        JOIN inserted AS i USING (vehicle_id, read_at)
        GROUP BY b.vehicle_id, b.read_at
    ) AS accepted
)
FROM dirtied, merged;
