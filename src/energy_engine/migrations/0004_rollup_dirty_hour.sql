-- GET /metrics reports the age of the oldest dirty device-hour at every scrape
-- (observability/queries.sql, `scrape`): an index on the hour makes that one probe, however
-- many marks a large late import leaves. Marks are written for late readings only.
CREATE INDEX rollup_dirty_hour ON rollup_dirty (hour);
