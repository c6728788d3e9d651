-- trace_events is partitioned by trace ID range, one partition per week of trace creation.
--
-- Why: a trace ID is a UUID v7, so its first 48 bits are the time it was accepted, and every
-- event of a trace lands in the partition of the week its command was accepted. New events
-- therefore go to the pages of a small, recent partition, however much history the table holds.
-- In one unpartitioned table, after VACUUM the free space map offers each new small row the
-- leftover bytes of some old page, so a busy system with a large history reads and dirties a
-- cold page (and logs a full-page image) for almost every event it writes.
--
-- trace_id is COLLATE "C" so the range bounds compare byte by byte (lowercase hex UUID text
-- sorts by time that way under any database collation; equality with the other tables'
-- default-collation trace_id columns is unaffected).
--
-- Partitions are made ahead of time by tether_trace_partitions(ms), which every tether process
-- calls after migrating and then hourly. The DEFAULT partition only catches an ID outside every
-- partition made so far (a clock far off, an ID that is not v7), so no insert ever fails for
-- want of a partition.

ALTER TABLE trace_events RENAME TO trace_events_legacy;
ALTER INDEX trace_events_pkey RENAME TO trace_events_legacy_pkey;

CREATE TABLE trace_events (
    trace_id  TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    component TEXT NOT NULL,
    status    TEXT NOT NULL,
    attempt   INTEGER,
    message   TEXT,
    detail    TEXT,
    state     TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (trace_id, seq)
) PARTITION BY RANGE (trace_id);
CREATE TABLE trace_events_default PARTITION OF trace_events DEFAULT;

-- The lowest UUID v7 text of millisecond `ms`: its 48-bit time, then zeros.
CREATE FUNCTION tether_trace_bound(ms BIGINT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-0000-0000-000000000000'
    FROM (SELECT lpad(to_hex(ms), 12, '0') AS h) AS t
$$;

-- Makes the partitions of the week holding `at_ms` and of the week after, where missing;
-- returns how many it made. A week whose range is already covered otherwise (the legacy
-- partition below, rows that went to the default partition) is left out with a notice: its
-- events stay where they are and remain readable.
CREATE FUNCTION tether_trace_partitions(at_ms BIGINT) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    week CONSTANT BIGINT := 7 * 86400000;
    lo BIGINT;
    name TEXT;
    made INTEGER := 0;
BEGIN
    FOR i IN 0..1 LOOP
        lo := (at_ms / week + i) * week;
        name := 'trace_events_' || to_char(to_timestamp(lo / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            PERFORM set_config('lock_timeout', '5s', true);
            -- Processes starting together queue here, one at a time. (A relation lock, not an
            -- advisory one: taking it also makes this session see a partition another one has
            -- just made.) Reads and writes of events go on meanwhile: attaching takes the same
            -- lock (CREATE ... PARTITION OF would block them), plus a moment's exclusive lock
            -- on the default partition to check that none of its rows belong to the new week.
            LOCK TABLE trace_events IN SHARE UPDATE EXCLUSIVE MODE;
            IF to_regclass(name) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE trace_events INCLUDING ALL)', name);
                EXECUTE format('ALTER TABLE trace_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    name, tether_trace_bound(lo), tether_trace_bound(lo + week));
                made := made + 1;
            END IF;
        EXCEPTION WHEN invalid_object_definition OR check_violation OR lock_not_available THEN
            RAISE NOTICE 'trace_events: no partition for the week from %: %',
                to_timestamp(lo / 1000) AT TIME ZONE 'UTC', SQLERRM;
        END;
    END LOOP;
    RETURN made;
END
$$;

-- The events written before this migration: an empty table goes; a non-empty one becomes the
-- partition of every trace ID up to the end of this week (then weekly partitions follow).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM trace_events_legacy) THEN
        ALTER TABLE trace_events_legacy ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
        EXECUTE format('ALTER TABLE trace_events ATTACH PARTITION trace_events_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
            tether_trace_bound((((extract(epoch FROM now()) * 1000)::bigint / 604800000) + 1) * 604800000));
    ELSE
        DROP TABLE trace_events_legacy;
    END IF;
END
$$;
