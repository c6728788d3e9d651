-- Identifiers compare byte by byte, and trace_events is partitioned by trace ID itself.
--
-- Why: IDs are ASCII (UUID text, order IDs), but under the database's collation every
-- comparison of two of them in an index went through the C library's locale-aware strcoll;
-- with "C" it is a memcmp. And routing each new event by tether_trace_week(trace_id) ran a
-- regular expression per row (a profile of a worker's drain had 5 % of all CPU in partition
-- routing). Ranges of the ID text route with a few comparisons, and a query by trace ID now
-- reaches only that trace's partition without naming the partition key.
--
-- The key: a UUID v7's first 12 hex digits are its creation time in milliseconds, so the
-- traces accepted in a week (since the Unix epoch) are the IDs from that week's first
-- millisecond, written 'xxxxxxxx-xxxx', up to the next week's. Every v7 ID of the years 2020
-- to 2109 starts with '017' to '03f'. Random IDs (the v4 IDs AppSync's util.autoId() gives
-- commands that arrive through SQS, anything else) mostly fall outside that span and go to
-- trace_events_unordered (from '04') and trace_events_unordered_low (below '017'); the few
-- inside it go to a week's partition or to the default one, where they are read like any other.
--
-- Existing events are copied into the new table (under this migration's locks, once), into a
-- partition per week they belong to. tether_trace_week stays, unused by this version, so that
-- processes of the previous version keep working until they are replaced.

ALTER TABLE commands ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
ALTER TABLE processed ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
ALTER TABLE dead_letters ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
ALTER TABLE dispatch ALTER COLUMN trace_id TYPE TEXT COLLATE "C";
ALTER TABLE orders ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN trace_id TYPE TEXT COLLATE "C";

-- The lower bound of week `w`'s trace IDs: its first millisecond as a v7 ID's first 12 digits.
CREATE FUNCTION tether_trace_bound(w BIGINT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT overlay(lpad(to_hex(w * 604800000), 12, '0') PLACING '-' FROM 9 FOR 0)
$$;

-- The name of week `w`'s partition: trace_events_ and the date of its first day.
CREATE FUNCTION tether_trace_partition_name(w INTEGER) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT 'trace_events_' || to_char(to_timestamp(w::bigint * 604800) AT TIME ZONE 'UTC', 'YYYYMMDD')
$$;

-- Makes week `w`'s partition unless it exists; true when it made it. Attaching, unlike
-- CREATE ... PARTITION OF, lets reads and writes of events go on meanwhile (see below).
CREATE FUNCTION tether_trace_partition(w INTEGER) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    name CONSTANT TEXT := tether_trace_partition_name(w);
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE trace_events INCLUDING DEFAULTS, PRIMARY KEY (trace_id, seq))', name);
    EXECUTE format('ALTER TABLE trace_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        name, tether_trace_bound(w), tether_trace_bound(w + 1));
    RETURN true;
END
$$;

ALTER TABLE trace_events RENAME TO trace_events_by_week;
-- The old partitions and their keys' indexes make way for the new ones' names.
DO $$
DECLARE
    rel TEXT;
BEGIN
    FOR rel IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'trace_events_by_week'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', rel, rel || '_by_week');
    END LOOP;
    FOR rel IN SELECT x.relname FROM pg_inherits i JOIN pg_index ix ON ix.indrelid = i.inhrelid
            JOIN pg_class x ON x.oid = ix.indexrelid
            WHERE i.inhparent = 'trace_events_by_week'::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', rel, rel || '_by_week');
    END LOOP;
END
$$;

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
CREATE TABLE trace_events_unordered_low PARTITION OF trace_events FOR VALUES FROM (MINVALUE) TO ('017');
CREATE TABLE trace_events_unordered PARTITION OF trace_events FOR VALUES FROM ('04') TO (MAXVALUE);

-- Same signature as before (every process calls it after migrating and then hourly).
CREATE OR REPLACE FUNCTION tether_trace_partitions(at_ms BIGINT) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    made INTEGER := 0;
    w INTEGER;
BEGIN
    FOR i IN 0..1 LOOP
        w := (at_ms / 604800000)::integer + i;
        CONTINUE WHEN to_regclass(tether_trace_partition_name(w)) IS NOT NULL;
        BEGIN
            -- Short: a partition is made a week ahead and this runs hourly, so giving up costs
            -- nothing, while waiting would hold up the reads and writes queued behind it.
            PERFORM set_config('lock_timeout', '200ms', true);
            -- Processes starting together queue here, one at a time. (A relation lock, not an
            -- advisory one: taking it also makes this session see a partition another one has
            -- just made.) Reads and writes of events go on meanwhile: attaching takes the same
            -- lock (CREATE ... PARTITION OF would block them), plus a moment's exclusive lock
            -- on the default partition to check that none of its rows belong to the new week.
            LOCK TABLE trace_events IN SHARE UPDATE EXCLUSIVE MODE;
            IF tether_trace_partition(w) THEN
                made := made + 1;
            END IF;
        EXCEPTION WHEN invalid_object_definition OR check_violation OR lock_not_available THEN
            RAISE NOTICE 'trace_events: no partition for the week from %: %',
                to_timestamp(w::bigint * 604800) AT TIME ZONE 'UTC', SQLERRM;
        END;
    END LOOP;
    RETURN made;
END
$$;

-- The weeks the existing events belong to get their partitions, then the events move.
DO $$
DECLARE
    w INTEGER;
BEGIN
    FOR w IN SELECT DISTINCT tether_trace_week(trace_id) FROM trace_events_by_week LOOP
        CONTINUE WHEN tether_trace_bound(w) < '017' COLLATE "C"
            OR tether_trace_bound(w + 1) > '04' COLLATE "C";
        PERFORM tether_trace_partition(w);
    END LOOP;
END
$$;
INSERT INTO trace_events SELECT * FROM trace_events_by_week;
DROP TABLE trace_events_by_week;
