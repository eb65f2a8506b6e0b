-- The read side's share of the energy rule, as functions its statements call instead of
-- repeating it (analytics/queries.sql, rollups/queries.sql). Plain SQL functions: PostgreSQL
-- inlines them into the calling statement, so plans are those of the written-out expressions.

-- The increment into a window's piece (a rollup, or a run of raw readings) from the reading
-- before it, given that increment by `rollup_joined_kwh` (migrations/0006): counted only when
-- the predecessor is at or after `baseline_from` (within the window, or the baseline lookback
-- before it). Without one, interval semantics still count the piece's own first reading.
CREATE FUNCTION window_joined_kwh(
    prev_at timestamptz, joined_kwh double precision, first_kwh double precision,
    baseline_from timestamptz, interval_kwh boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN prev_at >= baseline_from THEN joined_kwh
            WHEN interval_kwh THEN first_kwh
            ELSE 0
       END
$$;

-- Whether that increment was skipped as implausible (`rollup_joined_skipped`), 1 or 0, under
-- the same baseline rule.
CREATE FUNCTION window_joined_skipped(
    prev_at timestamptz, joined_skipped integer, baseline_from timestamptz
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN prev_at >= baseline_from THEN joined_skipped ELSE 0 END
$$;
