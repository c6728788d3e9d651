//! The PostgreSQL store: the same behaviour as the embedded one, for many processes on one
//! database.
//!
//! * **Accepts** are group-committed like on SQLite: a committer on a thread of its own, with
//!   a connection of its own, drains whatever has arrived and writes it in one statement (the
//!   commands, their `ACCEPTED` events, their dispatch rows, each table one multi-row `UNNEST`
//!   insert), one batch at a time: what arrives while a batch commits forms the next one.
//! * **Claims** use `FOR UPDATE SKIP LOCKED`, so any number of workers take disjoint commands
//!   without waiting for each other; the lease token (`fence`) and the lease's expiry fence
//!   every later write of the attempt (G3). One statement claims many commands and writes
//!   their picked-up events.
//! * **Attempts** are group-committed too: the attempts of this process that finish together
//!   share one transaction, whose last statement checks every lease and writes every result;
//!   see [`attempts`]. Their outbox rows go to this process's emitter without a claiming
//!   statement; see [`relay`].
//! * **Per-trace order.** Appending events first updates the trace's `commands` row, whose
//!   lock orders writers of the same trace, so sequence numbers are gap-free. One number is
//!   taken ahead: an attempt that succeeds in the trace's first series with one outbox row
//!   takes the number of that row's "published" report, the trace's last event, so marking
//!   the row sent does not update the `commands` row again (migration 6). Commits of
//!   different tasks can still reach the sink out of order; the [`feed`] in front of the hub
//!   restores per-trace order, reading the database to fill any gap (G5).
//! * **Across processes**, after every commit that appended events the writer announces their
//!   keys, and after one that made work runnable it wakes the workers; see [`feed`].
//! * **History.** `trace_events` is partitioned by ranges of trace ID, one partition per week
//!   of trace creation (a UUID v7 begins with its time), so new events are written next to
//!   recent ones whatever the size of the history, and a read by trace ID searches one
//!   partition; the store makes the coming week's partition ahead (`partition_upkeep`,
//!   `migrations/postgres/0005_byte_ordered_ids.sql`). IDs compare byte by byte (`"C"`).

mod attempts;
mod feed;
mod relay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use attempts::AttemptJob;
use feed::{Feed, Range};

use super::{
    PICKED_EVENTS, dead_lettered, parse_json, parse_state, parse_trace_id, picked_events,
    picked_suffixes, published,
};
use crate::domain::{
    Accepted, Claim, Component, DeadLetter, Millis, NewCommand, NewTraceEvent, OutboxEvent, Status,
    TraceEvent, TraceId, TraceRecord, TraceState, now_millis,
};
use crate::ports::{
    AttemptOutcome, AttemptWork, Dispatch, Failure, Next, Rejected, Store, StoreError, TraceClaim,
    TraceSink,
};

/// How many accepts one group commit may carry.
const MAX_ACCEPT_BATCH: usize = 512;
/// Attempts waiting for a group commit (at most the executor's slots in practice).
const ATTEMPT_QUEUE: usize = 4096;
/// How long an emitter holds the outbox rows it took before others may take them.
const OUTBOX_CLAIM_MS: i64 = 10_000;
/// While rows of this process's attempts wait for its emitter ([`relay`]), every this many
/// calls the emitter still asks the table, for the rows only the table has.
const OUTBOX_STATEMENT_EVERY: u64 = 4;
/// The same for dispatch rows. Shorter: a process that died holding rows delays those
/// commands by this much, and a row sent twice only makes a duplicate message (harmless).
const DISPATCH_CLAIM_MS: i64 = 3_000;
/// Where claims say they picked a command up from.
const QUEUE_TABLE: &str = "the commands table";

pub struct PgStore {
    pool: PgPool,
    sink: Arc<Feed>,
    /// This process's name in its notices (a random ID per store).
    node: Arc<str>,
    accepts: mpsc::Sender<AcceptJob>,
    attempts: mpsc::Sender<AttemptJob>,
    /// Outbox rows this process's attempts committed, for its emitter without a statement.
    relay: Arc<relay::Relay>,
    /// Calls of `unsent_outbox`, to ask the table on every [`OUTBOX_STATEMENT_EVERY`]th.
    outbox_calls: std::sync::atomic::AtomicU64,
    /// SQS mode: accepts and replays also write a dispatch row for the command queue.
    dispatch: bool,
    /// Stops the listener and the feed with the store.
    _stop: DropGuard,
}

