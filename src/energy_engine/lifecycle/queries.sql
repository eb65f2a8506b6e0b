-- The maintenance loop's statements (lifecycle/maintenance.py).

-- name: try_lock
-- A session-level lock: a round spans several transactions (one per drop, one per rollup
-- batch), so a transaction-scoped lock would be let go after the first. Released at the end of
-- every round (unlock); a connection that dies releases it with its session.
SELECT pg_try_advisory_lock($1);

-- name: unlock
SELECT pg_advisory_unlock($1);

-- name: expired_partitions
-- History partitions, raw and packed, wholly before $1 (their upper bound at or before it),
-- oldest first, with the planner's row estimate (-1: never analysed) and their size with
-- indexes and TOAST. The bounds are read from the catalog (history_partitions), not from the
-- names; one bounded by MINVALUE or MAXVALUE matches no pattern and is never dropped.
SELECT h.child::text AS name, h.parent, h.range_from, h.range_to,
       c.reltuples::bigint AS rows_estimate,
       pg_total_relation_size(h.child) AS bytes
FROM history_partitions AS h
JOIN pg_class AS c ON c.oid = h.child
WHERE h.range_to <= $1
ORDER BY range_to, name;

-- name: drop_partition
SELECT drop_history_partition($1::regclass);

-- name: set_lock_timeout
SELECT set_config('lock_timeout', $1, true);

-- name: expired_rollups
-- Rollups wholly before $1, per table: an hour rollup ends an hour after `hour`, a day
-- rollup a day after `day`. Index range counts (each table has an index on its time).
SELECT (SELECT count(*) FROM meter_rollups WHERE hour <= $1::timestamptz - interval '1 hour') AS meter_hours,
       (SELECT count(*) FROM vehicle_rollups WHERE hour <= $1::timestamptz - interval '1 hour') AS vehicle_hours,
       (SELECT count(*) FROM meter_day_rollups WHERE day <= $1::timestamptz - interval '1 day') AS meter_days,
       (SELECT count(*) FROM vehicle_day_rollups WHERE day <= $1::timestamptz - interval '1 day') AS vehicle_days;

-- name: delete_expired_rollups
-- At most $5 rows of the rollup table $1 (timed by column $2, each row covering $3) wholly
-- before $4; the caller repeats it until fewer go (migrations/0003_maintenance.sql).
SELECT delete_expired_rollups($1::regclass, $2, $3, $4, $5);

-- name: record_run
INSERT INTO maintenance_runs (
    finished_at, history_cutoff, rollup_cutoff, partitions_created, partitions_dropped,
    drops_postponed, rollups_deleted, bytes_freed, partitions_packed, readings_packed
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (only_row) DO UPDATE SET
    finished_at = excluded.finished_at,
    history_cutoff = excluded.history_cutoff,
    rollup_cutoff = excluded.rollup_cutoff,
    partitions_created = excluded.partitions_created,
    partitions_dropped = excluded.partitions_dropped,
    drops_postponed = excluded.drops_postponed,
    rollups_deleted = excluded.rollups_deleted,
    bytes_freed = excluded.bytes_freed,
    partitions_packed = excluded.partitions_packed,
    readings_packed = excluded.readings_packed;

-- name: last_run
SELECT finished_at, history_cutoff, rollup_cutoff, partitions_created, partitions_dropped,
       drops_postponed, rollups_deleted, bytes_freed, partitions_packed, readings_packed
FROM maintenance_runs;

-- name: packable_partitions
-- Raw day partitions wholly before $1 that hold readings, oldest first.
SELECT child::text AS name FROM raw_partitions_before($1) WHERE filled;

-- name: pack_partition
-- Moves one raw day partition's readings into the packed form (migrations/0005).
SELECT pack_reading_partition($1::regclass);

-- name: retired_partitions
-- Packed raw day partitions wholly before $1 that are empty (no reading can arrive for them).
SELECT child::text AS name FROM raw_partitions_before($1) WHERE packed AND NOT filled;
