-- The rollup refresher's statements (rollups/store.py; the model is in
-- migrations/0001_baseline.sql).
--
-- Every aggregation recomputes whole device-hours from raw rows (never adds to a stored
-- rollup), and looks the reading before each hour up in raw history, so running any step
-- twice, or after a crash, gives the same rollups. The meter and vehicle statements differ in
-- their tables and sensor columns only; the rules they share are SQL functions
-- (migrations/0001_baseline.sql).

-- name: roll_meter_hours
-- The hour rollups and their marks of the meters' readings chosen by $3-$7 (see rollup_hours
-- in migrations/0007_minute_marks.sql: $3, $4 a range of hours; $5 some devices only; $6, $7
-- dirty device-hours), by the energy rules $1 (interval semantics) and $2 (max power kW).
WITH hours AS MATERIALIZED (
    SELECT * FROM rollup_hours('meter', $1, $2, $3, $4, $5, $6, $7)
),
rolled AS (
    INSERT INTO meter_rollups AS u (
        meter_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh, skipped,
        voltage_sum, voltage_min, voltage_max, prev_at, prev_kwh, joined_kwh, joined_skipped
    )
    SELECT device_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh,
           skipped, sensor_sum, sensor_min, sensor_max, prev_at, prev_kwh, joined_kwh,
           joined_skipped
    FROM hours
    ORDER BY device_id, hour
    ON CONFLICT (meter_id, hour) DO UPDATE SET
        readings = excluded.readings, first_at = excluded.first_at, last_at = excluded.last_at,
        first_kwh = excluded.first_kwh, last_kwh = excluded.last_kwh,
        added_kwh = excluded.added_kwh, skipped = excluded.skipped,
        voltage_sum = excluded.voltage_sum, voltage_min = excluded.voltage_min,
        voltage_max = excluded.voltage_max, prev_at = excluded.prev_at,
        prev_kwh = excluded.prev_kwh, joined_kwh = excluded.joined_kwh,
        joined_skipped = excluded.joined_skipped
)
INSERT INTO meter_rollup_marks AS m (hour, meter_id, reading_ms, cum_added, cum_skipped)
SELECT hour, device_id, reading_ms, cum_added, cum_skipped
FROM hours
ORDER BY hour, device_id
ON CONFLICT (hour, meter_id) DO UPDATE SET
    reading_ms = excluded.reading_ms, cum_added = excluded.cum_added,
    cum_skipped = excluded.cum_skipped;

-- name: roll_vehicle_hours
WITH hours AS MATERIALIZED (
    SELECT * FROM rollup_hours('vehicle', $1, $2, $3, $4, $5, $6, $7)
),
rolled AS (
    INSERT INTO vehicle_rollups AS u (
        vehicle_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh, skipped,
        battery_temp_sum, battery_temp_min, battery_temp_max, soc_min, soc_max, prev_at,
        prev_kwh, joined_kwh, joined_skipped
    )
    SELECT device_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh,
           skipped, sensor_sum, sensor_min, sensor_max, soc_min, soc_max, prev_at, prev_kwh,
           joined_kwh, joined_skipped
    FROM hours
    ORDER BY device_id, hour
    ON CONFLICT (vehicle_id, hour) DO UPDATE SET
        readings = excluded.readings, first_at = excluded.first_at, last_at = excluded.last_at,
        first_kwh = excluded.first_kwh, last_kwh = excluded.last_kwh,
        added_kwh = excluded.added_kwh, skipped = excluded.skipped,
        battery_temp_sum = excluded.battery_temp_sum,
        battery_temp_min = excluded.battery_temp_min,
        battery_temp_max = excluded.battery_temp_max, soc_min = excluded.soc_min,
        soc_max = excluded.soc_max, prev_at = excluded.prev_at, prev_kwh = excluded.prev_kwh,
        joined_kwh = excluded.joined_kwh, joined_skipped = excluded.joined_skipped
)
INSERT INTO vehicle_rollup_marks AS m (
    hour, vehicle_id, reading_ms, cum_added, cum_skipped, cum_battery_temp
)
SELECT hour, device_id, reading_ms, cum_added, cum_skipped, cum_sensor
FROM hours
ORDER BY hour, device_id
ON CONFLICT (hour, vehicle_id) DO UPDATE SET
    reading_ms = excluded.reading_ms, cum_added = excluded.cum_added,
    cum_skipped = excluded.cum_skipped, cum_battery_temp = excluded.cum_battery_temp;

