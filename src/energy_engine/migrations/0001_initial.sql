-- Cold store: append-only history, one partition per UTC day, unique on (device, time).
-- Fixed-width columns first so the tuples carry no alignment padding.
CREATE TABLE meter_readings (
    read_at         timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    meter_id        text             NOT NULL,
    PRIMARY KEY (meter_id, read_at)
) PARTITION BY RANGE (read_at);

CREATE TABLE vehicle_readings (
    read_at          timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    vehicle_id       text             NOT NULL,
    PRIMARY KEY (vehicle_id, read_at)
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
