-- The engine's schema. Applied once to an empty database; every later change is a new
-- migration file, and a shipped file never changes (db.migrate refuses a database whose applied
-- migrations differ from the files by checksum). CHANGELOG.md has the history of the schema.

-- Cold store: append-only history, one partition per UTC day, unique on (device, time).
-- Fixed-width columns first so the tuples carry no alignment padding.
CREATE TABLE meter_readings (
    read_at         timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         real             NOT NULL,
    meter_id        text             NOT NULL,
    PRIMARY KEY (meter_id, read_at) WITH (fillfactor = 100)
) PARTITION BY RANGE (read_at);

CREATE TABLE vehicle_readings (
    read_at          timestamptz      NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    soc              real             NOT NULL,
    battery_temp     real             NOT NULL,
    vehicle_id       text             NOT NULL,
    PRIMARY KEY (vehicle_id, read_at) WITH (fillfactor = 100)
) PARTITION BY RANGE (read_at);

-- Hot store: one row per device with its latest reading and the one before it (for power and
-- `charging`). Updated in place many times a minute: leave room on each page for HOT updates.
CREATE TABLE meter_state (
    meter_id             text PRIMARY KEY,
    read_at              timestamptz      NOT NULL,
    kwh_consumed_ac      double precision NOT NULL,
    voltage              double precision NOT NULL,
    received_at          timestamptz      NOT NULL,
    prev_read_at         timestamptz,
    prev_kwh_consumed_ac double precision
) WITH (fillfactor = 70);

CREATE TABLE vehicle_state (
    vehicle_id            text PRIMARY KEY,
    read_at               timestamptz      NOT NULL,
    soc                   double precision NOT NULL,
    kwh_delivered_dc      double precision NOT NULL,
    battery_temp          double precision NOT NULL,
    received_at           timestamptz      NOT NULL,
    prev_read_at          timestamptz,
    prev_kwh_delivered_dc double precision
) WITH (fillfactor = 70);

-- Which meter a vehicle charges from, and when. At most one open assignment per vehicle and per
-- meter; plain partial unique indexes, since btree_gist is not available everywhere.
CREATE TABLE assignments (
    assignment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id    text        NOT NULL,
    meter_id      text        NOT NULL,
    valid_from    timestamptz NOT NULL,
    valid_to      timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT assignments_valid_range CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
CREATE UNIQUE INDEX assignments_open_vehicle ON assignments (vehicle_id) WHERE valid_to IS NULL;
CREATE UNIQUE INDEX assignments_open_meter ON assignments (meter_id) WHERE valid_to IS NULL;
CREATE INDEX assignments_vehicle_from ON assignments (vehicle_id, valid_from);
CREATE INDEX assignments_meter_from ON assignments (meter_id, valid_from);

-- Creates the daily partitions of both history tables for [first_day, last_day] (UTC days) that
-- do not exist yet; returns how many it created. Serialised so that concurrent callers (several
-- engine processes, the on-demand path and the maintenance task) never race on the same name.
CREATE FUNCTION ensure_reading_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    parent  text;
    child   text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('energy_engine.partitions'));
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        FOREACH parent IN ARRAY ARRAY['meter_readings', 'vehicle_readings'] LOOP
            child := parent || '_p' || to_char(day, 'YYYYMMDD');
            IF to_regclass(child) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    child, parent,
                    day::timestamp AT TIME ZONE 'UTC',
                    (day + 1)::timestamp AT TIME ZONE 'UTC'
                );
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END;
$$;

