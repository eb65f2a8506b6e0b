-- Packed history: day partitions of readings older than a settable age (Settings.pack_after)
-- are rewritten as one row per device and UTC hour holding the hour's readings in arrays,
-- the way TimescaleDB compresses chunks, in plain SQL (no extension is available to the
-- embedded server). A reading costs its values and 2 bytes of time instead of a 28-byte tuple
-- header and line pointer plus a primary-key entry: about 16 (meter) and 21 (vehicle) bytes
-- at one reading a minute, against about 110 raw.
--
-- Readers see one history: stream_history (below) and stream_reading_before read the raw and
-- the packed form. A reading is in exactly one of them: packing moves a raw partition's rows
-- in one statement (DELETE … RETURNING into the packed INSERT), and a packed partition's raw
-- day keeps a trigger that drops a late reading already packed (idempotency on device and
-- time across both forms). The move is MVCC-safe, unlike a TRUNCATE, which would show a
-- reader whose snapshot predates it an empty raw day and no packed rows; the emptied raw
-- partition's space comes back with VACUUM and REINDEX … CONCURRENTLY (lifecycle/), both of
-- which wait out older snapshots.
-- A late reading that is new lands in the raw day, is counted by the rollups like any late
-- reading (it marks its hour dirty), and is merged into its packed hour by the next packing.

-- `seconds[i]` is reading i's whole seconds into the hour, `micros[i]` the microseconds
-- beyond them (NULL when every reading of the hour is on a whole second). Arrays are in time
-- order. Partitioned by UTC month (see pack_reading_partition); retention drops a packed month
-- once it lies wholly past the retention period.
CREATE TABLE meter_readings_packed (
    hour            timestamptz        NOT NULL,
    meter_id        text               NOT NULL,
    seconds         smallint[]         NOT NULL,
    micros          integer[],
    kwh_consumed_ac double precision[] NOT NULL,
    voltage         real[]             NOT NULL,
    PRIMARY KEY (meter_id, hour) WITH (fillfactor = 100)
) PARTITION BY RANGE (hour);

CREATE TABLE vehicle_readings_packed (
    hour             timestamptz        NOT NULL,
    vehicle_id       text               NOT NULL,
    seconds          smallint[]         NOT NULL,
    micros           integer[],
    kwh_delivered_dc double precision[] NOT NULL,
    soc              real[]             NOT NULL,
    battery_temp     real[]             NOT NULL,
    PRIMARY KEY (vehicle_id, hour) WITH (fillfactor = 100)
) PARTITION BY RANGE (hour);

-- Finds a packed day's rows in its month without reading the month (pack_reading_partition):
-- rows are written a day at a time, so block ranges follow the hour.
CREATE INDEX meter_readings_packed_hour ON meter_readings_packed USING brin (hour);
CREATE INDEX vehicle_readings_packed_hour ON vehicle_readings_packed USING brin (hour);

-- A packed reading's time.
CREATE FUNCTION packed_time(hour timestamptz, seconds smallint, micros integer)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$  -- STABLE as timestamptz + interval is: inlined
SELECT hour + (seconds * 1000000::bigint + coalesce(micros, 0)) * interval '1 microsecond'
$$;

-- Both streams' packed readings, unpacked, in stream_readings' shape plus the row's `hour`:
-- bound `hour` as well as `read_at`, or every packed row is unpacked to be filtered.
CREATE VIEW stream_packed_readings AS
SELECT 'meter'::text AS stream, p.meter_id AS device_id,
       packed_time(p.hour, u.seconds, u.micros) AS read_at, u.kwh, u.sensor,
       NULL::real AS soc, p.hour
FROM meter_readings_packed AS p
CROSS JOIN LATERAL unnest(p.seconds, p.micros, p.kwh_consumed_ac, p.voltage)
    AS u (seconds, micros, kwh, sensor)
UNION ALL
SELECT 'vehicle'::text, p.vehicle_id, packed_time(p.hour, u.seconds, u.micros), u.kwh,
       u.sensor, u.soc, p.hour