-- name: repair_next_meter
-- A late reading may precede the first reading of its device's next rolled hour more closely
-- than that rollup's `prev_at` does: after redoing dirty hours ($1 devices, $2 hours), the next
-- rollup of each device names its predecessor again, and the increment from it ($3 interval
-- semantics, $4 max power kW; rollup_repairs in migrations/0001_baseline.sql). Returns the
-- repaired rollups: their days change too.
UPDATE meter_rollups AS u
SET prev_at = r.prev_at, prev_kwh = r.prev_kwh, joined_kwh = r.joined_kwh,
    joined_skipped = r.joined_skipped
FROM rollup_repairs('meter', $1, $2, $3, $4) AS r
WHERE u.meter_id = r.device_id AND u.hour = r.hour
RETURNING u.meter_id AS device_id, u.hour;

-- name: repair_next_vehicle
UPDATE vehicle_rollups AS u
SET prev_at = r.prev_at, prev_kwh = r.prev_kwh, joined_kwh = r.joined_kwh,
    joined_skipped = r.joined_skipped
FROM rollup_repairs('vehicle', $1, $2, $3, $4) AS r
WHERE u.vehicle_id = r.device_id AND u.hour = r.hour
RETURNING u.vehicle_id AS device_id, u.hour;

-- name: roll_meter_days
-- The meters' day rollups (rollup_days in migrations/0001_baseline.sql) of the hours
-- [$1, $2), all rolled (rolling), or of the complete days of the device-hours ($3 devices,
-- $4 hours) that were redone or repaired (redoing); the other pair NULL. Written day by day,
-- as spans are.
INSERT INTO meter_day_rollups AS d (
    meter_id, day, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
    joined_kwh, joined_skipped
)
SELECT device_id, day, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
       joined_kwh, joined_skipped
FROM rollup_days('meter', $1, $2, $3, $4)
ORDER BY day, device_id
ON CONFLICT (meter_id, day) DO UPDATE SET
    readings = excluded.readings, first_kwh = excluded.first_kwh, last_at = excluded.last_at,
    last_kwh = excluded.last_kwh, added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    prev_at = excluded.prev_at, joined_kwh = excluded.joined_kwh,
    joined_skipped = excluded.joined_skipped;

-- name: roll_vehicle_days
INSERT INTO vehicle_day_rollups AS d (
    vehicle_id, day, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
    joined_kwh, joined_skipped, battery_temp_sum, soc_min, soc_max
)
SELECT device_id, day, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
       joined_kwh, joined_skipped, sensor_sum, soc_min, soc_max
FROM rollup_days('vehicle', $1, $2, $3, $4)
ORDER BY day, device_id
ON CONFLICT (vehicle_id, day) DO UPDATE SET
    readings = excluded.readings, first_kwh = excluded.first_kwh, last_at = excluded.last_at,
    last_kwh = excluded.last_kwh, added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    prev_at = excluded.prev_at, joined_kwh = excluded.joined_kwh,
    joined_skipped = excluded.joined_skipped, battery_temp_sum = excluded.battery_temp_sum,
    soc_min = excluded.soc_min, soc_max = excluded.soc_max;

-- name: roll_meter_spans
-- The meters' span rollups (rollup_spans in migrations/0006_span_rollups.sql) of the start
-- hours [$1, $2) (rolling), or of the kept spans holding the device-hours ($3 devices, $4
-- hours) that were redone or repaired (redoing); the other pair NULL. Written start hour by
-- start hour: the fleet reads one start hour of every device, from as few pages as they fill.
INSERT INTO meter_span_rollups AS d (
    meter_id, span_from, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
    joined_kwh, joined_skipped
)
SELECT device_id, span_from, readings, first_kwh, last_at, last_kwh, added_kwh, skipped,
       prev_at, joined_kwh, joined_skipped
