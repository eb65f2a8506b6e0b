"""The analytics computed from raw history only, in plain SQL that calls none of the engine's
functions: a reference that the rollup-based answers must equal (tests/reference.py is the
same in Python)."""

# $1 vehicle, $2 from, $3 to, $4 baseline lookback, $5 max power kW, $6 interval semantics
RAW_VEHICLE_WINDOW = """
WITH readings AS (
    (SELECT read_at, kwh_delivered_dc AS kwh, NULL::float8 AS battery_temp
     FROM vehicle_readings
     WHERE vehicle_id = $1 AND read_at < $2 AND read_at >= $2 - $4::interval
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    (SELECT read_at, kwh_delivered_dc, battery_temp
     FROM vehicle_readings
     WHERE vehicle_id = $1 AND read_at >= $2 AND read_at < $3)
),
steps AS (
    SELECT read_at,
           battery_temp,
           CASE WHEN $6 THEN kwh
                WHEN kwh >= lag(kwh) OVER w THEN kwh - lag(kwh) OVER w
                WHEN lag(kwh) OVER w IS NOT NULL THEN kwh  -- a counter reset
           END AS added,
           EXTRACT(epoch FROM read_at - lag(read_at) OVER w)::float8 AS seconds
    FROM readings
    WINDOW w AS (ORDER BY read_at)
)
SELECT count(*) AS readings,
       coalesce(sum(added) FILTER (WHERE seconds IS NULL
                                       OR abs(added) <= $5 * seconds / 3600), 0)
           AS kwh,
       count(*) FILTER (WHERE abs(added) > $5 * seconds / 3600) AS skipped,
       avg(battery_temp) AS avg_battery_temp
FROM steps
WHERE read_at >= $2
"""

# The meters assigned to the vehicle during the window, each for its part of the window.
# $1 vehicle, $2 from, $3 to, $4 baseline lookback, $5 max power kW, $6 interval semantics
RAW_METER_WINDOWS = """
WITH segments AS (
    SELECT meter_id,
           greatest(valid_from, $2) AS seg_from,
           least(coalesce(valid_to, 'infinity'), $3) AS seg_to
    FROM assignments
    WHERE vehicle_id = $1 AND valid_from < $3 AND (valid_to IS NULL OR valid_to > $2)
)
SELECT s.meter_id, s.seg_from, s.seg_to, e.readings, e.kwh, e.skipped
FROM segments AS s
CROSS JOIN LATERAL (
    WITH readings AS (
        (SELECT read_at, kwh_consumed_ac AS kwh
         FROM meter_readings
         WHERE meter_id = s.meter_id
           AND read_at < s.seg_from AND read_at >= s.seg_from - $4::interval
           AND read_at >= $2 - $4::interval  -- implied; lets PostgreSQL prune partitions
         ORDER BY read_at DESC
         LIMIT 1)
        UNION ALL
        (SELECT read_at, kwh_consumed_ac
         FROM meter_readings
         WHERE meter_id = s.meter_id AND read_at >= s.seg_from AND read_at < s.seg_to
           AND read_at >= $2 AND read_at < $3)  -- implied; lets PostgreSQL prune partitions
    ),
    steps AS (
        SELECT read_at,
               CASE WHEN $6 THEN kwh
                    WHEN kwh >= lag(kwh) OVER w THEN kwh - lag(kwh) OVER w
                    WHEN lag(kwh) OVER w IS NOT NULL THEN kwh  -- a counter reset
               END AS added,
               EXTRACT(epoch FROM read_at - lag(read_at) OVER w)::float8 AS seconds
        FROM readings
        WINDOW w AS (ORDER BY read_at)
    )
    SELECT count(*) AS readings,
           coalesce(sum(added) FILTER (WHERE seconds IS NULL
                                       OR abs(added) <= $5 * seconds / 3600), 0)
               AS kwh,
           count(*) FILTER (WHERE abs(added) > $5 * seconds / 3600) AS skipped
    FROM steps
    WHERE read_at >= s.seg_from
) AS e
WHERE s.seg_from < s.seg_to
ORDER BY s.seg_from
"""