FROM vehicle_readings_packed AS p
CROSS JOIN LATERAL unnest(p.seconds, p.micros, p.kwh_delivered_dc, p.battery_temp, p.soc)
    AS u (seconds, micros, kwh, sensor, soc);

-- Every reading of one stream in [from_at, to_at), raw or packed, in stream_readings' shape.
-- A plain SQL function: inlined into the calling statement, with `of_stream` a constant and
-- the caller's device filter pushed into both forms' index scans; the packed partitions
-- outside the window are pruned like the raw ones.
CREATE FUNCTION stream_history(of_stream text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (
    stream text, device_id text, read_at timestamptz, kwh double precision, sensor real,
    soc real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT s.stream, s.device_id, s.read_at, s.kwh, s.sensor, s.soc
FROM stream_readings AS s
WHERE s.stream = of_stream AND s.read_at >= from_at AND s.read_at < to_at
UNION ALL
SELECT p.stream, p.device_id, p.read_at, p.kwh, p.sensor, p.soc
FROM stream_packed_readings AS p
WHERE p.stream = of_stream AND p.hour >= date_trunc('hour', from_at, 'UTC') AND p.hour < to_at
  AND p.read_at >= from_at AND p.read_at < to_at
$$;

-- One device's readings of one stream in [from_at, to_at), raw or packed: stream_history with
-- the device inside, so that a device known only from another row (a lateral call) still
-- reaches both forms' index scans; PostgreSQL does not push such a filter into a UNION.
CREATE FUNCTION stream_device_history(
    of_stream text, device text, from_at timestamptz, to_at timestamptz
) RETURNS TABLE (
    stream text, device_id text, read_at timestamptz, kwh double precision, sensor real,
    soc real
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT s.stream, s.device_id, s.read_at, s.kwh, s.sensor, s.soc
FROM stream_readings AS s
WHERE s.stream = of_stream AND s.device_id = device AND s.read_at >= from_at
  AND s.read_at < to_at
UNION ALL
SELECT p.stream, p.device_id, p.read_at, p.kwh, p.sensor, p.soc
FROM stream_packed_readings AS p
WHERE p.stream = of_stream AND p.device_id = device
  AND p.hour >= date_trunc('hour', from_at, 'UTC') AND p.hour < to_at
  AND p.read_at >= from_at AND p.read_at < to_at
$$;

-- One device's reading just before `before`, raw or packed (see 0001_baseline.sql for the
-- arguments). The packed candidate is the newest reading before `before` of the device's two
-- newest packed hours that start before it: the newest may hold only later readings.
CREATE OR REPLACE FUNCTION stream_reading_before(
    of_stream text, device text, before timestamptz, not_before timestamptz,
    within_from timestamptz, within_to timestamptz
) RETURNS TABLE (read_at timestamptz, kwh double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT *
FROM (SELECT c.read_at, c.kwh
      FROM (SELECT *
            FROM (SELECT r.read_at, r.kwh_consumed_ac AS kwh
                  FROM meter_readings AS r
                  WHERE r.meter_id = device AND r.read_at < before AND r.read_at >= not_before
                    AND r.read_at >= within_from AND r.read_at < within_to
                  ORDER BY r.read_at DESC
                  LIMIT 1) AS raw
            UNION ALL
            SELECT packed_time(p.hour, u.seconds, u.micros), u.kwh
            FROM (SELECT *
                  FROM meter_readings_packed AS p
                  WHERE p.meter_id = device AND p.hour < before
                    AND p.hour >= date_trunc('hour', not_before, 'UTC')
                    AND p.hour >= date_trunc('hour', within_from, 'UTC') AND p.hour < within_to
                  ORDER BY p.hour DESC
                  LIMIT 2) AS p
            CROSS JOIN LATERAL unnest(p.seconds, p.micros, p.kwh_consumed_ac)
                AS u (seconds, micros, kwh)
            WHERE packed_time(p.hour, u.seconds, u.micros) < before
              AND packed_time(p.hour, u.seconds, u.micros) >= not_before
              AND packed_time(p.hour, u.seconds, u.micros) >= within_from
              AND packed_time(p.hour, u.seconds, u.micros) < within_to) AS c
      ORDER BY c.read_at DESC
      LIMIT 1) AS m
WHERE of_stream = 'meter'
UNION ALL
SELECT *
FROM (SELECT c.read_at, c.kwh
      FROM (SELECT *
            FROM (SELECT r.read_at, r.kwh_delivered_dc AS kwh
                  FROM vehicle_readings AS r
                  WHERE r.vehicle_id = device AND r.read_at < before
                    AND r.read_at >= not_before AND r.read_at >= within_from
                    AND r.read_at < within_to
                  ORDER BY r.read_at DESC
                  LIMIT 1) AS raw
            UNION ALL
            SELECT packed_time(p.hour, u.seconds, u.micros), u.kwh
            FROM (SELECT *
                  FROM vehicle_readings_packed AS p
                  WHERE p.vehicle_id = device AND p.hour < before
                    AND p.hour >= date_trunc('hour', not_before, 'UTC')
                    AND p.hour >= date_trunc('hour', within_from, 'UTC') AND p.hour < within_to
                  ORDER BY p.hour DESC
                  LIMIT 2) AS p
            CROSS JOIN LATERAL unnest(p.seconds, p.micros, p.kwh_delivered_dc)
                AS u (seconds, micros, kwh)
            WHERE packed_time(p.hour, u.seconds, u.micros) < before
              AND packed_time(p.hour, u.seconds, u.micros) >= not_before
              AND packed_time(p.hour, u.seconds, u.micros) >= within_from
              AND packed_time(p.hour, u.seconds, u.micros) < within_to) AS c
      ORDER BY c.read_at DESC
      LIMIT 1) AS v
WHERE of_stream = 'vehicle'
$$;

-- One device's readings in [from_at, to_at), raw or packed (see 0001_baseline.sql for why
-- PL/pgSQL and one query a stream).
CREATE OR REPLACE FUNCTION stream_readings_between(
    of_stream text, device text, from_at timestamptz, to_at timestamptz
) RETURNS TABLE (read_at timestamptz, kwh double precision, sensor real, soc real)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF of_stream = 'meter' THEN
        RETURN QUERY
        SELECT h.read_at, h.kwh, h.sensor, h.soc
        FROM stream_device_history('meter', device, from_at, to_at) AS h;
    ELSE
        RETURN QUERY
        SELECT h.read_at, h.kwh, h.sensor, h.soc
        FROM stream_device_history('vehicle', device, from_at, to_at) AS h;
    END IF;
END
$$;

-- Drops a late reading that is already packed: set on a raw day partition once it has been
-- packed (pack_reading_partition). Returning NULL skips the row, so an INSERT … ON CONFLICT
-- DO NOTHING … RETURNING treats it as the duplicate it is.
CREATE FUNCTION skip_packed_reading() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[0] = 'meter' THEN
        IF EXISTS (
            SELECT FROM meter_readings_packed AS p, unnest(p.seconds, p.micros) AS u (s, us)
            WHERE p.meter_id = NEW.meter_id AND p.hour = date_trunc('hour', NEW.read_at, 'UTC')
              AND packed_time(p.hour, u.s, u.us) = NEW.read_at
        ) THEN
            RETURN NULL;
        END IF;
    ELSIF EXISTS (
        SELECT FROM vehicle_readings_packed AS p, unnest(p.seconds, p.micros) AS u (s, us)
        WHERE p.vehicle_id = NEW.vehicle_id AND p.hour = date_trunc('hour', NEW.read_at, 'UTC')
          AND packed_time(p.hour, u.s, u.us) = NEW.read_at
    ) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

-- Every partition of history, raw and packed, with its parent and time range, read from the
-- catalog (not from names): what packing, retirement and retention walk over.
CREATE VIEW history_partitions AS
SELECT c.oid::regclass AS child, p.relname::text AS parent,
       b.m[1]::timestamptz AS range_from, b.m[2]::timestamptz AS range_to
FROM pg_inherits AS i
JOIN pg_class AS p ON p.oid = i.inhparent
JOIN pg_class AS c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b (m)
WHERE p.relname IN ('meter_readings', 'vehicle_readings', 'meter_readings_packed',
                    'vehicle_readings_packed');

-- Packs one raw day partition of meter_readings or vehicle_readings (anything else is
-- refused): its readings, with those already packed for the hours they touch, become one row
-- per device and hour of the day's packed partition (created when missing), deleted from
-- the raw partition in the same statement, and the raw partition gets the
-- skip_packed_reading trigger. Returns the readings moved.
--
-- Locks SHARE ROW EXCLUSIVE on the raw partition, which readers pass and a write to that day
-- waits for: a late reading more than Settings.pack_after old may wait for the packing of its
-- day (and meet statement_timeout: answered 503, to be retried).
CREATE FUNCTION pack_reading_partition(child regclass) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    parent    text;
    stream    text;
    day_from  timestamptz;
    day_to    timestamptz;
    packed    text;
    moved     bigint;
    merging   boolean;
BEGIN
    SELECT h.parent, h.range_from, h.range_to
    INTO parent, day_from, day_to
    FROM history_partitions AS h
    WHERE h.child = pack_reading_partition.child
      AND h.parent IN ('meter_readings', 'vehicle_readings');
    IF parent IS NULL THEN
        RAISE EXCEPTION '% is not a partition of meter_readings or vehicle_readings', child;
    END IF;
    stream := CASE parent WHEN 'meter_readings' THEN 'meter' ELSE 'vehicle' END;

    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', child);
    EXECUTE format('SELECT EXISTS (SELECT FROM %s)', child) INTO STRICT merging;
    IF NOT merging THEN
        RETURN 0;
    END IF;

    -- Packed partitions hold a UTC month: a year of packed history is 12 partitions, not 365,
    -- which keeps the readers' kept plans (they lock every partition they might read) small.
    packed := parent || '_packed_' || to_char(day_from AT TIME ZONE 'UTC', 'YYYYMM');
    IF to_regclass(packed) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            packed, parent || '_packed',
            date_trunc('month', day_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
            (date_trunc('month', day_from AT TIME ZONE 'UTC') + interval '1 month')
                AT TIME ZONE 'UTC');
        merging := false;
    ELSE
        EXECUTE format('SELECT EXISTS (SELECT FROM %I WHERE hour >= $1 AND hour < $2)', packed)
            INTO STRICT merging USING day_from, day_to;
    END IF;

    -- The raw readings, and when the day was packed before, the packed readings of the
    -- device-hours they touch (whose rows are rewritten whole); grouped by device and hour.
    IF stream = 'meter' THEN
        EXECUTE format($q$
            WITH raw AS (
                DELETE FROM %1$s RETURNING meter_id, read_at, kwh_consumed_ac, voltage
            ),
            readings AS (
                SELECT * FROM raw
                UNION ALL
                SELECT p.meter_id, packed_time(p.hour, u.s, u.us), u.kwh, u.v
                FROM meter_readings_packed AS p,
                     unnest(p.seconds, p.micros, p.kwh_consumed_ac, p.voltage)
                         AS u (s, us, kwh, v)
                WHERE $1 AND p.hour >= $2 AND p.hour < $3
                  AND (p.meter_id, p.hour) IN (SELECT DISTINCT meter_id,
                                                      date_trunc('hour', read_at, 'UTC')
                                               FROM raw)
            ),
            rows AS (
                INSERT INTO meter_readings_packed AS t
                SELECT h.hour, h.meter_id, array_agg(h.s ORDER BY h.read_at),
                       CASE WHEN bool_or(h.us <> 0) THEN array_agg(h.us ORDER BY h.read_at) END,
                       array_agg(h.kwh_consumed_ac ORDER BY h.read_at),
                       array_agg(h.voltage ORDER BY h.read_at)
                FROM (SELECT r.*, date_trunc('hour', r.read_at, 'UTC') AS hour,
                             packed_offset_seconds(r.read_at) AS s,
                             packed_offset_micros(r.read_at) AS us
                      FROM readings AS r) AS h
                GROUP BY h.meter_id, h.hour
                ON CONFLICT (meter_id, hour) DO UPDATE
                    SET seconds = excluded.seconds, micros = excluded.micros,
                        kwh_consumed_ac = excluded.kwh_consumed_ac, voltage = excluded.voltage
                RETURNING 1
            )
            SELECT count(*) FROM raw
        $q$, child) INTO STRICT moved USING merging, day_from, day_to;
    ELSE
        EXECUTE format($q$
            WITH raw AS (
                DELETE FROM %1$s
                RETURNING vehicle_id, read_at, kwh_delivered_dc, soc, battery_temp
            ),
            readings AS (
                SELECT * FROM raw
                UNION ALL
                SELECT p.vehicle_id, packed_time(p.hour, u.s, u.us), u.kwh, u.soc, u.temp
                FROM vehicle_readings_packed AS p,
                     unnest(p.seconds, p.micros, p.kwh_delivered_dc, p.soc, p.battery_temp)
                         AS u (s, us, kwh, soc, temp)
                WHERE $1 AND p.hour >= $2 AND p.hour < $3
                  AND (p.vehicle_id, p.hour) IN (SELECT DISTINCT vehicle_id,
                                                        date_trunc('hour', read_at, 'UTC')
                                                 FROM raw)
            ),
            rows AS (
                INSERT INTO vehicle_readings_packed AS t
                SELECT h.hour, h.vehicle_id, array_agg(h.s ORDER BY h.read_at),
                       CASE WHEN bool_or(h.us <> 0) THEN array_agg(h.us ORDER BY h.read_at) END,
                       array_agg(h.kwh_delivered_dc ORDER BY h.read_at),
                       array_agg(h.soc ORDER BY h.read_at),
                       array_agg(h.battery_temp ORDER BY h.read_at)
                FROM (SELECT r.*, date_trunc('hour', r.read_at, 'UTC') AS hour,
                             packed_offset_seconds(r.read_at) AS s,
                             packed_offset_micros(r.read_at) AS us
                      FROM readings AS r) AS h
                GROUP BY h.vehicle_id, h.hour
                ON CONFLICT (vehicle_id, hour) DO UPDATE
                    SET seconds = excluded.seconds, micros = excluded.micros,
                        kwh_delivered_dc = excluded.kwh_delivered_dc, soc = excluded.soc,
                        battery_temp = excluded.battery_temp
                RETURNING 1
            )
            SELECT count(*) FROM raw
        $q$, child) INTO STRICT moved USING merging, day_from, day_to;
    END IF;

    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = child
                                            AND tgname = 'skip_packed_reading') THEN
        EXECUTE format('CREATE TRIGGER skip_packed_reading BEFORE INSERT ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION skip_packed_reading(%L)', child, stream);
    END IF;
    RETURN moved;
END
$$;

-- A reading's offset into its UTC hour: whole seconds, and the microseconds beyond them.
CREATE FUNCTION packed_offset_seconds(read_at timestamptz) RETURNS smallint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT floor(EXTRACT(epoch FROM read_at - date_trunc('hour', read_at, 'UTC')))::smallint
$$;

CREATE FUNCTION packed_offset_micros(read_at timestamptz) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT (EXTRACT(microseconds FROM read_at - date_trunc('hour', read_at, 'UTC'))::bigint
        % 1000000)::integer
$$;

-- Retention drops packed days like raw ones.
CREATE OR REPLACE FUNCTION drop_history_partition(child regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM history_partitions AS h
                   WHERE h.child = drop_history_partition.child) THEN
        RAISE EXCEPTION '% is not a day partition of history', child;
    END IF;
    EXECUTE format('DROP TABLE %s', child);
END;
$$;

-- rollup_hours over raw and packed history (stream_history).
CREATE OR REPLACE FUNCTION rollup_hours(
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
            FROM stream_history(of_stream, from_at, to_at) AS s
            WHERE only_devices IS NULL
            UNION ALL
            SELECT *
            FROM stream_history(of_stream, from_at, to_at) AS s
            WHERE s.device_id = ANY(only_devices)
            UNION ALL
            SELECT s.*
            FROM unnest(dirty_devices, dirty_hours) AS d (device_id, hour)
            CROSS JOIN LATERAL stream_device_history(of_stream, d.device_id, d.hour,
                                                     d.hour + interval '1 hour') AS s
        ) AS r
        WINDOW w AS (PARTITION BY r.device_id, date_trunc('hour', r.read_at) ORDER BY r.read_at)
    ) AS steps
    GROUP BY steps.device_id, steps.hour
) AS h
LEFT JOIN LATERAL stream_reading_before(of_stream, h.device_id, h.hour, '-infinity',
                                         '-infinity', 'infinity') AS p ON true