struct AcceptJob {
    command: NewCommand,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

impl PgStore {
    /// Connects to `url`, applies migrations, starts the accept committer and listens for
    /// other processes' notices: their trace events go to `sink`, their new work wakes `wake`.
    /// With `dispatch`, every new command also gets a row in the dispatch outbox (SQS mode).
    pub async fn open(
        url: &str,
        sink: Arc<dyn TraceSink>,
        wake: Arc<Notify>,
        accept_queue: usize,
        pool_size: u32,
        dispatch: bool,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let mut setup = PgConnection::connect_with(&options).await?;
        super::migrate::postgres(&mut setup).await?;
        setup.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        let node: Arc<str> = uuid::Uuid::new_v4().simple().to_string()[..12].into();
        let stop = CancellationToken::new();
        let accept_options = options.clone();
        let sink = Arc::new(Feed::start(
            sink,
            pool.clone(),
            options,
            node.clone(),
            wake,
            stop.clone(),
        ));
        let (accepts, rx) = mpsc::channel(accept_queue.max(1));
        start_accepts(accept_options, sink.clone(), dispatch, rx)?;
        let (attempts, rx) = mpsc::channel(ATTEMPT_QUEUE);
        let relay = Arc::new(relay::Relay::default());
        let committer = attempts::Committer {
            pool: pool.clone(),
            sink: sink.clone(),
            relay: relay.clone(),
            node: node.clone(),
        };
        tokio::spawn(attempts::commit_loop(committer, rx));
        tokio::spawn(partition_upkeep(pool.clone(), stop.clone()));
        Ok(Self {
            pool,
            sink,
            node,
            accepts,
            attempts,
            relay,
            outbox_calls: Default::default(),
            dispatch,
            _stop: stop.drop_guard(),
        })
    }

    /// The pool, for the roles that need their own connections (LISTEN, tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Keeps the next week's `trace_events` partition made ahead of its first event (opening the
/// store made this week's and the next; see `migrate::trace_partitions`).
async fn partition_upkeep(pool: PgPool, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        if let Err(e) = super::migrate::trace_partitions(&pool).await {
            tracing::warn!(error = %e, "could not make trace_events partitions; trying again in an hour");
        }
    }
}

/// Starts the accept committer on a thread of its own, with its own runtime and its own
/// connection, and returns. It runs until every sender of `rx` is gone (the store dropped).
///
/// A group commit's cycle (statement, WAL flush, replies, next statement) sets how long every
/// accept waits, so the cycle holds nothing else. On the request-serving runtime the
/// committer's reply from PostgreSQL waited its turn behind request tasks: a batch took
/// ~0.85 ms from statement to next statement there, ~0.6 ms on its own thread
/// (`TETHER_BENCH_PG_PHASES=1 scripts/bench --pg`, 2026-12-06). And it holds its connection
/// instead of taking it from a pool: sqlx's pool pings a connection when it is taken and again
/// when it is given back, two more round trips to PostgreSQL per batch.
fn start_accepts(
    options: PgConnectOptions,
    sink: Arc<Feed>,
    dispatch: bool,
    rx: mpsc::Receiver<AcceptJob>,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Failed(format!("could not start the accept committer: {e}")))?;
    std::thread::Builder::new()
        .name("tether-accepts".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut conn = AcceptConnection {
                    options,
                    conn: None,
                    last_used: Instant::now(),
                };
                accept_loop(&mut conn, &sink, dispatch, rx).await;
                if let Some(c) = conn.conn.take() {
                    let _ = c.close().await;
                }
            })
        })
        .map_err(|e| StoreError::Failed(format!("could not start the accept committer: {e}")))?;
    Ok(())
}

/// A connection made when first needed and again after a failure; one idle for longer than
/// [`IDLE_CHECK`] is pinged before use, so a server restart while the API was idle costs a
/// reconnection, not a failed batch. A restart under load fails the batch that finds the
/// connection dead: its callers get an error, as during the restart itself, and retry.
struct AcceptConnection {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    last_used: Instant,
}

/// How long the accept connection may sit unused before it is checked. Under load it never
/// is; a sparse caller pays one round trip per accept.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// How long making the accept connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl AcceptConnection {
    async fn get(&mut self) -> Result<&mut PgConnection, StoreError> {
        let idle = self.last_used.elapsed() > IDLE_CHECK;
        self.last_used = Instant::now();
        if idle
            && let Some(conn) = &mut self.conn
            && conn.ping().await.is_err()
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let made =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await
                    .map_err(|_| {
                        StoreError::Failed("connecting to PostgreSQL timed out".into())
                    })??;
            self.conn = Some(made);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Failed("no connection to PostgreSQL".into()))
    }
}

/// Group commit of accepts, one batch at a time: while a batch's statement and WAL flush are
/// under way, new accepts queue up, and the next batch takes all of them. One batch at a time
/// does better than two here (`TETHER_BENCH_PG_PHASES=1 scripts/bench --pg`: accepts ÷
/// pgbench 1.03–1.06 with one against 0.87–0.98 with two in alternating runs, 0.73 in one run
/// with three; and 0.83–0.96 with the next batch's statement made while the last one's commit
/// flushes, 2026-12-06): batches committing at once wait for each other's WAL writes anyway,
/// and are each smaller.
async fn accept_loop(
    conn: &mut AcceptConnection,
    sink: &Feed,
    dispatch: bool,
    mut rx: mpsc::Receiver<AcceptJob>,
) {
    let mut batch = Vec::with_capacity(MAX_ACCEPT_BATCH);
    while rx.recv_many(&mut batch, MAX_ACCEPT_BATCH).await > 0 {
        let commands: Vec<&NewCommand> = batch.iter().map(|j| &j.command).collect();
        let written = match conn.get().await {
            Ok(c) => accept_batch(c, dispatch, &commands).await,
            Err(e) => Err(e),
        };
        if written.is_err() {
            // Whatever went wrong, the next batch starts on a new connection.
            conn.conn = None;
        }
        match written {
            Ok((results, events)) => {
                sink.committed_work(&events, !events.is_empty());
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "accept batch failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Failed(
                        "the accept transaction failed".into(),
                    )));
                }
            }
        }
    }
}