FROM rollup_spans('meter', $1, $2, $3, $4)
ORDER BY span_from, device_id
ON CONFLICT (meter_id, span_from) DO UPDATE SET
    readings = excluded.readings, first_kwh = excluded.first_kwh, last_at = excluded.last_at,
    last_kwh = excluded.last_kwh, added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    prev_at = excluded.prev_at, joined_kwh = excluded.joined_kwh,
    joined_skipped = excluded.joined_skipped;

-- name: roll_vehicle_spans
INSERT INTO vehicle_span_rollups AS d (
    vehicle_id, span_from, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
    joined_kwh, joined_skipped, battery_temp_sum, soc_min, soc_max
)
SELECT device_id, span_from, readings, first_kwh, last_at, last_kwh, added_kwh, skipped,
       prev_at, joined_kwh, joined_skipped, sensor_sum, soc_min, soc_max
FROM rollup_spans('vehicle', $1, $2, $3, $4)
ORDER BY span_from, device_id
ON CONFLICT (vehicle_id, span_from) DO UPDATE SET
    readings = excluded.readings, first_kwh = excluded.first_kwh, last_at = excluded.last_at,
    last_kwh = excluded.last_kwh, added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    prev_at = excluded.prev_at, joined_kwh = excluded.joined_kwh,
    joined_skipped = excluded.joined_skipped, battery_temp_sum = excluded.battery_temp_sum,
    soc_min = excluded.soc_min, soc_max = excluded.soc_max;

-- name: keep_spans
-- After the spans of the start hours [$2, $3) are written: record them as kept, and drop the
-- spans starting before $1 (older windows read day and hour rollups).
WITH kept AS (
    INSERT INTO rollup_span_starts (span_from)
    SELECT generate_series($2::timestamptz, $3::timestamptz - interval '1 hour',
                           interval '1 hour')
    ON CONFLICT DO NOTHING
),
old_starts AS (DELETE FROM rollup_span_starts WHERE span_from < $1),
old_meters AS (DELETE FROM meter_span_rollups WHERE span_from < $1)
DELETE FROM vehicle_span_rollups WHERE span_from < $1;

-- name: take_dirty
-- Dirty hours to redo, but not one whose redo failed as it is now (quarantined with its mark's
-- generation): it is tried again once a new reading changes it.
SELECT d.stream, d.device_id, d.hour, d.generation
FROM rollup_dirty AS d
WHERE d.hour < (SELECT at FROM rollup_watermarks WHERE name = 'rolled')
  AND NOT EXISTS (SELECT FROM rollup_quarantine AS q
                  WHERE q.stream = d.stream AND q.device_id = d.device_id AND q.hour = d.hour
                    AND q.generation = d.generation)
ORDER BY d.stream, d.device_id, d.hour
LIMIT $1;

-- name: forget_dirty
-- The marks redone; a newer mark (another generation) stays for the next round.
DELETE FROM rollup_dirty AS d
USING unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
    AS seen (stream, device_id, hour, generation)
WHERE d.stream = seen.stream AND d.device_id = seen.device_id AND d.hour = seen.hour
  AND d.generation = seen.generation;

-- name: meter_devices_in
-- The meters with readings in [$1, $2), to roll a failed batch apart device group by group.
SELECT DISTINCT meter_id FROM meter_readings WHERE read_at >= $1 AND read_at < $2 ORDER BY 1;

-- name: vehicle_devices_in
SELECT DISTINCT vehicle_id FROM vehicle_readings WHERE read_at >= $1 AND read_at < $2 ORDER BY 1;

