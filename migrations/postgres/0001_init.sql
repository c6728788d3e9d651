-- tether on PostgreSQL: the same tables as the embedded schema. Times are milliseconds since
-- the Unix epoch (BIGINT); counters the code reads as 32-bit are INTEGER, so both stores share their queries' shape and the commands' SQL.

-- One row per trace: the command, its queue state and its lease.
CREATE TABLE commands (
    trace_id         TEXT PRIMARY KEY,
    command_type     TEXT NOT NULL,
    payload          TEXT NOT NULL,
    owner            TEXT NOT NULL,
    idempotency_key  TEXT,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempts started in the current series
    series           INTEGER NOT NULL DEFAULT 1,   -- replays start a new series
    fence            BIGINT NOT NULL DEFAULT 0,   -- lease token: bumped by every claim
    lease_expires_at BIGINT,
    next_attempt_at  BIGINT,
    last_seq         BIGINT NOT NULL DEFAULT 0,   -- last trace event sequence number
    attempt_errors   JSONB NOT NULL DEFAULT '[]', -- [{attempt, at, error}] of this series
    result           TEXT,
    error            TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX commands_idempotency ON commands (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_runnable ON commands (next_attempt_at)
    WHERE state IN ('PENDING', 'RETRYING');
CREATE INDEX commands_leases ON commands (lease_expires_at) WHERE state = 'RUNNING';

-- The history of every trace; (trace_id, seq) is the key, so "events of a trace" is a range scan.
CREATE TABLE trace_events (
    trace_id  TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    component TEXT NOT NULL,
    status    TEXT NOT NULL,
    attempt   INTEGER,
    message   TEXT,
    detail    TEXT,
    state     TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (trace_id, seq)
);

-- Side effects, written in the command's transaction and relayed by the EventEmitter.
CREATE TABLE outbox (
    event_id    TEXT PRIMARY KEY,
    trace_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT
);
CREATE INDEX outbox_unsent ON outbox (created_at, event_id) WHERE sent_at IS NULL;

-- Commands that exhausted their retries, one row per attempt series.
CREATE TABLE dead_letters (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trace_id         TEXT NOT NULL,
    series           INTEGER NOT NULL,
    command_type     TEXT NOT NULL,
    owner            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    history          JSONB NOT NULL,
    last_error       TEXT NOT NULL,
    dead_lettered_at BIGINT NOT NULL,
    replayed_at      BIGINT,
    UNIQUE (trace_id, series)
);
CREATE INDEX dead_letters_owner ON dead_letters (owner, id);

-- Inbox / dedup marks: a series of a trace is processed at most once.
CREATE TABLE processed (
    trace_id     TEXT NOT NULL,
    series       INTEGER NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (trace_id, series)
);

-- The API key generated for embedded mode when none is configured.
CREATE TABLE api_keys (
    principal  TEXT PRIMARY KEY,
    secret     TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- The example domain.
CREATE TABLE orders (
    order_id    TEXT PRIMARY KEY,
    trace_id    TEXT NOT NULL,   -- deliberately not unique: tests count rows per trace (G3)
    customer_id TEXT NOT NULL,
    items       TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX orders_trace ON orders (trace_id);
