-- trace_events is partitioned by the week its trace was accepted in.
--
-- Why: in one unpartitioned table, after VACUUM the free space map offers each new small event
-- row the leftover bytes of some old page, so a system with a large history reads and dirties
-- a cold page (and logs a full-page image) for almost every event it writes. Partitioned, new
-- events go to the pages of a small, recent partition, however much history the table holds.
--
-- The key: tether's trace IDs are UUID v7, whose first 48 bits are the creation time in
-- milliseconds, so tether_trace_week(trace_id) is the week (since the Unix epoch) in which the
-- trace began, and every event of a trace goes to the same partition. Other IDs (the v4 IDs
-- AppSync's util.autoId() gives commands that arrive through SQS, anything not a v7 UUID) have
-- week 0 and go to trace_events_unordered. Queries by trace ID add
-- `tether_trace_week(trace_id) = tether_trace_week($1)` so only that partition is searched.
--
-- (trace_id, seq) is unique within each partition, and so across the table, since a trace's
-- week is a function of its ID. (PostgreSQL does not allow a primary key on a table
-- partitioned by an expression; each partition has its own.)
--
-- Partitions are made ahead of time by tether_trace_partitions(ms), which every tether process
-- calls after migrating and then hourly. The DEFAULT partition catches a v7 ID of a week with
-- no partition (a clock far ahead), so no insert ever fails for want of a partition.

CREATE FUNCTION tether_trace_week(id TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7'
        THEN (('x' || substr(id, 1, 8) || substr(id, 10, 4))::bit(48)::bigint / 604800000)::integer
        ELSE 0 END
$$;

ALTER TABLE trace_events RENAME TO trace_events_legacy;

CREATE TABLE trace_events (
    trace_id  TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    component TEXT NOT NULL,
    status    TEXT NOT NULL,
    attempt   INTEGER,
    message   TEXT,
    detail    TEXT,
    state     TEXT NOT NULL,
    at        BIGINT NOT NULL
) PARTITION BY RANGE (tether_trace_week(trace_id));
CREATE TABLE trace_events_default PARTITION OF trace_events (PRIMARY KEY (trace_id, seq)) DEFAULT;

-- Makes the partitions of the week holding `at_ms` and of the week after, where missing;
-- returns how many it made. A week whose range is already covered otherwise (the legacy
-- partition below, rows that went to the default partition) is left out with a notice: its
-- events stay where they are and remain readable.
CREATE FUNCTION tether_trace_partitions(at_ms BIGINT) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    week CONSTANT BIGINT := 7 * 86400000;
    w INTEGER;
    name TEXT;
    made INTEGER := 0;
BEGIN
    FOR i IN 0..1 LOOP
        w := (at_ms / week)::integer + i;
        name := 'trace_events_' || to_char(to_timestamp(w * week / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
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
            IF to_regclass(name) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE trace_events INCLUDING DEFAULTS, PRIMARY KEY (trace_id, seq))', name);
                EXECUTE format('ALTER TABLE trace_events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                    name, w, w + 1);
                made := made + 1;
            END IF;
        EXCEPTION WHEN invalid_object_definition OR check_violation OR lock_not_available THEN
            RAISE NOTICE 'trace_events: no partition for the week from %: %',
                to_timestamp(w * week / 1000) AT TIME ZONE 'UTC', SQLERRM;
        END;
    END LOOP;
    RETURN made;
END
$$;

-- The events written before this migration. An empty table goes, and IDs that are not v7 get
-- their own partition. A non-empty one becomes the partition of every week up to this one
-- (weekly partitions follow), non-v7 IDs included; this scans it twice, under the exclusive
-- lock the rename took. Its rows of later weeks (a clock that ran ahead) move to the default
-- partition first, so they do not hold up the partitions of the weeks to come.
DO $$
DECLARE
    this_week INTEGER := ((extract(epoch FROM now()) * 1000)::bigint / 604800000)::integer;
BEGIN
    IF EXISTS (SELECT 1 FROM trace_events_legacy) THEN
        WITH later AS (
            DELETE FROM trace_events_legacy WHERE tether_trace_week(trace_id) > this_week
            RETURNING *)
        INSERT INTO trace_events_default SELECT * FROM later;
        EXECUTE format('ALTER TABLE trace_events ATTACH PARTITION trace_events_legacy FOR VALUES FROM (MINVALUE) TO (%s)',
            this_week + 1);
    ELSE
        DROP TABLE trace_events_legacy;
        CREATE TABLE trace_events_unordered PARTITION OF trace_events (PRIMARY KEY (trace_id, seq))
            FOR VALUES FROM (MINVALUE) TO (1);
    END IF;
END
$$;
