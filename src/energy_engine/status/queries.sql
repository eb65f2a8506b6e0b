-- Reads of the hot store: one row a device, joined with its open assignment.

-- name: vehicle_state
-- The hot row of vehicle $1 with the meter it is assigned to now.
SELECT v.*, a.meter_id
FROM vehicle_state AS v
LEFT JOIN assignments AS a ON a.vehicle_id = v.vehicle_id AND a.valid_to IS NULL
WHERE v.vehicle_id = $1;

-- name: vehicle_states
-- The hot rows of the vehicles of $1 (an array of ids) with their current meters; ids never
-- seen have no row. One statement for a page of the dashboard's vehicle table.
SELECT v.*, a.meter_id
FROM vehicle_state AS v
LEFT JOIN assignments AS a ON a.vehicle_id = v.vehicle_id AND a.valid_to IS NULL
WHERE v.vehicle_id = ANY($1::text[])
ORDER BY v.vehicle_id;

-- name: meter_state
-- The hot row of meter $1 with the vehicle assigned to it now.
SELECT m.*, a.vehicle_id
FROM meter_state AS m
LEFT JOIN assignments AS a ON a.meter_id = m.meter_id AND a.valid_to IS NULL
WHERE m.meter_id = $1;

-- name: fleet
-- The fleet at a glance, from the hot rows alone. $1 online since, $2 interval semantics,
-- $3 max power kW. `charging` follows energy.power_kw: the latest interval added energy, at a
-- plausible power, and the reading is fresh (the same rule as a vehicle's own status; the SQL
-- functions of migrations/0001_baseline.sql, which survive a poison reading in the hot row).
SELECT
    (SELECT count(*) FROM vehicle_state) AS vehicles,
    (SELECT count(*) FROM vehicle_state WHERE read_at >= $1) AS vehicles_online,
    (SELECT count(*)
     FROM (SELECT EXTRACT(epoch FROM read_at - prev_read_at)::float8 AS seconds,
                  energy_increment(kwh_delivered_dc, prev_kwh_delivered_dc, $2) AS added
           FROM vehicle_state
           WHERE read_at >= $1 AND prev_read_at < read_at) AS latest
     WHERE added > 0 AND energy_plausible(added, seconds, $3)) AS vehicles_charging,
    (SELECT avg(soc) FROM vehicle_state WHERE read_at >= $1) AS avg_soc_online,
    (SELECT count(*) FROM meter_state) AS meters,
    (SELECT count(*) FROM meter_state WHERE read_at >= $1) AS meters_online;

-- name: stale
-- Devices whose newest reading is older than $1, stalest first, after the keyset cursor
-- ($2 read_at, $3 kind, $4 id; NULLs for the first page), $5 rows.
SELECT kind, device_id, read_at
FROM (
    SELECT 'vehicle' AS kind, vehicle_id AS device_id, read_at FROM vehicle_state
    WHERE read_at < $1
    UNION ALL
    SELECT 'meter', meter_id, read_at FROM meter_state
    WHERE read_at < $1
) AS stale
WHERE $2::timestamptz IS NULL OR (read_at, kind, device_id) > ($2, $3::text, $4::text)
ORDER BY read_at, kind, device_id
LIMIT $5;
