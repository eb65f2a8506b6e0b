-- The benchmark's own SQL: history written behind the engine's back (generate_series writes
-- in seconds what the simulator and the API would take minutes for) and the counts that check
-- what the engine stored. Each statement starts at a `-- name:` line; energy_engine.sql loads
-- them (`queries = sql.load("benchmarks")`).
--
-- Statements marked DUPLICATES ENGINE repeat a rule the engine also holds; switch them to the
-- engine's own statement or SQL function when it has one.


-- name: stored_readings
-- Readings stored under one run's device-id prefix ($1: the prefix followed by '-%').
SELECT (SELECT count(*) FROM meter_readings WHERE meter_id LIKE $1)
     + (SELECT count(*) FROM vehicle_readings WHERE vehicle_id LIKE $1);


-- name: devices_caught_up
-- Devices under one run's prefix ($1: the prefix followed by '-%') whose latest state is the
-- reading at $2: polled while scenario 18 waits for its readings, since the state tables hold
-- a row a device where the history holds one a reading.
SELECT (SELECT count(*) FROM meter_state WHERE meter_id LIKE $1 AND read_at = $2)
     + (SELECT count(*) FROM vehicle_state WHERE vehicle_id LIKE $1 AND read_at = $2);

-- name: older_meter_history
-- DUPLICATES ENGINE: the history insert of ingest/store.py (ON CONFLICT DO NOTHING) without
-- the hot-row merge or the rollup dirty marks; `roll_up_again` below makes up for the marks.
-- One day from $1 for meters 1..$2, a reading a minute.
INSERT INTO meter_readings (read_at, kwh_consumed_ac, voltage, meter_id)
SELECT $1::timestamptz + m * interval '1 minute', m * 0.001, 230,
       'meter-' || lpad(d::text, 5, '0')
FROM generate_series(1, $2) AS d, generate_series(0, 1439) AS m
ORDER BY d, m
ON CONFLICT DO NOTHING;


-- name: older_vehicle_history
-- DUPLICATES ENGINE: as older_meter_history, for vehicles 1..$2.
INSERT INTO vehicle_readings (read_at, kwh_delivered_dc, soc, battery_temp, vehicle_id)
SELECT $1::timestamptz + m * interval '1 minute', m * 0.001, 50, 20,
       'vehicle-' || lpad(d::text, 5, '0')
FROM generate_series(1, $2) AS d, generate_series(0, 1439) AS m
ORDER BY d, m
ON CONFLICT DO NOTHING;


-- name: roll_up_again
-- DUPLICATES ENGINE: the rollup watermark of rollups/store.py (SET_ROLLED); history written
-- behind the engine's back is rolled up again from the start by the engine's refresher.
UPDATE rollup_watermarks SET at = '-infinity' WHERE name = 'rolled';


-- name: rollups_behind
-- DUPLICATES ENGINE: what the refresher of rollups/store.py has left to do: dirty hours,
-- sealed hours not rolled up yet, and a first round not run yet (both watermarks start at
-- -infinity, which would otherwise read as caught up); 0 once it has caught up.
SELECT (SELECT count(*) FROM rollup_dirty)
     + (SELECT count(*) FROM rollup_watermarks AS r, rollup_watermarks AS s
        WHERE r.name = 'rolled' AND s.name = 'sealed' AND r.at < s.at)
     + (SELECT count(*) FROM rollup_watermarks WHERE name = 'rolled' AND NOT isfinite(at));


-- name: partition_sizes
-- Heap and index bytes (every index: primary key and BRIN) of every partition of the history
-- table $1.
SELECT coalesce(sum(pg_relation_size(relid)), 0) AS heap,
       coalesce(sum(pg_indexes_size(relid)), 0) AS indexes
FROM pg_partition_tree($1::regclass)
WHERE isleaf;


-- name: total_size
-- Heap, indexes and TOAST (pg_total_relation_size) of every partition of the table $1.
SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
FROM pg_partition_tree($1::regclass)
WHERE isleaf;


-- name: raw_readings_before
-- Raw readings of both streams before $1.
SELECT (SELECT count(*) FROM meter_readings WHERE read_at < $1)
     + (SELECT count(*) FROM vehicle_readings WHERE read_at < $1);


-- name: pack_readings_before
-- The engine's packing of every raw day partition wholly before $1 (migration 0005); returns
-- the readings packed.
SELECT pack_readings_before($1);


-- name: meter_readings_count
SELECT count(*) FROM meter_readings;


-- name: vehicle_readings_count
SELECT count(*) FROM vehicle_readings;


-- name: fleet_meter_history
-- DUPLICATES ENGINE: a plain history insert (the fleet's database is fresh, so no conflicts),
-- without the hot-row merge or the rollup dirty marks; the bench rolls it all up afterwards.
-- Device by device, unlike ingest, which writes minute by minute (docs/performance.md: the
-- fleet over time-ordered history); kept so that the rows compare with earlier runs.
-- Meter d counts 0.02 kWh a minute (1.2 kW): one reading a minute from $1 for $2 minutes,
-- meters 1..$3, the count starting $4 minutes in.
INSERT INTO meter_readings (read_at, kwh_consumed_ac, voltage, meter_id)
SELECT $1::timestamptz + m * interval '1 minute', d * 10 + ($4 + m) * 0.02,
       228 + m % 5, 'meter-' || lpad(d::text, 5, '0')
FROM generate_series(1, $3) AS d, generate_series(0, $2 - 1) AS m
ORDER BY d, m;


-- name: fleet_vehicle_history
-- DUPLICATES ENGINE: as fleet_meter_history; vehicle d receives a share between 0.70 and 1.00
-- of its meter's energy, so the fleet spans every health class.
INSERT INTO vehicle_readings (read_at, kwh_delivered_dc, soc, battery_temp, vehicle_id)
SELECT $1::timestamptz + m * interval '1 minute',
       d * 10 + ($4 + m) * 0.02 * (0.70 + (d % 31) / 100.0),
       (m / 10) % 100, 20 + m % 11, 'vehicle-' || lpad(d::text, 5, '0')
FROM generate_series(1, $3) AS d, generate_series(0, $2 - 1) AS m
ORDER BY d, m;


-- name: fleet_vehicle_state
-- DUPLICATES ENGINE: writes the hot rows (vehicle_state) directly, the state the engine's
-- hot-row merge would leave: vehicles 1..$2 last seen at $1, so the fleet ranking lists them.
INSERT INTO vehicle_state (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, received_at)
SELECT 'vehicle-' || lpad(d::text, 5, '0'), $1, 50, 0, 20, now()
FROM generate_series(1, $2) AS d;


-- name: fleet_assignments
-- DUPLICATES ENGINE: assignments inserted directly, not through assignments/store.py's
-- assign (its lock, boundary check and closing of open assignments; none exist here):
-- vehicle d on meter d from $1, vehicles 1..$2.
INSERT INTO assignments (vehicle_id, meter_id, valid_from)
SELECT 'vehicle-' || lpad(d::text, 5, '0'), 'meter-' || lpad(d::text, 5, '0'), $1
FROM generate_series(1, $2) AS d;
