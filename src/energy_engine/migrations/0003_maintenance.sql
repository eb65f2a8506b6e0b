-- The maintenance loop (lifecycle/maintenance.py): partitions ahead, retention, and a record of
-- its last round.

-- The last round that held the maintenance lock; one row, rewritten by every such round. The
-- metrics read `finished_at` as "retention last run".
CREATE TABLE maintenance_runs (
    only_row           boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    finished_at        timestamptz NOT NULL,
    history_cutoff     timestamptz,  -- partitions wholly before it go; null: history kept
    rollup_cutoff      timestamptz,  -- rollups wholly before it go; null: rollups kept
    partitions_created integer     NOT NULL,
    partitions_dropped integer     NOT NULL,
    drops_postponed    integer     NOT NULL,  -- drops that met lock_timeout: the next round
    rollups_deleted    bigint      NOT NULL,
    bytes_freed        bigint      NOT NULL   -- pg_total_relation_size of the dropped partitions
);

-- Drops one day partition of history; anything else is refused, so a wrong name can never
-- drop another table. The caller sets lock_timeout in the same transaction: DROP locks the
-- partitioned table ACCESS EXCLUSIVE, which ingest and reads queue behind while it waits.
CREATE FUNCTION drop_history_partition(child regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_inherits
        WHERE inhrelid = child
          AND inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
    ) THEN
        RAISE EXCEPTION '% is not a partition of meter_readings or vehicle_readings', child;
    END IF;
    EXECUTE format('DROP TABLE %s', child);
END;
$$;

-- Deletes at most `batch` rows of one rollup table that end at or before `cutoff` (the row
-- timed `time_column` covers `span`), picked by the table's time index and deleted by tuple
-- id; returns how many went. One function for the four rollup tables, which differ only in
-- name; any other table is refused, as by drop_history_partition.
CREATE FUNCTION delete_expired_rollups(
    rollups regclass, time_column text, span interval, cutoff timestamptz, batch integer
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
BEGIN
    IF rollups NOT IN ('meter_rollups'::regclass, 'vehicle_rollups'::regclass,
                       'meter_day_rollups'::regclass, 'vehicle_day_rollups'::regclass) THEN
        RAISE EXCEPTION '% is not a rollup table', rollups;
    END IF;
    EXECUTE format('DELETE FROM %s WHERE ctid = ANY (ARRAY('
                   'SELECT ctid FROM %s WHERE %I <= $1 - $2 LIMIT $3))',
                   rollups, rollups, time_column)
    USING cutoff, span, batch;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END;
$$;