$$;

-- stream_window_energy over raw and packed history: its partial first hour through
-- stream_history (the other raw reads go through stream_readings_between and
-- stream_reading_before).
CREATE OR REPLACE FUNCTION stream_window_energy(
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
    FROM stream_device_history(of_stream, device, window_from,
                               least(window_hour_from(window_from), window_to)) AS r
    WHERE r.read_at >= outer_from AND r.read_at < outer_to
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

-- stream_fleet_totals over raw and packed history (stream_history).
CREATE OR REPLACE FUNCTION stream_fleet_totals(
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
    FROM stream_history(of_stream, window_from, raw_to) AS r
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, hours_to
    FROM stream_history(of_stream, hours_to, window_to) AS r
    UNION ALL
    SELECT r.device_id, r.read_at, r.kwh, r.sensor::float8, d.hour
    FROM dirty AS d
    CROSS JOIN LATERAL stream_device_history(of_stream, d.device, d.hour,
                                             d.hour + interval '1 hour') AS r
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

-- The raw day partitions wholly before `before`, oldest first: whether each holds a reading
-- (one EXISTS probe a partition, so a year of days costs about 730 probes) and whether it was
-- packed (it carries the skip_packed_reading trigger). Filled ones are what the maintenance
-- loop packs; packed empty ones, called with a time before which ingest accepts no reading
-- (Settings.max_reading_age), what it retires: dropped, so that the partitions of raw history
-- stay about max_reading_age days however long history is kept (every reader's kept plan
-- locks each partition it might read: a 24 h report over 395 day partitions a stream took
-- 1.04 ms against 0.71 ms over 34 days and 13 packed months).
CREATE FUNCTION raw_partitions_before(before timestamptz)
RETURNS TABLE (child regclass, filled boolean, packed boolean)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    FOR child, packed IN
        SELECT h.child,
               EXISTS (SELECT FROM pg_trigger AS t
                       WHERE t.tgrelid = h.child AND t.tgname = 'skip_packed_reading')
        FROM history_partitions AS h
        WHERE h.parent IN ('meter_readings', 'vehicle_readings') AND h.range_to <= before
        ORDER BY h.range_from, h.child::text
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM %s)', child) INTO filled;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Packs every raw day partition wholly before `before` that holds readings (one transaction:
-- for the benchmark and tests; the maintenance loop packs a partition a transaction).
-- Returns the readings moved.
CREATE FUNCTION pack_readings_before(before timestamptz) RETURNS bigint
LANGUAGE sql AS $$
SELECT coalesce(sum(pack_reading_partition(r.child)), 0)::bigint
FROM raw_partitions_before(before) AS r
WHERE r.filled
$$;

-- ensure_reading_partitions, for days whose raw partition was retired after packing.
CREATE OR REPLACE FUNCTION ensure_reading_partitions(first_day date, last_day date) RETURNS integer
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
                -- A day already packed (its raw partition retired, below): a late reading
                -- for it must not store a packed reading again.
                IF to_regclass(parent || '_packed_' || to_char(day, 'YYYYMM')) IS NOT NULL THEN
                    EXECUTE format('CREATE TRIGGER skip_packed_reading BEFORE INSERT ON %I '
                                   'FOR EACH ROW EXECUTE FUNCTION skip_packed_reading(%L)',
                                   child, CASE parent WHEN 'meter_readings' THEN 'meter'
                                                      ELSE 'vehicle' END);
                END IF;
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END;
$$;

-- The last maintenance round's packing.
ALTER TABLE maintenance_runs
    ADD COLUMN partitions_packed integer NOT NULL DEFAULT 0,
    ADD COLUMN readings_packed   bigint  NOT NULL DEFAULT 0;
