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

-- The hot-row merge and the dirty-hour mark, once each, for every writer (the ingest
-- statements and both import paths call them). STRICT: a NULL array (a batch with nothing
-- new, or no late reading) skips the call.

-- The hot-row rule, once for both streams. A hot row keeps a device's newest reading and the
-- one before it (s: the stored row; e: the incoming one, its newest new reading with the one
-- before it in prev_*). A late reading can become the previous one but never the latest, so
-- the hot store never goes back in time; a reading at a time the row holds already changes
-- nothing (the first write wins, as in history). Plain SQL: inlined into the merges below.

-- Whether the merge changes the row at all: a newer latest or a newer previous reading.
CREATE FUNCTION hot_row_changes(
    s_at timestamptz, s_prev_at timestamptz, e_at timestamptz, e_prev_at timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT e_at > s_at
    OR (e_at < s_at AND e_at > coalesce(s_prev_at, '-infinity'))
    OR (e_at = s_at AND e_prev_at > coalesce(s_prev_at, '-infinity'))
$$;

-- A field of the latest reading after the merge (the incoming one's only if it is newer).
CREATE FUNCTION hot_row_latest(
    s_at timestamptz, e_at timestamptz, s_value anycompatible, e_value anycompatible
) RETURNS anycompatible
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN e_at > s_at THEN e_value ELSE s_value END
$$;

-- The previous reading's time after the merge (where hot_row_changes holds).
CREATE FUNCTION hot_row_prev_at(
    s_at timestamptz, s_prev_at timestamptz, e_at timestamptz, e_prev_at timestamptz
) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN e_at > s_at THEN greatest(s_at, e_prev_at)
            WHEN e_at < s_at THEN greatest(s_prev_at, e_at)
            ELSE greatest(s_prev_at, e_prev_at)
       END
$$;

-- The previous reading's register after the merge (where hot_row_changes holds).
CREATE FUNCTION hot_row_prev_kwh(
    s_at timestamptz, s_kwh double precision,
    e_at timestamptz, e_kwh double precision, e_prev_at timestamptz, e_prev_kwh double precision
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN e_at > s_at THEN CASE WHEN e_prev_at > s_at THEN e_prev_kwh ELSE s_kwh END
            WHEN e_at < s_at THEN e_kwh
            ELSE e_prev_kwh
       END
$$;

-- Folds readings into a stream's hot rows by the rule above: one row a device. Rows are
-- written in device order, so that concurrent writers lock hot rows in one order and cannot
-- deadlock. The statement has no join: its plan (sort, insert) is the same for 1 row and
-- 10,000, also when plpgsql caches a generic one.
CREATE FUNCTION merge_meter_state(rows meter_state[]) RETURNS void
LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO meter_state AS s
    SELECT * FROM unnest(rows)
    ORDER BY meter_id
    ON CONFLICT (meter_id) DO UPDATE SET
        read_at = greatest(s.read_at, excluded.read_at),
        kwh_consumed_ac = hot_row_latest(s.read_at, excluded.read_at,
                                         s.kwh_consumed_ac, excluded.kwh_consumed_ac),
        voltage = hot_row_latest(s.read_at, excluded.read_at, s.voltage, excluded.voltage),
        received_at = hot_row_latest(s.read_at, excluded.read_at,
                                     s.received_at, excluded.received_at),
        prev_read_at = hot_row_prev_at(s.read_at, s.prev_read_at,
                                       excluded.read_at, excluded.prev_read_at),
        prev_kwh_consumed_ac = hot_row_prev_kwh(
            s.read_at, s.kwh_consumed_ac, excluded.read_at, excluded.kwh_consumed_ac,
            excluded.prev_read_at, excluded.prev_kwh_consumed_ac)
    WHERE hot_row_changes(s.read_at, s.prev_read_at, excluded.read_at, excluded.prev_read_at);
END
$$;

CREATE FUNCTION merge_vehicle_state(rows vehicle_state[]) RETURNS void
LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO vehicle_state AS s
    SELECT * FROM unnest(rows)
    ORDER BY vehicle_id
    ON CONFLICT (vehicle_id) DO UPDATE SET
        read_at = greatest(s.read_at, excluded.read_at),
        soc = hot_row_latest(s.read_at, excluded.read_at, s.soc, excluded.soc),
        kwh_delivered_dc = hot_row_latest(s.read_at, excluded.read_at,
                                          s.kwh_delivered_dc, excluded.kwh_delivered_dc),
        battery_temp = hot_row_latest(s.read_at, excluded.read_at,
                                      s.battery_temp, excluded.battery_temp),
        received_at = hot_row_latest(s.read_at, excluded.read_at,
                                     s.received_at, excluded.received_at),
        prev_read_at = hot_row_prev_at(s.read_at, s.prev_read_at,
                                       excluded.read_at, excluded.prev_read_at),
        prev_kwh_delivered_dc = hot_row_prev_kwh(
            s.read_at, s.kwh_delivered_dc, excluded.read_at, excluded.kwh_delivered_dc,
            excluded.prev_read_at, excluded.prev_kwh_delivered_dc)
    WHERE hot_row_changes(s.read_at, s.prev_read_at, excluded.read_at, excluded.prev_read_at);
END
$$;

-- Marks dirty the hour of each of a stream's readings (device_ids[i] at times[i]), so that
-- the rollup refresher redoes those hours (see the rollup tables above). Writers call it for
-- new readings older than the `sealed` watermark, which they hold share-locked until they
-- commit. A fresh generation tells the refresher that a mark it is working on was renewed
-- meanwhile. Device order, for the same reason as the merges. (The parameters are named
-- apart from rollup_dirty's columns: plpgsql would read `stream` in ON CONFLICT as one.)
CREATE FUNCTION mark_dirty_hours(stream_name text, device_ids text[], times timestamptz[])
RETURNS void
LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO rollup_dirty (stream, device_id, hour, generation)
    SELECT stream_name, late.device_id, late.hour, nextval('rollup_generation')
    FROM (SELECT DISTINCT r.device_id, date_trunc('hour', r.at) AS hour
          FROM unnest(device_ids, times) AS r (device_id, at)) AS late
    ORDER BY late.device_id, late.hour
    ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation;
END
$$;


-- The read side's share of the energy rule, as functions its statements call instead of
-- repeating it (analytics/queries.sql, rollups/queries.sql). Plain SQL functions: PostgreSQL
-- inlines them into the calling statement, so plans are those of the written-out expressions.

-- The increment into a window's piece (a rollup, or a run of raw readings) from the reading
-- before it, given that increment by `rollup_joined_kwh` (above): counted only when
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

-- Both streams' history in one shape, for statements written once for either stream: filtered
-- on `stream` with a constant, a query reads only that stream's table, through its own indexes
-- and partitions (the planner drops the other branch of the UNION while planning). `sensor` is
-- the meter's voltage or the vehicle's battery temperature; `soc` is NULL for meters.
CREATE VIEW stream_readings AS
SELECT 'meter'::text AS stream, meter_id AS device_id, read_at, kwh_consumed_ac AS kwh,
       voltage AS sensor, NULL::real AS soc
FROM meter_readings
UNION ALL
SELECT 'vehicle'::text, vehicle_id, read_at, kwh_delivered_dc, battery_temp, soc
FROM vehicle_readings;

-- One device's reading just before `before` and not before `not_before`, if any. Not through
-- stream_readings: over a UNION, ORDER BY … LIMIT 1 merges every partition's newest row
-- instead of reading the partitions newest first and stopping at the first. [within_from,
-- within_to) encloses the range and is known when the calling statement starts (where
-- `before` may be a value of another row), so partitions outside it are pruned then.
CREATE FUNCTION stream_reading_before(
    of_stream text, device text, before timestamptz, not_before timestamptz,
    within_from timestamptz, within_to timestamptz
) RETURNS TABLE (read_at timestamptz, kwh double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
-- The stream test stays outside the LIMIT: there a constant false drops the branch while
-- planning, where inside it would leave an empty Sort to run on every call.
SELECT *
FROM (SELECT r.read_at, r.kwh_consumed_ac
      FROM meter_readings AS r
      WHERE r.meter_id = device AND r.read_at < before AND r.read_at >= not_before
        AND r.read_at >= within_from AND r.read_at < within_to
      ORDER BY r.read_at DESC
      LIMIT 1) AS m
WHERE of_stream = 'meter'
UNION ALL
SELECT *
FROM (SELECT r.read_at, r.kwh_delivered_dc
      FROM vehicle_readings AS r
      WHERE r.vehicle_id = device AND r.read_at < before AND r.read_at >= not_before
        AND r.read_at >= within_from AND r.read_at < within_to
      ORDER BY r.read_at DESC
      LIMIT 1) AS v
WHERE of_stream = 'vehicle'
$$;

-- The hour rollups of one stream (`of_stream`, 'meter' or 'vehicle'), computed from its raw
-- readings (rollups/queries.sql writes them to the stream's table). The readings are those of
-- one of three sets, chosen by the arguments (the others NULL), each a branch of the UNION:
--   from_at, to_at                  every reading of the hours [from_at, to_at),
--   from_at, to_at, only_devices    those of some devices only (rolling a failed batch apart),
--   dirty_devices, dirty_hours      every reading of those device-hours (redoing them).
-- The branches not asked for cost nothing: `only_devices IS NULL` is checked once, a NULL
-- bound prunes every partition when the statement starts, `= ANY(NULL)` matches no index
-- entry, and NULL arrays unnest to no rows.
-- The energy added between an hour's readings follows energy_increment and energy_plausible
-- (above); the increment into the hour's first reading, from the reading before the
-- hour however far back, is rollup_joined_kwh/_skipped's. A plain SQL function: PostgreSQL
-- inlines it into the calling statement, with `of_stream` a constant.
CREATE FUNCTION rollup_hours(
    of_stream text, interval_kwh boolean, max_kw double precision,
    from_at timestamptz, to_at timestamptz, only_devices text[],
    dirty_devices text[], dirty_hours timestamptz[]
) RETURNS TABLE (
    device_id text, hour timestamptz, readings bigint, first_at timestamptz,
    last_at timestamptz, first_kwh double precision, last_kwh double precision,
    added_kwh double precision, skipped bigint, sensor_sum real, sensor_min real,
    sensor_max real, soc_min real, soc_max real, prev_at timestamptz,
    prev_kwh double precision, joined_kwh double precision, joined_skipped smallint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT h.device_id, h.hour, h.readings, h.first_at, h.last_at, h.first_kwh, h.last_kwh,
       h.added_kwh, h.skipped, h.sensor_sum, h.sensor_min, h.sensor_max, h.soc_min, h.soc_max,
       p.read_at, p.kwh,
       coalesce(rollup_joined_kwh(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                  interval_kwh), 0),
       coalesce(rollup_joined_skipped(h.first_at, h.first_kwh, p.read_at, p.kwh, max_kw,
                                      interval_kwh), 0::smallint)
FROM (
    SELECT steps.device_id, steps.hour, count(*) AS readings, min(steps.read_at) AS first_at,
           max(steps.read_at) AS last_at,
           (array_agg(steps.kwh ORDER BY steps.read_at))[1] AS first_kwh,
           (array_agg(steps.kwh ORDER BY steps.read_at DESC))[1] AS last_kwh,
           coalesce(sum(steps.added)
                        FILTER (WHERE energy_plausible(steps.added, steps.seconds, max_kw)), 0)
               AS added_kwh,
           count(*) FILTER (WHERE NOT energy_plausible(steps.added, steps.seconds, max_kw))
               AS skipped,
           sum(steps.sensor) AS sensor_sum, min(steps.sensor) AS sensor_min,
           max(steps.sensor) AS sensor_max, min(steps.soc) AS soc_min, max(steps.soc) AS soc_max
    FROM (
        SELECT r.device_id, date_trunc('hour', r.read_at) AS hour, r.read_at, r.kwh, r.sensor,
               r.soc,
               energy_increment(r.kwh, lag(r.kwh) OVER w, interval_kwh) AS added,
               EXTRACT(epoch FROM r.read_at - lag(r.read_at) OVER w)::float8 AS seconds
        FROM (
            SELECT *
            FROM stream_readings AS s
            WHERE s.stream = of_stream AND s.read_at >= from_at AND s.read_at < to_at
              AND only_devices IS NULL
            UNION ALL
            SELECT *
            FROM stream_readings AS s
            WHERE s.stream = of_stream AND s.read_at >= from_at AND s.read_at < to_at
              AND s.device_id = ANY(only_devices)
            UNION ALL
            SELECT s.*
            FROM unnest(dirty_devices, dirty_hours) AS d (device_id, hour)
            JOIN stream_readings AS s
              ON s.stream = of_stream AND s.device_id = d.device_id AND s.read_at >= d.hour
             AND s.read_at < d.hour + interval '1 hour'
        ) AS r
        WINDOW w AS (PARTITION BY r.device_id, date_trunc('hour', r.read_at) ORDER BY r.read_at)
    ) AS steps
    GROUP BY steps.device_id, steps.hour
) AS h
LEFT JOIN LATERAL stream_reading_before(of_stream, h.device_id, h.hour, '-infinity',
                                         '-infinity', 'infinity') AS p ON true
$$;

-- Both streams' hour rollups in one shape, as stream_readings for the readings: `sensor_sum`
-- is the voltage or battery temperature sum, `soc_min`/`soc_max` NULL for meters.
CREATE VIEW stream_rollups AS
SELECT 'meter'::text AS stream, meter_id AS device_id, hour, readings, first_kwh, last_at,
       last_kwh, added_kwh, skipped, prev_at, joined_kwh, joined_skipped,
       voltage_sum AS sensor_sum, NULL::real AS soc_min, NULL::real AS soc_max, first_at,
       prev_kwh
FROM meter_rollups
UNION ALL
SELECT 'vehicle'::text, vehicle_id, hour, readings, first_kwh, last_at, last_kwh, added_kwh,
       skipped, prev_at, joined_kwh, joined_skipped, battery_temp_sum, soc_min, soc_max,
       first_at, prev_kwh
FROM vehicle_rollups;

-- The day rollups of one stream from its hour rollups of complete UTC days (rollups/queries.sql
-- writes them to the stream's table): the energy added between the day's readings is each
-- hour's, plus the increment into every hour's first reading but the day's first, whose
-- predecessor is before the day (window_joined_kwh's rule, with the day as the window). The
-- days are those of the hours [from_at, to_at), all rolled, or the complete days of the
-- device-hours (devices, hours) that were redone or repaired; the other pair NULL. Inlined
-- into the calling statement like rollup_hours.
CREATE FUNCTION rollup_days(
    of_stream text, from_at timestamptz, to_at timestamptz, devices text[],
    hours timestamptz[]
) RETURNS TABLE (
    device_id text, day timestamptz, readings integer, first_kwh double precision,
    last_at timestamptz, last_kwh double precision, added_kwh double precision,
    skipped integer, prev_at timestamptz, joined_kwh double precision,
    joined_skipped smallint, sensor_sum double precision, soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT u.device_id, date_trunc('day', u.hour, 'UTC'),
       sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1],
       max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh,
                                           date_trunc('day', u.hour, 'UTC'), false)),
       sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped,
                                             date_trunc('day', u.hour, 'UTC')))::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1],
       (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1],
       sum(u.sensor_sum), min(u.soc_min), max(u.soc_max)
FROM (
    SELECT *
    FROM stream_rollups AS s
    WHERE s.stream = of_stream AND s.hour >= from_at AND s.hour < to_at
    UNION ALL
    SELECT s.*
    FROM (
        SELECT DISTINCT d.device_id, date_trunc('day', d.hour, 'UTC') AS day
        FROM unnest(devices, hours) AS d (device_id, hour)
    ) AS touched
    JOIN stream_rollups AS s
      ON s.stream = of_stream AND s.device_id = touched.device_id AND s.hour >= touched.day
     AND s.hour < touched.day + interval '1 day'
    WHERE touched.day + interval '1 day' <= rollups_rolled()
) AS u
GROUP BY u.device_id, date_trunc('day', u.hour, 'UTC')
$$;

-- The repaired predecessor of each device's next rolled hour after the hours (devices[i],
-- hours[i]) were redone: the device's reading before that rollup's hour, and the increment
-- from it into the rollup's first reading (rollup_joined_kwh/_skipped). The statements of
-- rollups/queries.sql write it to the stream's table.
CREATE FUNCTION rollup_repairs(
    of_stream text, devices text[], hours timestamptz[], interval_kwh boolean,
    max_kw double precision
) RETURNS TABLE (
    device_id text, hour timestamptz, prev_at timestamptz, prev_kwh double precision,
    joined_kwh double precision, joined_skipped smallint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT u.device_id, u.hour, p.read_at, p.kwh,
       coalesce(rollup_joined_kwh(u.first_at, u.first_kwh, p.read_at, p.kwh, max_kw,
                                  interval_kwh), 0),
       coalesce(rollup_joined_skipped(u.first_at, u.first_kwh, p.read_at, p.kwh, max_kw,
                                      interval_kwh), 0::smallint)
FROM (
    SELECT DISTINCT d.device_id, n.hour
    FROM unnest(devices, hours) AS d (device_id, hour)
    CROSS JOIN LATERAL (
        SELECT min(s.hour) AS hour
        FROM stream_rollups AS s
        WHERE s.stream = of_stream AND s.device_id = d.device_id AND s.hour > d.hour
    ) AS n
    WHERE n.hour IS NOT NULL
) AS next
JOIN stream_rollups AS u
  ON u.stream = of_stream AND u.device_id = next.device_id AND u.hour = next.hour
LEFT JOIN LATERAL stream_reading_before(of_stream, u.device_id, u.hour, '-infinity',
                                        '-infinity', 'infinity') AS p ON true
$$;

-- Both streams' day rollups in one shape, as stream_rollups for the hour rollups (meters keep
-- no sensor sum per day).
CREATE VIEW stream_day_rollups AS
SELECT 'meter'::text AS stream, meter_id AS device_id, day, readings, first_kwh, last_at,
       last_kwh, added_kwh, skipped, prev_at, joined_kwh, joined_skipped,
       NULL::float8 AS sensor_sum, NULL::real AS soc_min, NULL::real AS soc_max
FROM meter_day_rollups
UNION ALL
SELECT 'vehicle'::text, vehicle_id, day, readings, first_kwh, last_at, last_kwh, added_kwh,
       skipped, prev_at, joined_kwh, joined_skipped, battery_temp_sum, soc_min, soc_max
FROM vehicle_day_rollups;

-- One device's readings in [from_at, to_at). The window functions read the hours not rolled
-- up yet and the dirty hours through this: the bounds depend on the `rolled` watermark or on
-- a dirty hour, and inlined into a statement such a bound either cannot prune partitions when
-- the statement starts (a subquery's value) or is evaluated once per partition when it does
-- (a function call: about 40 watermark lookups per scan, 1.6 ms of a 24 h report). Here the
-- bounds are parameters of a plan PL/pgSQL keeps for the session, pruned when it starts. One
-- query per stream rather than stream_readings: a kept (generic) plan of the view would carry
-- and start both streams' scans.
CREATE FUNCTION stream_readings_between(
    of_stream text, device text, from_at timestamptz, to_at timestamptz
) RETURNS TABLE (read_at timestamptz, kwh double precision, sensor real, soc real)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF of_stream = 'meter' THEN
        RETURN QUERY
        SELECT r.read_at, r.kwh_consumed_ac, r.voltage, NULL::real
        FROM meter_readings AS r
        WHERE r.meter_id = device AND r.read_at >= from_at AND r.read_at < to_at;
    ELSE
        RETURN QUERY
        SELECT r.read_at, r.kwh_delivered_dc, r.battery_temp, r.soc
        FROM vehicle_readings AS r
        WHERE r.vehicle_id = device AND r.read_at >= from_at AND r.read_at < to_at;
    END IF;
END
$$;

-- Energy of one device of `of_stream` over [window_from, window_to): readings, counted kWh,
-- skipped (implausible) increments, and for vehicles the sum of battery temperatures and the
-- SoC range. Equal to energy_engine.energy.window_energy over the raw readings: a window is
-- pieced together from the baseline reading, raw rows at its edges and in dirty hours, day
-- rollups of whole clean days and hour rollups of the other whole clean hours; the
-- increments between consecutive pieces follow the same rules as between raw readings.
-- [outer_from, outer_to) encloses the window and is known when the query is planned (the
-- caller's whole window, where window_from/to may be one assignment's or one step's part of
-- it): repeated on every scan, it lets PostgreSQL prune the partitions outside it. A plain
-- SQL function, inlined into the calling statement with `of_stream` a constant: only that
-- stream's tables are read.
CREATE FUNCTION stream_window_energy(
    of_stream text, device text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean,
    outer_from timestamptz, outer_to timestamptz
) RETURNS TABLE (
    readings bigint, kwh double precision, skipped bigint, sensor_sum double precision,
    soc_min real, soc_max real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH bounds AS MATERIALIZED (  -- once per call (OFFSET 0: the watermark read once)
    SELECT hf, ht, rollup_days_from(hf, ht) AS df, rollup_days_to(hf, ht) AS dt,
           (SELECT array_agg(d.hour ORDER BY d.hour)  -- NULL: no dirty hour
            FROM rollup_dirty AS d
            WHERE d.stream = of_stream AND d.device_id = device AND d.hour < b.ht)
               AS dirty_before
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
    SELECT b.read_at AS first_at, b.read_at AS last_at, b.kwh AS first_kwh, b.kwh AS last_kwh,
           0::float8 AS added, 0::bigint AS skipped, 0::bigint AS readings,
           0::float8 AS sensor_sum, NULL::real AS soc_min, NULL::real AS soc_max,
           false AS counted, false AS joined_in
    FROM stream_reading_before(of_stream, device, window_from, window_from - lookback,
                               outer_from - lookback, outer_to) AS b
    UNION ALL
    -- the partial first hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.sensor, r.soc, r.soc, true, false
    FROM stream_readings AS r
    WHERE r.stream = of_stream AND r.device_id = device AND r.read_at >= window_from
      AND r.read_at < least(window_hour_from(window_from), window_to)
      AND r.read_at >= outer_from AND r.read_at < outer_to
    UNION ALL
    -- the hours not rolled up (yet), and the partial last hour
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.sensor, r.soc, r.soc, true, false
    FROM bounds AS b
    CROSS JOIN LATERAL stream_readings_between(of_stream, device, greatest(b.ht, window_from),
                                               window_to) AS r
    UNION ALL
    -- the rolled hours, when settled: one piece summing every rollup with the increment into
    -- its first reading from its stored predecessor (counted when within the window or the
    -- baseline lookback, like a lag would), ordered by its start, ending with the last one
    -- (The bounds are joined in, not read by scalar subqueries: called laterally, once per
    -- step of a series, such a subquery in a scan below the stream views was evaluated once
    -- for all calls on PostgreSQL 15 and 16, and every later step read the first one's
    -- hours; test_series_steps_read_rollups_of_their_own_hours.)
    SELECT window_hour_from(window_from), l.last_at, NULL, l.last_kwh, a.added, a.skipped,
           a.readings, a.sensor_sum, a.soc_min, a.soc_max, true, true
    FROM bounds AS b
    CROSS JOIN LATERAL (
        SELECT sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh,
                                                   window_from - lookback, interval_kwh))
                   AS added,
               sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped,
                                                     window_from - lookback)) AS skipped,
               sum(u.readings) AS readings, sum(u.sensor_sum) AS sensor_sum,
               min(u.soc_min) AS soc_min, max(u.soc_max) AS soc_max
        FROM (  -- whole days from day rollups, the hours around them from hour rollups
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   sensor_sum, soc_min, soc_max
            FROM stream_rollups
            WHERE stream = of_stream AND device_id = device AND hour >= b.hf AND hour < b.df
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   sensor_sum, soc_min, soc_max
            FROM stream_day_rollups
            WHERE stream = of_stream AND device_id = device AND day >= b.df AND day < b.dt
            UNION ALL
            SELECT added_kwh, skipped, prev_at, joined_kwh, joined_skipped, first_kwh, readings,
                   sensor_sum, soc_min, soc_max
            FROM stream_rollups
            WHERE stream = of_stream AND device_id = device AND hour >= b.dt AND hour < b.ht
        ) AS u
        WHERE (SELECT yes FROM settled)
        HAVING count(*) > 0
    ) AS a
    CROSS JOIN LATERAL (  -- the last rolled reading, for the next piece to join to
        SELECT last_at, last_kwh
        FROM stream_rollups
        WHERE stream = of_stream AND device_id = device AND hour < b.ht
        ORDER BY hour DESC
        LIMIT 1
    ) AS l
    UNION ALL
    -- otherwise: every clean rollup, and the raw rows of the dirty hours
    SELECT u.first_at, u.last_at, u.first_kwh, u.last_kwh, u.added_kwh, u.skipped, u.readings,
           u.sensor_sum, u.soc_min, u.soc_max, true, false
    FROM bounds AS b
    JOIN stream_rollups AS u
      ON u.stream = of_stream AND u.device_id = device AND u.hour >= b.hf AND u.hour < b.ht
    WHERE NOT (SELECT yes FROM settled)
      AND NOT EXISTS (SELECT FROM dirty WHERE dirty.hour = u.hour)
    UNION ALL
    SELECT r.read_at, r.read_at, r.kwh, r.kwh, 0, 0, 1, r.sensor, r.soc, r.soc, true, false
    FROM dirty AS d
    CROSS JOIN LATERAL stream_readings_between(
        of_stream, device, greatest(d.hour, window_from),
        least(d.hour + interval '1 hour', window_to)) AS r
),
steps AS (
    SELECT counted, added, skipped, readings, sensor_sum, soc_min, soc_max,
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
       sum(sensor_sum),
       min(soc_min),
       max(soc_max)
FROM steps
WHERE counted
$$;

-- `stream_window_energy` for one meter assignment's part of a window, planned on its own.
-- Inlined in a statement, the function's scans are bounded by the part's start and end only
-- as values of the assignment row, which cannot prune partitions when the statement starts:
-- every scan started on every partition of the enclosing window (EXPLAIN ANALYZE of a 30-day
-- report: 125 partition scans started, 4 read). Here the bounds are parameters. Statements
-- call it for the parts that do not cover the whole window (a meter switched inside it).
-- Always the generic plan, which prunes partitions when it starts: left to choose, PL/pgSQL
-- kept planning a custom plan for every call (the generic plan's estimate counts every
-- partition), 1.3 ms a call against 0.17 ms (EXPLAIN ANALYZE of a fleet of 100 vehicles, 20
-- of them switching meters).
CREATE FUNCTION meter_segment_energy(
    meter text, window_from timestamptz, window_to timestamptz,
    lookback interval, max_kw double precision, interval_kwh boolean
) RETURNS TABLE (readings bigint, kwh double precision, skipped bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    SELECT e.readings, e.kwh, e.skipped
    FROM stream_window_energy('meter', meter, window_from, window_to, lookback, max_kw,
                              interval_kwh, window_from, window_to) AS e;
END
$$;

-- Every device of `of_stream` over one window at once (the fleet ranking): per device its
-- readings, counted kWh, skipped increments and sensor sum. The window is [window_from,
-- window_to); [hours_from, hours_to) its rolled-up whole hours; [window_from, raw_to) its
-- partial first hour; a predecessor before `baseline_from` is no baseline. The totals are
-- pieced together from parts that each carry the reading before them, so the increment into
-- a part is computed row by row, with no ordering of the parts:
--  * rollups of devices without dirty hours (nearly all): their stored predecessor, summed per
--    device by a (parallel) hash aggregate straight off the rollups' hour index;
--  * rollups of devices with dirty hours: skipping the dirty hours, and looking the predecessor
--    up for the next rolled hour after a dirty one (its stored one may be stale);
--  * raw readings, in runs (the partial first hour, the hours not rolled up yet, each dirty
--    hour): the previous reading of the run, or for a run's first reading, looked up.
-- The increment into a part follows rollup_joined_kwh/_skipped, counted by
-- window_joined_kwh/_skipped's baseline rule. Inlined into the calling statement with
-- `of_stream` a constant, like stream_window_energy.
CREATE FUNCTION stream_fleet_totals(
    of_stream text, window_from timestamptz, window_to timestamptz, hours_from timestamptz,
    hours_to timestamptz, raw_to timestamptz, max_kw double precision, interval_kwh boolean,
    baseline_from timestamptz
) RETURNS TABLE (
    device text, readings bigint, kwh double precision, skipped bigint,
    sensor_sum double precision
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH
-- Whole UTC days come from day rollups, the hours around them from hour rollups.
settled AS (
    SELECT u.device_id AS device, sum(u.readings) AS readings,
           sum(u.added_kwh + window_joined_kwh(u.prev_at, u.joined_kwh, u.first_kwh,
                                               baseline_from, interval_kwh)) AS kwh,
           sum(u.skipped + window_joined_skipped(u.prev_at, u.joined_skipped, baseline_from))
               AS skipped,
           sum(u.sensor_sum) AS sensor_sum
    FROM (
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_rollups
        WHERE stream = of_stream AND hour >= hours_from
          AND hour < rollup_days_from(hours_from, hours_to)
        UNION ALL
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_day_rollups
        WHERE stream = of_stream AND day >= rollup_days_from(hours_from, hours_to)
          AND day < rollup_days_to(hours_from, hours_to)
        UNION ALL
        SELECT device_id, readings, added_kwh, prev_at, joined_kwh, first_kwh, skipped,
               joined_skipped, sensor_sum
        FROM stream_rollups
        WHERE stream = of_stream AND hour >= rollup_days_to(hours_from, hours_to)
          AND hour < hours_to
    ) AS u
    GROUP BY u.device_id
),
dirty AS MATERIALIZED (
    SELECT device_id AS device, hour
    FROM rollup_dirty
    WHERE stream = of_stream AND hour < hours_to
),
-- The next rolled hour after a dirty one: its stored predecessor may be stale.
suspect AS MATERIALIZED (
    SELECT DISTINCT d.device, n.hour
    FROM dirty AS d
    CROSS JOIN LATERAL (
        SELECT min(u.hour) AS hour
        FROM stream_rollups AS u
        WHERE u.stream = of_stream AND u.device_id = d.device AND u.hour > d.hour
    ) AS n
    WHERE n.hour >= hours_from AND n.hour < hours_to
      AND NOT EXISTS (SELECT FROM dirty AS o WHERE o.device = d.device AND o.hour = n.hour)
),
unsettled_pieces AS (
    SELECT u.device_id AS device, u.first_at, u.first_kwh, u.prev_at, u.prev_kwh,
           u.added_kwh AS added, u.skipped, u.readings, u.sensor_sum
    FROM stream_rollups AS u
    WHERE u.stream = of_stream AND u.hour >= hours_from AND u.hour < hours_to
      AND u.device_id IN (SELECT device FROM dirty)
      AND NOT EXISTS (SELECT FROM dirty AS d WHERE d.device = u.device_id AND d.hour = u.hour)
      AND NOT EXISTS (SELECT FROM suspect AS s
                      WHERE s.device = u.device_id AND s.hour = u.hour)
    UNION ALL
    SELECT u.device_id, u.first_at, u.first_kwh, p.read_at, p.kwh, u.added_kwh, u.skipped,
           u.readings, u.sensor_sum
    FROM suspect AS s
    JOIN stream_rollups AS u
      ON u.stream = of_stream AND u.device_id = s.device AND u.hour = s.hour
    LEFT JOIN LATERAL stream_reading_before(of_stream, u.device_id, u.hour, baseline_from,
                                            baseline_from, window_to) AS p ON true
),
raw AS (
    SELECT r.device_id AS device, r.read_at, r.kwh, r.sensor::float8 AS sensor,
           window_from AS run
    FROM stream_readings AS r
    WHERE r.stream = of_stream AND r.read_at >= window_from AND r.read_at < raw_to
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, hours_to
    FROM stream_readings AS r
    WHERE r.stream = of_stream AND r.read_at >= hours_to AND r.read_at < window_to
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, d.hour
    FROM dirty AS d
    JOIN stream_readings AS r
      ON r.stream = of_stream AND r.device_id = d.device AND r.read_at >= d.hour
     AND r.read_at < d.hour + interval '1 hour'
    WHERE d.hour >= hours_from AND r.read_at >= hours_from AND r.read_at < hours_to
),
raw_lags AS (
    SELECT device, read_at, kwh, sensor, run,
           lag(read_at) OVER w AS prev_at, lag(kwh) OVER w AS prev_kwh
    FROM raw
    WINDOW w AS (PARTITION BY device, run ORDER BY read_at)
),
pieces AS (
    SELECT device, first_at, first_kwh, prev_at, prev_kwh, added, skipped, readings, sensor_sum
    FROM unsettled_pieces
    UNION ALL
    SELECT device, read_at, kwh, prev_at, prev_kwh, 0, 0, 1, sensor
    FROM raw_lags
    WHERE prev_at IS NOT NULL
    UNION ALL
    SELECT l.device, l.read_at, l.kwh, p.read_at, p.kwh, 0, 0, 1, l.sensor
    FROM raw_lags AS l
    LEFT JOIN LATERAL stream_reading_before(of_stream, l.device, l.run, baseline_from,
                                            baseline_from, window_to) AS p ON true
    WHERE l.prev_at IS NULL
)
SELECT device, sum(readings)::bigint, sum(kwh), sum(skipped)::bigint, sum(sensor_sum)
FROM (
    -- Devices with dirty hours are left out after summing: cheaper than testing each rollup
    -- with an anti join.
    SELECT * FROM settled
    WHERE device NOT IN (SELECT device FROM dirty)
    UNION ALL
    SELECT device, sum(readings) AS readings,
           sum(added + window_joined_kwh(
                   prev_at,
                   rollup_joined_kwh(first_at, first_kwh, prev_at, prev_kwh, max_kw,
                                     interval_kwh),
                   first_kwh, baseline_from, interval_kwh)) AS kwh,
           sum(skipped + window_joined_skipped(
                   prev_at,
                   rollup_joined_skipped(first_at, first_kwh, prev_at, prev_kwh, max_kw,
                                         interval_kwh),
                   baseline_from)) AS skipped,
           sum(sensor_sum) AS sensor_sum
    FROM pieces
    GROUP BY device
) AS parts
GROUP BY device
$$;