type AcceptResults = (Vec<Result<Accepted, StoreError>>, Vec<TraceEvent>);

/// One group commit of accepts, one statement in its own transaction: the new commands, their
/// `ACCEPTED` events and (SQS mode) their dispatch rows. A command whose idempotency key is
/// already used inserts nothing; a second read finds the trace the key names.
async fn accept_batch(
    conn: &mut PgConnection,
    dispatch: bool,
    commands: &[&NewCommand],
) -> Result<AcceptResults, StoreError> {
    let now = now_millis();
    let payloads: Vec<String> = commands.iter().map(|c| c.payload.to_string()).collect();
    let ids: Vec<String> = commands.iter().map(|c| c.trace_id.to_string()).collect();
    // A key used twice in one batch, or already used, inserts nothing (ON CONFLICT).
    let inserted: Vec<String> = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO commands (trace_id, command_type, payload, owner, idempotency_key,
                 state, next_attempt_at, last_seq, created_at, updated_at)
             SELECT t, c, p, o, k, 'PENDING', $6, 1, $6, $6
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                 AS u(t, c, p, o, k)
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING trace_id, command_type),
         ev AS (
             INSERT INTO trace_events (trace_id, seq, component, status, state, message, at)
             SELECT trace_id, 1, 'CommandApi', 'ACCEPTED', 'PENDING', command_type || ' accepted', $6
             FROM ins),
         dis AS (
             INSERT INTO dispatch (trace_id, created_at) SELECT trace_id, $6 FROM ins WHERE $7)
         SELECT trace_id FROM ins",
    )
    .bind(&ids)
    .bind(
        commands
            .iter()
            .map(|c| c.command_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(&payloads)
    .bind(
        commands
            .iter()
            .map(|c| c.owner.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        commands
            .iter()
            .map(|c| c.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .bind(dispatch)
    .fetch_all(&mut *conn)
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();

    // Keys that named an existing trace (from an earlier batch or earlier in this one).
    let (owners, keys): (Vec<&str>, Vec<&str>) = commands
        .iter()
        .zip(&ids)
        .filter(|(_, id)| !inserted.contains(*id))
        .filter_map(|(c, _)| Some((c.owner.as_str(), c.idempotency_key.as_deref()?)))
        .unzip();
    let mut existing: HashMap<(String, String), (String, String, String, i64)> = HashMap::new();
    if !owners.is_empty() {
        let rows = sqlx::query(
            "SELECT owner, idempotency_key, trace_id, command_type, payload, created_at
             FROM commands WHERE (owner, idempotency_key) IN (
                 SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&owners)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            existing.insert(
                (row.try_get("owner")?, row.try_get("idempotency_key")?),
                (
                    row.try_get("trace_id")?,
                    row.try_get("command_type")?,
                    row.try_get("payload")?,
                    row.try_get("created_at")?,
                ),
            );
        }
    }

    let mut results = Vec::with_capacity(commands.len());
    let mut events = Vec::new();
    for ((cmd, id), payload) in commands.iter().zip(&ids).zip(&payloads) {
        if inserted.contains(id) {
            events.push(TraceEvent {
                trace_id: cmd.trace_id,
                seq: 1,
                component: Component::CommandApi,
                status: Status::Accepted,
                at: now,
                attempt: None,
                message: Some(format!("{} accepted", cmd.command_type)),
                detail: None,
                state: TraceState::Pending,
            });
            results.push(Ok(Accepted {
                trace_id: cmd.trace_id,
                accepted_at: now,
                created: true,
            }));
            continue;
        }
        let key = (
            cmd.owner.clone(),
            cmd.idempotency_key.clone().unwrap_or_default(),
        );
        let Some((trace_id, command_type, old_payload, created_at)) = existing.get(&key) else {
            return Err(StoreError::Failed(format!(
                "command {id} was neither inserted nor found by its idempotency key"
            )));
        };
        let trace_id = parse_trace_id(trace_id)?;
        results.push(
            if *command_type == cmd.command_type && old_payload == payload {
                Ok(Accepted {
                    trace_id,
                    accepted_at: *created_at,
                    created: false,
                })
            } else {
                Err(StoreError::IdempotencyConflict(trace_id))
            },
        );
    }
    Ok((results, events))
}

/// Asks for a message on the command queue for each trace (SQS mode). A trace that already
/// waits for one gets a fresh row, so a row being sent right now is not taken for it.
async fn insert_dispatch(
    conn: &mut PgConnection,
    trace_ids: &[String],
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dispatch (trace_id, created_at) SELECT t, $2 FROM UNNEST($1::text[]) AS u(t)
         ON CONFLICT (trace_id) DO UPDATE
             SET created_at = excluded.created_at, claimed_by = NULL, claimed_until = NULL",
    )
    .bind(trace_ids)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends events to one trace inside the caller's transaction, in one statement: bumps its
/// sequence counter (and state, if given), which locks the trace's row until commit, and
/// inserts the rows numbered from there.
async fn append_events(
    conn: &mut PgConnection,
    trace_id: TraceId,
    state: Option<TraceState>,
    at: Millis,
    new: &[NewTraceEvent],
) -> Result<Vec<TraceEvent>, StoreError> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let row: Option<(i64, String)> = sqlx::query_as(
        "WITH bump AS (
             UPDATE commands SET last_seq = last_seq + $2, updated_at = $3,
                 state = coalesce($4, state)
             WHERE trace_id = $1
             RETURNING last_seq - $2 AS base, state),
         ins AS (
             INSERT INTO trace_events
                 (trace_id, seq, component, status, attempt, message, detail, state, at)
             SELECT $1, b.base + e.i, e.c, e.st, e.a, e.m, e.d, b.state, $3
             FROM bump b, UNNEST($5::text[], $6::text[], $7::int[], $8::text[], $9::text[])
                 WITH ORDINALITY AS e(c, st, a, m, d, i))
         SELECT base, state FROM bump",
    )
    .bind(trace_id.to_string())
    .bind(new.len() as i64)
    .bind(at)
    .bind(state.map(|s| s.as_str()))
    .bind(new.iter().map(|e| e.component.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|e| e.status.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|e| e.attempt).collect::<Vec<_>>())
    .bind(new.iter().map(|e| e.message.as_str()).collect::<Vec<_>>())
    .bind(
        new.iter()
            .map(|e| e.detail.as_ref().map(Value::to_string))
            .collect::<Vec<_>>(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((base, state)) = row else {
        return Err(StoreError::Failed(format!(
            "trace {trace_id} has no command row to append events to"
        )));
    };
    let state = parse_state(&state)?;
    Ok(new
        .iter()
        .enumerate()
        .map(|(i, e)| e.clone().numbered(trace_id, base + 1 + i as i64, at, state))
        .collect())
}

async fn insert_outbox(
    conn: &mut PgConnection,
    events: &[OutboxEvent],
    now: Millis,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at)
         SELECT i, t, y, p, $5 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
             AS u(i, t, y, p)",
    )
    .bind(
        events
            .iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.trace_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.payload.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// --- rows --------------------------------------------------------------------------------

row_mappers!(PgRow);

const EVENT_COLUMNS: &str = "trace_id, seq, component, status, attempt, message, detail, state, at";

async fn read_events(
    pool: &PgPool,
    trace_id: TraceId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<TraceEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM trace_events
         WHERE trace_id = $1 AND seq > $2
         ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(trace_id.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(event_from_row).collect()
}

/// The events of several traces at once, each range `(trace, after, up to)`, in order.
async fn read_ranges(pool: &PgPool, ranges: &[Range]) -> Result<Vec<TraceEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM trace_events
         JOIN UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(t, lo, hi)
             ON trace_id = u.t AND seq > u.lo AND seq <= u.hi
         ORDER BY trace_id, seq"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ranges.iter().map(|r| r.0.to_string()).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.2).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    rows.iter().map(event_from_row).collect()
}

#[async_trait]
impl Store for PgStore {
    async fn accept(&self, command: NewCommand) -> Result<Accepted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.accepts
            .try_send(AcceptJob { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn trace(&self, trace_id: TraceId) -> Result<Option<TraceRecord>, StoreError> {
        let row = sqlx::query(super::TRACE_QUERY)
            .bind(trace_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| trace_from_row(&row, trace_id)).transpose()
    }

    async fn trace_events(
        &self,
        trace_id: TraceId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<TraceEvent>, StoreError> {
        read_events(&self.pool, trace_id, after_seq, limit).await
    }

    async fn dead_letters(
        &self,
        owner: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, trace_id, series, command_type, owner, payload, attempts,
                 history::text AS history, last_error, dead_lettered_at, replayed_at
             FROM dead_letters
             WHERE ($1::text IS NULL OR owner = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_dead_letter(
        &self,
        trace_id: TraceId,
        event: NewTraceEvent,
    ) -> Result<Option<Accepted>, StoreError> {
        let id = trace_id.to_string();
        let mut tx = self.pool.begin().await?;
        let now = now_millis();
        let replayed = sqlx::query(
            "UPDATE dead_letters SET replayed_at = $1 WHERE trace_id = $2 AND replayed_at IS NULL",
        )
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let restarted = sqlx::query(
            "UPDATE commands SET state = 'PENDING', attempts = 0, series = series + 1,
                 next_attempt_at = $1, attempt_errors = '[]', error = NULL, lease_expires_at = NULL
             WHERE trace_id = $2 AND state = 'DEAD_LETTERED'",
        )
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if replayed == 0 || restarted == 0 {
            return Ok(None);
        }
        let events = append_events(&mut tx, trace_id, None, now, &[event]).await?;
        if self.dispatch {
            insert_dispatch(&mut tx, &[id], now).await?;
        }
        tx.commit().await?;
        self.sink.committed_work(&events, true);
        Ok(Some(Accepted {
            trace_id,
            accepted_at: now,
            created: false,
        }))
    }

    /// One statement: claim up to `limit` (their sequence counters bumped for the two
    /// picked-up events) and write those events, worded as [`picked_events`] words them.
    async fn claim(&self, limit: usize, lease_ms: i64) -> Result<Vec<Claim>, StoreError> {
        // The statement writes exactly two events per claim.
        const { assert!(PICKED_EVENTS == 2) };
        let now = now_millis();
        let (picked, started) = picked_suffixes(lease_ms, QUEUE_TABLE);
        let rows = sqlx::query(concat!(
            "WITH picked AS (
                 SELECT trace_id FROM commands
                 WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $2
                 ORDER BY next_attempt_at LIMIT $3
                 FOR UPDATE SKIP LOCKED),
             claimed AS (
                 UPDATE commands c SET state = 'RUNNING', attempts = c.attempts + 1,
                     fence = c.fence + 1, lease_expires_at = $1, next_attempt_at = NULL,
                     last_seq = c.last_seq + 2, updated_at = $2
                 FROM picked WHERE c.trace_id = picked.trace_id
                 RETURNING c.last_seq, ",
            "c.trace_id, c.command_type, c.payload, c.attempts, c.series, c.fence, c.lease_expires_at",
            "),
             ev AS (
                 INSERT INTO trace_events
                     (trace_id, seq, component, status, attempt, message, state, at)
                 SELECT trace_id, last_seq - 1, $4, $5, attempts, command_type || $6, 'RUNNING', $2
                 FROM claimed
                 UNION ALL
                 SELECT trace_id, last_seq, $7, $5, attempts, 'attempt ' || attempts || $8,
                     'RUNNING', $2
                 FROM claimed)
             SELECT * FROM claimed"
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit as i64)
        .bind(Component::TransactionListener.as_str())
        .bind(Status::Accepted.as_str())
        .bind(&picked)
        .bind(Component::TransactionManager.as_str())
        .bind(&started)
        .fetch_all(&self.pool)
        .await?;
        let mut claims = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len() * PICKED_EVENTS);
        for row in &rows {
            let claim = claim_from_row(row)?;
            let last: i64 = row.try_get("last_seq")?;
            let picked = picked_events(&claim, lease_ms, QUEUE_TABLE);
            let first = last - PICKED_EVENTS as i64 + 1;
            events.extend(picked.into_iter().enumerate().map(|(i, e)| {
                e.numbered(claim.trace_id, first + i as i64, now, TraceState::Running)
            }));
            claims.push(claim);
        }
        self.sink.committed(&events);
        Ok(claims)
    }

    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM commands WHERE state IN ('PENDING', 'RETRYING')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn heartbeat(&self, claim: &Claim, lease_ms: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE commands SET lease_expires_at = $1
             WHERE trace_id = $2 AND fence = $3 AND state = 'RUNNING'",
        )
        .bind(now_millis() + lease_ms)
        .bind(claim.trace_id.to_string())
        .bind(claim.lease_token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Queued for a group commit; see [`attempts`].
    async fn commit_attempt(
        &self,
        claim: &Claim,
        work: Arc<dyn AttemptWork>,
    ) -> Result<AttemptOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.attempts
            .send(AttemptJob {
                lease: claim.into(),
                work,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_failure(&self, claim: &Claim, failure: Failure) -> Result<bool, StoreError> {
        let id = claim.trace_id.to_string();
        let mut tx = self.pool.begin().await?;
        let now = now_millis();
        let (state, next_at, error) = match failure.next {
            Next::Retry { at } => (TraceState::Retrying, Some(at), None),
            Next::Fail => (TraceState::Failed, None, Some(failure.error.as_str())),
            Next::DeadLetter => (TraceState::DeadLettered, None, Some(failure.error.as_str())),
        };
        let ours = sqlx::query(
            "UPDATE commands SET state = $7, next_attempt_at = $1, lease_expires_at = NULL, error = $2,
                 attempt_errors = attempt_errors || jsonb_build_array(jsonb_build_object(
                     'attempt', attempts, 'at', $3::bigint, 'error', $4::text))
             WHERE trace_id = $5 AND fence = $6 AND state = 'RUNNING'
                 AND (NOT $8 OR lease_expires_at < $3)",
        )
        .bind(next_at)
        .bind(error)
        .bind(now)
        .bind(&failure.error)
        .bind(&id)
        .bind(claim.lease_token)
        .bind(state.as_str())
        .bind(failure.lease_expired)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ours == 0 {
            return Ok(false);
        }
        if matches!(failure.next, Next::DeadLetter) {
            sqlx::query(
                "INSERT INTO dead_letters (trace_id, series, command_type, owner, payload, attempts,
                     history, last_error, dead_lettered_at)
                 SELECT trace_id, series, command_type, owner, payload, attempts,
                     attempt_errors, $1, $2
                 FROM commands WHERE trace_id = $3",
            )
            .bind(&failure.error)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            let event = dead_lettered(
                claim.trace_id,
                &claim.command_type,
                claim.attempt,
                &failure.error,
            );
            insert_outbox(&mut tx, &[event], now).await?;
        }
        let events =
            append_events(&mut tx, claim.trace_id, Some(state), now, &failure.events).await?;
        tx.commit().await?;
        // Idle workers elsewhere learn when a retry is due.
        self.sink
            .committed_work(&events, matches!(failure.next, Next::Retry { .. }));
        Ok(true)
    }

    async fn expired_leases(&self, limit: usize) -> Result<Vec<Claim>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claim_columns!(),
            " FROM commands
             WHERE state = 'RUNNING' AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT $2"
        ))
        .bind(now_millis())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn release(&self, claim: &Claim, event: NewTraceEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = now_millis();
        let ours = sqlx::query(
            "UPDATE commands SET state = 'RETRYING', attempts = attempts - 1, next_attempt_at = $1,
                 lease_expires_at = NULL
             WHERE trace_id = $2 AND fence = $3 AND state = 'RUNNING'",
        )
        .bind(now)
        .bind(claim.trace_id.to_string())
        .bind(claim.lease_token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ours == 0 {
            return Ok(false);
        }
        let events = append_events(
            &mut tx,
            claim.trace_id,
            Some(TraceState::Retrying),
            now,
            &[event],
        )
        .await?;
        tx.commit().await?;
        self.sink.committed_work(&events, true);
        Ok(true)
    }

    async fn expire_idempotency_keys(&self, older_than: Millis) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE commands SET idempotency_key = NULL
             WHERE idempotency_key IS NOT NULL AND created_at < $1",
        )
        .bind(older_than)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn forget_sent_outbox(&self, sent_before: Millis) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                .bind(sent_before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn claim_trace(
        &self,
        trace_id: TraceId,
        lease_ms: i64,
        picked: &str,
    ) -> Result<TraceClaim, StoreError> {
        let id = trace_id.to_string();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE commands SET state = 'RUNNING', attempts = attempts + 1, fence = fence + 1,
                 lease_expires_at = $1, next_attempt_at = NULL
             WHERE trace_id = $2 AND state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $3
             RETURNING ",
            claim_columns!()
        ))
        .bind(now + lease_ms)
        .bind(&id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let claim = claim_from_row(&row)?;
            let events = picked_events(&claim, lease_ms, picked);
            let events =
                append_events(&mut tx, trace_id, Some(TraceState::Running), now, &events).await?;
            tx.commit().await?;
            self.sink.committed(&events);
            return Ok(TraceClaim::Claimed(claim));
        }
        tx.rollback().await?;
        let row = sqlx::query(concat!(
            "SELECT state, next_attempt_at, ",
            claim_columns!(),
            " FROM commands WHERE trace_id = $1"
        ))
        .bind(&id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TraceClaim::Missing);
        };
        Ok(match parse_state(row.try_get("state")?)? {
            TraceState::Succeeded | TraceState::Failed | TraceState::DeadLettered => {
                TraceClaim::Terminal
            }
            TraceState::Pending | TraceState::Retrying => TraceClaim::NotDue(
                row.try_get::<Option<i64>, _>("next_attempt_at")?
                    .unwrap_or(now),
            ),
            TraceState::Running => {
                let claim = claim_from_row(&row)?;
                if claim.lease_expires_at < now {
                    TraceClaim::LeaseExpired(claim)
                } else {
                    TraceClaim::Running(claim.lease_expires_at)
                }
            }
        })
    }

    async fn adopt(&self, command: NewCommand, event: NewTraceEvent) -> Result<bool, StoreError> {
        let id = command.trace_id.to_string();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO commands (trace_id, command_type, payload, owner, state, next_attempt_at,
                 last_seq, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'PENDING', $5, 0, $5, $5)
             ON CONFLICT (trace_id) DO NOTHING",
        )
        .bind(&id)
        .bind(&command.command_type)
        .bind(command.payload.to_string())
        .bind(&command.owner)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created == 0 {
            return Ok(false);
        }
        let events = append_events(&mut tx, command.trace_id, None, now, &[event]).await?;
        tx.commit().await?;
        self.sink.committed(&events);
        Ok(true)
    }

    async fn reject(&self, rejected: Rejected) -> Result<(), StoreError> {
        let id = rejected.trace_id.to_string();
        // The body as received, kept as a JSON string.
        let body = serde_json::Value::from(rejected.body.as_str()).to_string();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut events = Vec::new();
        if let Some(trace_events) = &rejected.trace_events {
            let created = sqlx::query(
                "INSERT INTO commands (trace_id, command_type, payload, owner, state, error,
                     last_seq, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'DEAD_LETTERED', $5, 0, $6, $6)
                 ON CONFLICT (trace_id) DO NOTHING",
            )
            .bind(&id)
            .bind(&rejected.command_type)
            .bind(&body)
            .bind(&rejected.owner)
            .bind(&rejected.error)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if created == 1 {
                events = append_events(&mut tx, rejected.trace_id, None, now, trace_events).await?;
            }
        }
        let kept = sqlx::query(
            "INSERT INTO dead_letters (trace_id, series, command_type, owner, payload, attempts,
                 history, last_error, dead_lettered_at)
             VALUES ($1, 1, $2, $3, $4, 0, '[]', $5, $6)
             ON CONFLICT (trace_id, series) DO NOTHING",
        )
        .bind(&id)
        .bind(&rejected.command_type)
        .bind(&rejected.owner)
        .bind(&body)
        .bind(&rejected.error)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if kept == 1 {
            let event = dead_lettered(
                rejected.trace_id,
                &rejected.command_type,
                0,
                &rejected.error,
            );
            insert_outbox(&mut tx, &[event], now).await?;
        }
        tx.commit().await?;
        self.sink.committed(&events);
        Ok(())
    }

    async fn unsent_dispatch(
        &self,
        limit: usize,
    ) -> Result<(Vec<Dispatch>, Option<Millis>), StoreError> {
        let now = now_millis();
        let rows = sqlx::query(
            "WITH picked AS (
                 SELECT trace_id FROM dispatch
                 WHERE claimed_until IS NULL OR claimed_until < $2 OR claimed_by = $3
                 ORDER BY created_at LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE dispatch d SET claimed_by = $3, claimed_until = $2 + $4
             FROM picked WHERE d.trace_id = picked.trace_id
             RETURNING d.trace_id, d.created_at",
        )
        .bind(limit as i64)
        .bind(now)
        .bind(&*self.node)
        .bind(DISPATCH_CLAIM_MS)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(Dispatch {
                    trace_id: parse_trace_id(row.try_get("trace_id")?)?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|d| d.created_at);
        if !out.is_empty() {
            return Ok((out, None));
        }
        let held: Option<i64> = sqlx::query_scalar("SELECT min(claimed_until) FROM dispatch")
            .fetch_one(&self.pool)
            .await?;
        Ok((out, held))
    }

    async fn mark_dispatched(&self, sent: &[Dispatch]) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM dispatch d USING UNNEST($1::text[], $2::bigint[]) AS u(t, c)
             WHERE d.trace_id = u.t AND d.created_at = u.c",
        )
        .bind(
            sent.iter()
                .map(|d| d.trace_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(sent.iter().map(|d| d.created_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Bumps `next_attempt_at` of what it re-sends, so one command is re-sent at most once
    /// per `older_than`.
    async fn redispatch_stale(&self, older_than: Millis, limit: usize) -> Result<u64, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH stale AS (
                 SELECT trace_id FROM commands
                 WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at < $1
                 ORDER BY next_attempt_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE commands c SET next_attempt_at = $2
             FROM stale WHERE c.trace_id = stale.trace_id
             RETURNING c.trace_id",
        )
        .bind(older_than)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            insert_dispatch(&mut tx, &ids, now).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    /// Rows this process's attempts committed come first, without a statement ([`relay`]).
    /// Otherwise, and on every [`OUTBOX_STATEMENT_EVERY`]th call, takes up to `limit` unsent
    /// rows for [`OUTBOX_CLAIM_MS`]: rows another process took are skipped until their claim
    /// expires; rows this process took are taken again (its emitter retrying after a failed
    /// publish), unless rows are listed in the relay (they may be those).
    async fn unsent_outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = now_millis();
        let call = self
            .outbox_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (relay_has_rows, relay_busy) = self.relay.listed();
        if relay_has_rows && !call.is_multiple_of(OUTBOX_STATEMENT_EVERY) {
            let handed = self.relay.take(limit, now);
            if !handed.is_empty() {
                return Ok(handed);
            }
        }
        let rows = sqlx::query(
            "WITH picked AS (
                 SELECT event_id FROM outbox
                 WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2
                     OR (claimed_by = $3 AND NOT $5))
                 ORDER BY created_at, event_id LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o SET claimed_by = $3, claimed_until = $2 + $4
             FROM picked WHERE o.event_id = picked.event_id
             RETURNING o.event_id, o.trace_id, o.event_type, o.payload, o.created_at",
        )
        .bind(limit as i64)
        .bind(now)
        .bind(&*self.node)
        .bind(OUTBOX_CLAIM_MS)
        .bind(relay_busy)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                let event_id: &str = row.try_get("event_id")?;
                let created_at: i64 = row.try_get("created_at")?;
                Ok((
                    created_at,
                    OutboxEvent {
                        event_id: uuid::Uuid::parse_str(event_id)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        trace_id: parse_trace_id(row.try_get("trace_id")?)?,
                        event_type: row.try_get("event_type")?,
                        payload: parse_json(row.try_get("payload")?)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|(at, e)| (*at, e.event_id.to_string()));
        let mut out: Vec<OutboxEvent> = out.into_iter().map(|(_, e)| e).collect();
        self.relay.strike(&out);
        if relay_has_rows {
            out.extend(self.relay.take(limit - out.len(), now));
        }
        Ok(out)
    }

    async fn release_outbox(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL
             WHERE sent_at IS NULL AND claimed_by = $1",
        )
        .bind(&*self.node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// One statement: marks the rows sent and reports each one that was not sent before on
    /// its trace: under the number the row took when it was written (`report_seq`, see
    /// `attempts::succeed`), else numbered after the trace's last event in the order the rows
    /// were published.
    ///
    /// No step joins two intermediate results: the planner guesses one row for each, and a
    /// nested loop over both costs the square of the batch. The update of `outbox` returns the
    /// reports it matched, each trace's bump returns its reports as arrays (unordered: an
    /// ordered aggregate sorts once per trace), and they are unnested and numbered in
    /// publishing order with one sort.
    async fn mark_sent(&self, sent: &[OutboxEvent]) -> Result<(), StoreError> {
        let now = now_millis();
        let reports: Vec<NewTraceEvent> = sent
            .iter()
            .map(|e| published(e.event_id, &e.event_type))
            .collect();
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "WITH sent AS (
                 UPDATE outbox o SET sent_at = $1
                 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[]) WITH ORDINALITY AS r(id, t, c, st, m, d, k)
                 WHERE o.event_id = r.id AND o.sent_at IS NULL
                 RETURNING r.id, r.t, r.c, r.st, r.m, r.d, r.k, o.report_seq),
             per_trace AS (
                 SELECT t, count(*) AS n, array_agg(id) AS ids, array_agg(k) AS ks,
                     array_agg(c) AS cs, array_agg(st) AS sts, array_agg(m) AS ms,
                     array_agg(d) AS ds
                 FROM sent WHERE report_seq IS NULL GROUP BY t ORDER BY t),
             bump AS (
                 UPDATE commands c SET last_seq = c.last_seq + p.n, updated_at = $1
                 FROM per_trace p WHERE c.trace_id = p.t
                 RETURNING c.trace_id, c.last_seq - p.n AS base, c.state, p.ids, p.ks, p.cs,
                     p.sts, p.ms, p.ds),
             numbered AS (
                 SELECT b.trace_id, e.id, b.state, e.c, e.st, e.m, e.d,
                     b.base + row_number() OVER (PARTITION BY b.trace_id ORDER BY e.k) AS seq
                 FROM bump b, UNNEST(b.ids, b.ks, b.cs, b.sts, b.ms, b.ds) AS e(id, k, c, st, m, d)
                 UNION ALL
                 SELECT t, id, 'SUCCEEDED', c, st, m, d, report_seq
                 FROM sent WHERE report_seq IS NOT NULL),
             ins AS (
                 INSERT INTO trace_events
                     (trace_id, seq, component, status, message, detail, state, at)
                 SELECT trace_id, seq, c, st, m, d, state, $1 FROM numbered)
             SELECT id, seq, state FROM numbered",
        )
        .bind(now)
        .bind(
            sent.iter()
                .map(|e| e.event_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            sent.iter()
                .map(|e| e.trace_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            reports
                .iter()
                .map(|r| r.component.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            reports
                .iter()
                .map(|r| r.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            reports
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            reports
                .iter()
                .map(|r| r.detail.as_ref().map(Value::to_string))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.pool)
        .await?;
        // event ID → (sequence number, the trace's state)
        let mut written: HashMap<String, (i64, TraceState)> = HashMap::new();
        for (id, seq, state) in rows {
            written.insert(id, (seq, parse_state(&state)?));
        }
        let mut events = Vec::with_capacity(written.len());
        for (event, report) in sent.iter().zip(reports) {
            let Some(&(seq, state)) = written.get(&event.event_id.to_string()) else {
                continue; // sent before
            };
            events.push(report.numbered(event.trace_id, seq, now, state));
        }
        self.sink.committed(&events);
        Ok(())
    }

    async fn embedded_api_key(
        &self,
        generate: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (principal, secret, created_at) VALUES ('embedded', $1, $2)
             ON CONFLICT (principal) DO NOTHING",
        )
        .bind(generate())
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT secret FROM api_keys WHERE principal = 'embedded'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn wakeups_live(&self) -> bool {
        self.sink.live()
    }
}