-- name: leave_meters_dirty
-- The hours of some devices ($1) in [$2, $3) that have readings, which could not be rolled up:
-- left to the redo, which narrows the failure down to device-hours.
INSERT INTO rollup_dirty (stream, device_id, hour, generation)
SELECT 'meter', meter_id, hour, nextval('rollup_generation')
FROM (SELECT DISTINCT meter_id, date_trunc('hour', read_at) AS hour
      FROM meter_readings
      WHERE meter_id = ANY($1::text[]) AND read_at >= $2 AND read_at < $3) AS failed
ORDER BY meter_id, hour
ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation;

-- name: leave_vehicles_dirty
INSERT INTO rollup_dirty (stream, device_id, hour, generation)
SELECT 'vehicle', vehicle_id, hour, nextval('rollup_generation')
FROM (SELECT DISTINCT vehicle_id, date_trunc('hour', read_at) AS hour
      FROM vehicle_readings
      WHERE vehicle_id = ANY($1::text[]) AND read_at >= $2 AND read_at < $3) AS failed
ORDER BY vehicle_id, hour
ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation;

-- name: quarantine
-- Device-hours whose redo failed ($1 streams, $2 devices, $3 hours, $4 generations, $5 why):
-- kept out of the next rounds until a new reading changes them (migrations/0001_baseline.sql).
INSERT INTO rollup_quarantine AS q (stream, device_id, hour, generation, reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::text[])
ON CONFLICT (stream, device_id, hour) DO UPDATE
    SET generation = excluded.generation, reason = excluded.reason, failed_at = now();

-- name: release
-- Quarantined hours that were redone after all ($1 streams, $2 devices, $3 hours).
DELETE FROM rollup_quarantine AS q
USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS done (stream, device_id, hour)
WHERE q.stream = done.stream AND q.device_id = done.device_id AND q.hour = done.hour;

-- name: quarantined
SELECT count(*) FROM rollup_quarantine;

-- name: lock
-- One refresher at a time across processes ($1 the refresher's lock key), until commit.
SELECT pg_advisory_xact_lock($1);

-- name: try_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: seal
UPDATE rollup_watermarks SET at = $1 WHERE name = 'sealed' AND at < $1;

-- name: watermarks
-- NULL for -infinity (nothing sealed or rolled yet).
SELECT name, CASE WHEN isfinite(at) THEN at END AS at FROM rollup_watermarks;

-- name: set_rolled
UPDATE rollup_watermarks SET at = $1 WHERE name = 'rolled';

-- name: oldest_day
-- Where rolling starts on a database that has never been rolled: its oldest partition's day.
SELECT min(to_date(right(c.relname, 8), 'YYYYMMDD'))::timestamp AT TIME ZONE 'UTC'
FROM pg_inherits AS i
JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass);

-- name: rules
SELECT interval_kwh, max_power_kw FROM rollup_rules;

-- name: reset
-- Drops every rollup (marks included) and records the energy rules ($1 interval semantics, $2 max power kW)
-- the next ones are computed with.
WITH cleared_meters AS (DELETE FROM meter_rollups),
     cleared_vehicles AS (DELETE FROM vehicle_rollups),
     cleared_meter_days AS (DELETE FROM meter_day_rollups),
     cleared_vehicle_days AS (DELETE FROM vehicle_day_rollups),
     cleared_meter_marks AS (DELETE FROM meter_rollup_marks),
     cleared_vehicle_marks AS (DELETE FROM vehicle_rollup_marks),
     cleared_meter_spans AS (DELETE FROM meter_span_rollups),
     cleared_vehicle_spans AS (DELETE FROM vehicle_span_rollups),
     cleared_span_starts AS (DELETE FROM rollup_span_starts),
     cleared_dirty AS (DELETE FROM rollup_dirty),
     rules AS (
         INSERT INTO rollup_rules (interval_kwh, max_power_kw) VALUES ($1, $2)
         ON CONFLICT (only_row) DO UPDATE
             SET interval_kwh = excluded.interval_kwh, max_power_kw = excluded.max_power_kw
     )
UPDATE rollup_watermarks SET at = '-infinity';
