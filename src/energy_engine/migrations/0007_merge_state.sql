-- The hot-row merge and the dirty-hour mark, once each, for every writer (the ingest
-- statements and both import paths call them). STRICT: a NULL array (a batch with nothing
-- new, or no late reading) skips the call.

-- Folds readings into the hot rows: one row a device, its newest new reading with the one
-- before it in prev_read_at / prev_kwh_* (NULL when the batch held one reading of the device).
-- The hot row keeps the newest reading and the one before it: a late reading can become the
-- previous one but never the latest, so the hot store never goes back in time. A reading at a
-- time the hot row holds already changes nothing (the first write wins, as in history). Rows
-- are written in device order, so that concurrent writers lock hot rows in one order and
-- cannot deadlock. The statement has no join: its plan (sort, insert) is the same for 1 row
-- and 10,000, also when plpgsql caches a generic one.
CREATE FUNCTION merge_meter_state(rows meter_state[]) RETURNS void
LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO meter_state AS s
    SELECT * FROM unnest(rows)
    ORDER BY meter_id
    ON CONFLICT (meter_id) DO UPDATE SET
        read_at = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.read_at ELSE s.read_at END,
        kwh_consumed_ac = CASE WHEN excluded.read_at > s.read_at
                               THEN excluded.kwh_consumed_ac ELSE s.kwh_consumed_ac END,
        voltage = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.voltage ELSE s.voltage END,
        received_at = CASE WHEN excluded.read_at > s.read_at
                           THEN excluded.received_at ELSE s.received_at END,
        prev_read_at = CASE
            WHEN excluded.read_at > s.read_at THEN greatest(s.read_at, excluded.prev_read_at)
            WHEN excluded.read_at < s.read_at THEN greatest(s.prev_read_at, excluded.read_at)
            ELSE greatest(s.prev_read_at, excluded.prev_read_at)
        END,
        prev_kwh_consumed_ac = CASE
            WHEN excluded.read_at > s.read_at THEN
                CASE WHEN excluded.prev_read_at > s.read_at
                     THEN excluded.prev_kwh_consumed_ac ELSE s.kwh_consumed_ac END
            WHEN excluded.read_at < s.read_at THEN excluded.kwh_consumed_ac
            ELSE excluded.prev_kwh_consumed_ac
        END
    -- Only a newer latest or a newer previous reading changes the row (a tie: first wins);
    -- the branches above that take the incoming reading unconditionally rely on it.
    WHERE excluded.read_at > s.read_at
       OR (excluded.read_at < s.read_at
           AND excluded.read_at > coalesce(s.prev_read_at, '-infinity'))
       OR (excluded.read_at = s.read_at
           AND excluded.prev_read_at > coalesce(s.prev_read_at, '-infinity'));
END
$$;

-- The same for vehicles.
CREATE FUNCTION merge_vehicle_state(rows vehicle_state[]) RETURNS void
LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO vehicle_state AS s
    SELECT * FROM unnest(rows)
    ORDER BY vehicle_id
    ON CONFLICT (vehicle_id) DO UPDATE SET
        read_at = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.read_at ELSE s.read_at END,
        soc = CASE WHEN excluded.read_at > s.read_at
                   THEN excluded.soc ELSE s.soc END,
        kwh_delivered_dc = CASE WHEN excluded.read_at > s.read_at
                                THEN excluded.kwh_delivered_dc ELSE s.kwh_delivered_dc END,
        battery_temp = CASE WHEN excluded.read_at > s.read_at
                            THEN excluded.battery_temp ELSE s.battery_temp END,
        received_at = CASE WHEN excluded.read_at > s.read_at
                           THEN excluded.received_at ELSE s.received_at END,
        prev_read_at = CASE
            WHEN excluded.read_at > s.read_at THEN greatest(s.read_at, excluded.prev_read_at)
            WHEN excluded.read_at < s.read_at THEN greatest(s.prev_read_at, excluded.read_at)
            ELSE greatest(s.prev_read_at, excluded.prev_read_at)
        END,
        prev_kwh_delivered_dc = CASE
            WHEN excluded.read_at > s.read_at THEN
                CASE WHEN excluded.prev_read_at > s.read_at
                     THEN excluded.prev_kwh_delivered_dc ELSE s.kwh_delivered_dc END
            WHEN excluded.read_at < s.read_at THEN excluded.kwh_delivered_dc
            ELSE excluded.prev_kwh_delivered_dc
        END
    -- Only a newer latest or a newer previous reading changes the row (a tie: first wins);
    -- the branches above that take the incoming reading unconditionally rely on it.
    WHERE excluded.read_at > s.read_at
       OR (excluded.read_at < s.read_at
           AND excluded.read_at > coalesce(s.prev_read_at, '-infinity'))
       OR (excluded.read_at = s.read_at
           AND excluded.prev_read_at > coalesce(s.prev_read_at, '-infinity'));
END
$$;

-- Marks dirty the hour of each of a stream's readings (device_ids[i] at times[i]), so that
-- the rollup refresher redoes those hours (migrations/0003_rollups.sql). Writers call it for
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
