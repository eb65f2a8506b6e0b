-- Which meter a vehicle charges from, and since when (store.py applies them in order).

-- name: lock_assignments
-- Serialises all assignment changes. Per-device locks are not enough: opening V1->M closes
-- whatever vehicle held M, so a change touches devices the request does not name. Assignments
-- change when a vehicle plugs in (a few a second fleet-wide), far below what one lock serves.
SELECT pg_advisory_xact_lock(hashtext('energy_engine.assignments'));

-- name: now
-- The time a change without its own `validFrom` starts: read once the lock is held, so it is
-- never before a boundary that a concurrent change has just committed.
SELECT clock_timestamp();

-- name: open_assignment
-- The open assignment of vehicle $1, if any.
SELECT * FROM assignments WHERE vehicle_id = $1 AND valid_to IS NULL;

-- name: latest_boundary
-- The newest boundary already recorded for vehicle $1 or meter $2: a new assignment may not
-- start before it, or two assignments would overlap in time.
SELECT max(greatest(valid_from, valid_to))
FROM assignments
WHERE vehicle_id = $1 OR meter_id = $2;

-- name: close_open
-- Closes at $3 the open assignments of vehicle $1 and of meter $2.
UPDATE assignments SET valid_to = $3
WHERE (vehicle_id = $1 OR meter_id = $2) AND valid_to IS NULL;

-- name: insert_assignment
INSERT INTO assignments (vehicle_id, meter_id, valid_from)
VALUES ($1, $2, $3)
RETURNING *;

-- name: vehicle_assignments
-- Every assignment of vehicle $1, oldest first.
SELECT * FROM assignments WHERE vehicle_id = $1 ORDER BY valid_from, assignment_id;