-- Hourly rollups: analytics read about 24 rows an hour-aligned day instead of 1,440 readings.
--
-- A rollup holds one device-hour: its first and last reading, and the energy added *between
-- readings of that hour* (the increment into the hour's first reading depends on the reading
-- before it, possibly in another hour, so it is computed when a window is read). That makes a
-- rollup depend on its own hour's rows only, so late data corrects exactly the hour it lands in.
--
-- Exactness: hours before the `rolled` watermark have rollups, unless they are marked dirty
-- (a reading arrived for them after they were sealed); everything else is read raw. A window
-- is pieced together from the baseline reading, raw rows at its edges and in dirty hours, and
-- rollups of the clean whole hours in between; the increments between consecutive pieces are
-- computed with the same rules as between raw readings, so the answer equals the raw one.
--
-- Watermarks: writers mark (device, hour) dirty when they insert a reading older than `sealed`,
-- holding a share lock on the `sealed` row until they commit. The refresher moves `sealed`
-- forward first (the UPDATE waits for those writers), and only then aggregates the hours below
-- it, so every reading is either seen by that aggregation or marked dirty.
CREATE TABLE meter_rollups (
    meter_id      text             NOT NULL,
    hour          timestamptz      NOT NULL,
    readings      integer          NOT NULL,
    first_at      timestamptz      NOT NULL,
    last_at       timestamptz      NOT NULL,
    first_kwh     double precision NOT NULL,
    last_kwh      double precision NOT NULL,
    added_kwh     double precision NOT NULL,  -- plausible increments between this hour's readings
    skipped       integer          NOT NULL,  -- implausible ones
    voltage_sum   double precision NOT NULL,
    voltage_min   real             NOT NULL,
    voltage_max   real             NOT NULL,
    prev_at       timestamptz,                -- the device's reading before this hour, if any
    prev_kwh      double precision,
    joined_kwh    double precision NOT NULL DEFAULT 0,  -- the increment from prev into first
    joined_skipped smallint        NOT NULL DEFAULT 0,
    PRIMARY KEY (meter_id, hour)
);

CREATE TABLE vehicle_rollups (
    vehicle_id       text             NOT NULL,
    hour             timestamptz      NOT NULL,
    readings         integer          NOT NULL,
    first_at         timestamptz      NOT NULL,
    last_at          timestamptz      NOT NULL,
    first_kwh        double precision NOT NULL,
    last_kwh         double precision NOT NULL,
    added_kwh        double precision NOT NULL,
    skipped          integer          NOT NULL,
    battery_temp_sum double precision NOT NULL,
    battery_temp_min real             NOT NULL,
    battery_temp_max real             NOT NULL,
    soc_min          real             NOT NULL,
    soc_max          real             NOT NULL,
    prev_at          timestamptz,
    prev_kwh         double precision,
    joined_kwh       double precision NOT NULL DEFAULT 0,
    joined_skipped   smallint         NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, hour)
);
-- The fleet reads one window's hours for every device at once, a range the (device, hour)
-- primary key cannot serve.
CREATE INDEX meter_rollups_hour ON meter_rollups (hour);
CREATE INDEX vehicle_rollups_hour ON vehicle_rollups (hour);

-- Day rollups: a device's complete UTC day summed from its hour rollups, with the same
-- meaning (readings, the energy added between the day's readings, its first reading, last
-- reading and the increment into its first reading from the one before). A 30-day window reads
-- 30 of them and at most 46 hour rollups at its ends instead of 720 hour rollups; the fleet
-- ranking of a calendar day reads 10,000 instead of 240,000. The refresher writes a day when
-- its last hour is rolled, and again whenever it redoes one of its hours or repairs the
-- predecessor of one; while a device has a dirty hour, readers use its hour rollups instead.
CREATE TABLE meter_day_rollups (
    meter_id       text             NOT NULL,
    day            timestamptz      NOT NULL,
    readings       integer          NOT NULL,
    first_kwh      double precision NOT NULL,
    last_at        timestamptz      NOT NULL,
    last_kwh       double precision NOT NULL,
    added_kwh      double precision NOT NULL,
    skipped        integer          NOT NULL,
    prev_at        timestamptz,
    joined_kwh     double precision NOT NULL,
    joined_skipped smallint         NOT NULL,
    PRIMARY KEY (meter_id, day)
);
CREATE INDEX meter_day_rollups_day ON meter_day_rollups (day);

