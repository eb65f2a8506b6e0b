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
