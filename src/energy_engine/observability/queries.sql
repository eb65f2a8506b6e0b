-- What GET /metrics reads from the database (observability/metrics.py), once per scrape.

-- name: scrape
-- In one round trip: the oldest dirty device-hour (one probe of the rollup_dirty_hour index,
-- migration 0004; the table holds only marks the refresher has not redone yet), and the last
-- day both history tables have a partition for (a catalog scan of a few dozen rows; partitions
-- are named <table>_pYYYYMMDD by ensure_reading_partitions).
SELECT
    (SELECT min(hour) FROM rollup_dirty) AS oldest_dirty_hour,
    (SELECT min(last_day)
     FROM (SELECT max(to_date(right(c.relname, 8), 'YYYYMMDD')) AS last_day
           FROM pg_inherits AS i
           JOIN pg_class AS c ON c.oid = i.inhrelid
           WHERE i.inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
           GROUP BY i.inhparent) AS per_table) AS last_partition_day;