CREATE TABLE vehicle_day_rollups (
    vehicle_id       text             NOT NULL,
    day              timestamptz      NOT NULL,
    readings         integer          NOT NULL,
    first_kwh        double precision NOT NULL,
    last_at          timestamptz      NOT NULL,
    last_kwh         double precision NOT NULL,
    added_kwh        double precision NOT NULL,
    skipped          integer          NOT NULL,
    prev_at          timestamptz,
    joined_kwh       double precision NOT NULL,
    joined_skipped   smallint         NOT NULL,
    battery_temp_sum double precision NOT NULL,
    soc_min          real             NOT NULL,
    soc_max          real             NOT NULL,
    PRIMARY KEY (vehicle_id, day)
);
CREATE INDEX vehicle_day_rollups_day ON vehicle_day_rollups (day);


-- Device-hours whose rollup misses readings that arrived after the hour was sealed. The
-- generation lets the refresher delete only the marks it has seen.
CREATE SEQUENCE rollup_generation;
CREATE TABLE rollup_dirty (
    stream     text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    device_id  text        NOT NULL,
    hour       timestamptz NOT NULL,
    generation bigint      NOT NULL,
    PRIMARY KEY (stream, device_id, hour)
);

-- 'sealed': readings before it mark their hour dirty. 'rolled': hours before it have rollups.
-- Both start at -infinity: nothing is rolled until the refresher has run (analytics then read
-- raw rows, exactly as before rollups existed).
CREATE TABLE rollup_watermarks (
    name text        PRIMARY KEY CHECK (name IN ('sealed', 'rolled')),
    at   timestamptz NOT NULL
);
INSERT INTO rollup_watermarks (name, at) VALUES ('sealed', '-infinity'), ('rolled', '-infinity');

-- The energy rules the rollups were computed with; other settings mean a rebuild.
CREATE TABLE rollup_rules (
    only_row       boolean          PRIMARY KEY DEFAULT true CHECK (only_row),
    interval_kwh   boolean          NOT NULL,
    max_power_kw   double precision NOT NULL
);

-- Lets the refresher read one hour of history without scanning the whole day partition; a
-- BRIN index on an append-mostly time column costs a few pages per partition.
CREATE INDEX meter_readings_read_at ON meter_readings USING brin (read_at);
CREATE INDEX vehicle_readings_read_at ON vehicle_readings USING brin (read_at);

-- Device-hours the refresher could not aggregate (a poison value in history that no bound
-- kept out): each is narrowed down alone and every other hour still rolls up. A quarantined
-- hour stays dirty, so readers take its raw rows; it is tried again once a new reading
-- changes it (its dirty mark's generation).
CREATE TABLE rollup_quarantine (
    stream     text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    device_id  text        NOT NULL,
    hour       timestamptz NOT NULL,
    generation bigint      NOT NULL,  -- of the dirty mark whose redo failed
    failed_at  timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL,
    PRIMARY KEY (stream, device_id, hour)
);

-- The increment from `prev_kwh` to `kwh` by the rules of energy_engine.energy.increment; NULL
-- without a previous reading (cumulative semantics). A difference beyond the largest double
-- (both huge, of opposite signs) is +Infinity instead of an overflow error.
CREATE FUNCTION energy_increment(
    kwh double precision, prev_kwh double precision, interval_kwh boolean
)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN interval_kwh THEN kwh
            WHEN prev_kwh IS NULL THEN NULL
            WHEN kwh >= prev_kwh THEN
                CASE WHEN prev_kwh >= 0 OR kwh <= 0  -- the same sign: a finite difference
                          OR (kwh < 1e300::float8 AND prev_kwh > -1e300::float8)
                     THEN kwh - prev_kwh
                     ELSE 'Infinity'::float8
                END
            ELSE kwh  -- a counter reset
       END
$$;

-- Whether `added` kWh within `seconds` needs at most `max_kw` either way (energy.is_plausible);
-- NULL when either is unknown. Divided rather than multiplied out: `added * 3600` overflows
-- for a poison value, `max_kw * seconds / 3600` never does; NaN and ±Infinity compare false.
CREATE FUNCTION energy_plausible(
    added double precision, seconds double precision, max_kw double precision
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT abs(added) <= max_kw * seconds / 3600
$$;

-- The increment from the reading before a rollup's hour into its first reading, counted
-- (when plausible) and skipped (when not); none without a predecessor.
CREATE FUNCTION rollup_joined_kwh(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN energy_plausible(energy_increment(first_kwh, prev_kwh, interval_kwh),
                                  date_part('epoch', first_at - prev_at), max_kw)
            THEN energy_increment(first_kwh, prev_kwh, interval_kwh)
            ELSE 0
       END
$$;

CREATE FUNCTION rollup_joined_skipped(
    first_at timestamptz, first_kwh double precision, prev_at timestamptz,
    prev_kwh double precision, max_kw double precision, interval_kwh boolean
) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN NOT energy_plausible(energy_increment(first_kwh, prev_kwh, interval_kwh),
                                      date_part('epoch', first_at - prev_at), max_kw)
            THEN 1
            ELSE 0
       END::smallint
$$;

-- The whole UTC days of the rolled hours [hour_from, hour_to): [rollup_days_from,
-- rollup_days_to); the hours before and after them are read from hour rollups.
CREATE FUNCTION rollup_days_from(hour_from timestamptz, hour_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT least(date_trunc('day', hour_from - interval '1 microsecond', 'UTC') + interval '1 day',
             hour_to)
$$;

CREATE FUNCTION rollup_days_to(hour_from timestamptz, hour_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT greatest(rollup_days_from(hour_from, hour_to), date_trunc('day', hour_to, 'UTC'))
$$;

-- The `rolled` watermark. A function call, unlike a subquery, can bound a partition scan when
-- the statement starts. PL/pgSQL keeps its query planned for the session.
CREATE FUNCTION rollups_rolled() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT at FROM rollup_watermarks WHERE name = 'rolled');
END
$$;

-- The first whole hour of a window starting at `window_from`.
CREATE FUNCTION window_hour_from(window_from timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN date_trunc('hour', window_from) = window_from THEN window_from
            ELSE date_trunc('hour', window_from) + interval '1 hour'
       END
$$;

-- The end of the window's whole hours that have rollups: [window_hour_from, window_hour_to).
CREATE FUNCTION window_hour_to(window_from timestamptz, window_to timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT greatest(window_hour_from(window_from),
                least(date_trunc('hour', window_to), rollups_rolled()))
$$;

-- One device's readings in [from_at, to_at). The window functions read the hours not rolled
-- up yet and the dirty hours through these: the bounds depend on the `rolled` watermark or on
-- a dirty hour, and inlined into a statement such a bound either cannot prune partitions when
-- the statement starts (a subquery's value) or is evaluated once per partition when it does
-- (a function call: about 40 watermark lookups per scan, 1.6 ms of a 24 h report). Here the
-- bounds are parameters of a plan PL/pgSQL keeps for the session, pruned when it starts.
CREATE FUNCTION vehicle_readings_between(vehicle text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (read_at timestamptz, kwh double precision, battery_temp real, soc real)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT r.read_at, r.kwh_delivered_dc, r.battery_temp, r.soc
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= from_at AND r.read_at < to_at;
END
$$;

CREATE FUNCTION meter_readings_between(meter text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (read_at timestamptz, kwh double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT r.read_at, r.kwh_consumed_ac
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at >= from_at AND r.read_at < to_at;
END
$$;

-- Energy of one vehicle over [window_from, window_to): readings, counted kWh, skipped
-- (implausible) increments, the sum of battery temperatures and the SoC range. Equal to
-- energy_engine.energy.window_energy over the raw readings: a window is pieced together from
-- the baseline reading, raw rows at its edges and in dirty hours, day rollups of whole clean
-- days and hour rollups of the other whole clean hours; the increments between consecutive
-- pieces follow the same rules as between raw readings.
CREATE FUNCTION vehicle_window_energy(
    vehicle text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (
    readings bigint, kwh double precision, skipped bigint, battery_temp_sum double precision,
    soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH bounds AS MATERIALIZED (  -- once per call (OFFSET 0: the watermark read once)
    SELECT hf, ht, rollup_days_from(hf, ht) AS df, rollup_days_to(hf, ht) AS dt,
           (SELECT array_agg(d.hour ORDER BY d.hour)  -- NULL: no dirty hour
            FROM rollup_dirty AS d
            WHERE d.stream = 'vehicle' AND d.device_id = vehicle AND d.hour < b.ht) AS dirty_before
    FROM (SELECT window_hour_from(window_from) AS hf,
                 window_hour_to(window_from, window_to) AS ht
          OFFSET 0) AS b
),
dirty AS (
    SELECT hour
    FROM unnest((SELECT dirty_before FROM bounds)) AS hour
    WHERE hour >= (SELECT hf FROM bounds)
),
-- Whether every rollup of the window can be trusted with its stored predecessor: the device
-- has no dirty hour before the rolled part of the window ends (a late reading may precede a
-- rollup's first reading more closely than its stored predecessor until the refresher redoes
-- the hour). Nearly always true; otherwise each rollup is a piece of its own.
settled AS (
    SELECT (SELECT dirty_before FROM bounds) IS NULL AS yes
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_delivered_dc AS first_kwh,
            kwh_delivered_dc AS last_kwh, 0::float8 AS added, 0::bigint AS skipped,
            0::bigint AS readings, 0::float8 AS temp_sum, NULL::real AS soc_min,
            NULL::real AS soc_max, false AS counted, false AS joined_in
     FROM vehicle_readings
     WHERE vehicle_id = vehicle AND read_at < window_from AND read_at >= window_from - lookback
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    -- the partial first hour
    SELECT r.read_at, r.read_at, r.kwh_delivered_dc, r.kwh_delivered_dc, 0, 0, 1,
           r.battery_temp, r.soc, r.soc, true, false
    FROM vehicle_readings AS r
    WHERE r.vehicle_id = vehicle AND r.read_at >= window_from
      AND r.read_at < least(window_hour_from(window_from), window_to)
    UNION ALL
    -- the hours not rolled up (yet), and the partial last hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.battery_temp, r.soc, r.soc, true, false
    FROM vehicle_readings_between(vehicle, greatest((SELECT ht FROM bounds), window_from),
                                  window_to) AS r
    UNION ALL
    -- the rolled hours, when settled: one piece summing every rollup with the increment into
    -- its first reading from its stored predecessor (counted when within the window or the
    -- baseline lookback, like a lag would), ordered by its start, ending with the last one
    SELECT window_hour_from(window_from), l.last_at, NULL, l.last_kwh, a.added, a.skipped,
           a.readings, a.temp_sum, a.soc_min, a.soc_max, true, true
    FROM (
        SELECT sum(u.added_kwh + CASE WHEN u.prev_at >= window_from - lookback THEN u.joined_kwh
                                      WHEN interval_kwh THEN u.first_kwh
                                      ELSE 0
                                 END) AS added,
               sum(u.skipped + CASE WHEN u.prev_at >= window_from - lookback
                                    THEN u.joined_skipped ELSE 0 END) AS skipped,
               sum(u.readings) AS readings, sum(u.battery_temp_sum) AS temp_sum,
               min(u.soc_min) AS soc_min, max(u.soc_max) AS soc_max
        FROM (  -- whole days from day rollups, the hours around them from hour rollups
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_rollups
            WHERE vehicle_id = vehicle AND hour >= (SELECT hf FROM bounds)
              AND hour < (SELECT df FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_day_rollups
            WHERE vehicle_id = vehicle
              AND day >= (SELECT df FROM bounds)
              AND day < (SELECT dt FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   battery_temp_sum, soc_min, soc_max
            FROM vehicle_rollups
            WHERE vehicle_id = vehicle
              AND hour >= (SELECT dt FROM bounds)
              AND hour < (SELECT ht FROM bounds)
        ) AS u
        WHERE (SELECT yes FROM settled)
        HAVING count(*) > 0
    ) AS a,
    (   -- the last rolled reading, for the next piece to join to
        SELECT last_at, last_kwh
        FROM vehicle_rollups
        WHERE vehicle_id = vehicle AND hour < (SELECT ht FROM bounds)
        ORDER BY hour DESC
        LIMIT 1
    ) AS l
    UNION ALL
    -- otherwise: every clean rollup, and the raw rows of the dirty hours
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           u.battery_temp_sum, u.soc_min, u.soc_max, true, false
    FROM vehicle_rollups AS u
    WHERE u.vehicle_id = vehicle
      AND u.hour >= (SELECT hf FROM bounds)
      AND u.hour < (SELECT ht FROM bounds)
      AND NOT (SELECT yes FROM settled)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.battery_temp, r.soc, r.soc, true, false
    FROM dirty AS d
    CROSS JOIN LATERAL vehicle_readings_between(
        vehicle, greatest(d.hour, window_from), least(d.hour + interval '1 hour', window_to)) AS r
),
steps AS (
    SELECT counted, added, skipped, readings, temp_sum, soc_min, soc_max,
           CASE WHEN NOT joined_in  -- the settled rollups' piece joined itself
                THEN energy_increment(first_kwh, lag(last_kwh) OVER w, interval_kwh)
           END AS joined,
           CASE WHEN NOT joined_in
                THEN EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8
           END AS seconds
    FROM pieces
    WINDOW w AS (ORDER BY first_at)
)
SELECT coalesce(sum(readings), 0)::bigint,
       coalesce(sum(added), 0)
           + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                             OR energy_plausible(joined, seconds, max_kw)), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE NOT energy_plausible(joined, seconds, max_kw)))::bigint,
       sum(temp_sum),
       min(soc_min),
       max(soc_max)
FROM steps
WHERE counted
$$;

-- The same for one meter over [window_from, window_to): readings, counted kWh, skipped.
-- [outer_from, outer_to) encloses the window and is known when the query is planned (the
-- caller's whole window, while window_from/to are one assignment's part of it): repeated on
-- every scan, it lets PostgreSQL prune the partitions outside it.
CREATE FUNCTION meter_window_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean,
    outer_from timestamptz, outer_to timestamptz
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH bounds AS MATERIALIZED (  -- once per call (OFFSET 0: the watermark read once)
    SELECT hf, ht, rollup_days_from(hf, ht) AS df, rollup_days_to(hf, ht) AS dt,
           (SELECT array_agg(d.hour ORDER BY d.hour)  -- NULL: no dirty hour
            FROM rollup_dirty AS d
            WHERE d.stream = 'meter' AND d.device_id = meter AND d.hour < b.ht) AS dirty_before
    FROM (SELECT window_hour_from(window_from) AS hf,
                 window_hour_to(window_from, window_to) AS ht
          OFFSET 0) AS b
),
dirty AS (
    SELECT hour
    FROM unnest((SELECT dirty_before FROM bounds)) AS hour
    WHERE hour >= (SELECT hf FROM bounds)
),
settled AS (  -- as in vehicle_window_energy
    SELECT (SELECT dirty_before FROM bounds) IS NULL AS yes
),
pieces AS (
    (SELECT read_at AS first_at, read_at AS last_at, kwh_consumed_ac AS first_kwh,
            kwh_consumed_ac AS last_kwh, 0::float8 AS added, 0::bigint AS skipped,
            0::bigint AS readings, false AS counted, false AS joined_in
     FROM meter_readings
     WHERE meter_id = meter AND read_at < window_from AND read_at >= window_from - lookback
       AND read_at >= outer_from - lookback AND read_at < outer_to
     ORDER BY read_at DESC
     LIMIT 1)
    UNION ALL
    -- the partial first hour
    SELECT r.read_at, r.read_at, r.kwh_consumed_ac, r.kwh_consumed_ac, 0, 0, 1, true, false
    FROM meter_readings AS r
    WHERE r.meter_id = meter AND r.read_at >= window_from
      AND r.read_at < least(window_hour_from(window_from), window_to)
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    -- the hours not rolled up (yet), and the partial last hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, true, false
    FROM meter_readings_between(meter, greatest((SELECT ht FROM bounds), window_from),
                                window_to) AS r
    UNION ALL
    -- the rolled hours, when settled: one piece (as in vehicle_window_energy)
    SELECT window_hour_from(window_from), l.last_at, NULL, l.last_kwh, a.added, a.skipped,
           a.readings, true, true
    FROM (
        SELECT sum(u.added_kwh + CASE WHEN u.prev_at >= window_from - lookback THEN u.joined_kwh
                                      WHEN interval_kwh THEN u.first_kwh
                                      ELSE 0
                                 END) AS added,
               sum(u.skipped + CASE WHEN u.prev_at >= window_from - lookback
                                    THEN u.joined_skipped ELSE 0 END) AS skipped,
               sum(u.readings) AS readings
        FROM (  -- whole days from day rollups, the hours around them from hour rollups
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_rollups
            WHERE meter_id = meter AND hour >= (SELECT hf FROM bounds)
              AND hour < (SELECT df FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_day_rollups
            WHERE meter_id = meter
              AND day >= (SELECT df FROM bounds)
              AND day < (SELECT dt FROM bounds)
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings
            FROM meter_rollups
            WHERE meter_id = meter
              AND hour >= (SELECT dt FROM bounds)
              AND hour < (SELECT ht FROM bounds)
        ) AS u
        WHERE (SELECT yes FROM settled)
        HAVING count(*) > 0
    ) AS a,
    (   -- the last rolled reading, for the next piece to join to
        SELECT last_at, last_kwh
        FROM meter_rollups
        WHERE meter_id = meter AND hour < (SELECT ht FROM bounds)
        ORDER BY hour DESC
        LIMIT 1
    ) AS l
    UNION ALL
    -- otherwise: every clean rollup, and the raw rows of the dirty hours
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           true, false
    FROM meter_rollups AS u
    WHERE u.meter_id = meter
      AND u.hour >= (SELECT hf FROM bounds)
      AND u.hour < (SELECT ht FROM bounds)
      AND NOT (SELECT yes FROM settled)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, true, false
    FROM dirty AS d
    CROSS JOIN LATERAL meter_readings_between(
        meter, greatest(d.hour, window_from), least(d.hour + interval '1 hour', window_to)) AS r
),
steps AS (
    SELECT counted, added, skipped, readings,
           CASE WHEN NOT joined_in  -- the settled rollups' piece joined itself
                THEN energy_increment(first_kwh, lag(last_kwh) OVER w, interval_kwh)
           END AS joined,
           CASE WHEN NOT joined_in
                THEN EXTRACT(epoch FROM first_at - lag(last_at) OVER w)::float8
           END AS seconds
    FROM pieces
    WINDOW w AS (ORDER BY first_at)
)
SELECT coalesce(sum(readings), 0)::bigint,
       coalesce(sum(added), 0)
           + coalesce(sum(joined) FILTER (WHERE seconds IS NULL
                                             OR energy_plausible(joined, seconds, max_kw)), 0),
       (coalesce(sum(skipped), 0)
           + count(*) FILTER (WHERE NOT energy_plausible(joined, seconds, max_kw)))::bigint
FROM steps
WHERE counted
$$;

-- `meter_window_energy` for one assignment's part of a window, planned on its own. Inlined in
-- a statement, the function's scans are bounded by the part's start and end only as values of
-- the assignment row, which cannot prune partitions when the statement starts: every scan
-- started on every partition of the enclosing window (EXPLAIN ANALYZE of a 30-day report: 125
-- partition scans started, 4 read). Here the bounds are parameters. Statements call it for
-- the parts that do not cover the whole window (a meter switched inside it), which are rare.
CREATE FUNCTION meter_segment_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT e.readings, e.kwh, e.skipped
    FROM meter_window_energy(meter, window_from, window_to, lookback, max_kw, interval_kwh,
                             window_from, window_to) AS e;
END
$$;
