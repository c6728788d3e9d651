//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before anyone is told about it (G1).
//!
//! SQLite has one writer at a time, so tether gives it exactly one: a dedicated OS thread that
//! owns the only writing connection (rusqlite, statements prepared once and cached). Every
//! write — accepts, claims, attempts, failures, outbox marks — is a job sent to that thread.
//! Reads use a separate sqlx pool and never wait for the writer. Three consequences the rest
//! of the crate relies on:
//!
//! * **Group commit.** The thread takes every job that has arrived, runs each in its own
//!   savepoint and commits them together: N concurrent writes cost one fsync, and one job's
//!   failure rolls back only its own work. A statement is a function call on that thread, not
//!   a round trip to another one, so an executed command's dozen statements cost microseconds.
//! * **Ordered fan-out.** Committed trace events are handed to the [`TraceSink`] by the writer
//!   thread right after each commit, so the hub sees events in commit order and per-trace
//!   sequence numbers reach subscribers in order (G5).
//! * **Back-pressure.** Accepts waiting for the writer are counted; past `accept_queue` the
//!   API answers with a throttling error instead of queueing without limit (G8). Other writes
//!   come from the executor, whose slots bound them.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection as _, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{dead_lettered, parse_json, parse_state, parse_trace_id, picked_events, published};
use crate::domain::{
    Accepted, Claim, Component, DeadLetter, Millis, NewCommand, NewTraceEvent, OutboxEvent, Status,
    TraceEvent, TraceId, TraceRecord, TraceState, now_millis,
};
use crate::ports::{
    AttemptOutcome, AttemptWork, Failure, Next, SqlArg, Store, StoreError, TraceSink, Tx,
};

/// How many jobs one group commit may carry.
const MAX_BATCH: usize = 1024;

pub struct SqliteStore {
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
    /// Accepts sent to the writer and not finished yet, bounded by `accept_limit`.
    pending_accepts: Arc<AtomicUsize>,
    accept_limit: usize,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, applies migrations and starts the
    /// writer thread.
    pub async fn open(
        url: &str,
        sink: Arc<dyn TraceSink>,
        accept_queue: usize,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = options.get_filename().to_path_buf();
        let mut setup = SqliteConnection::connect_with(&options).await?;
        super::migrate::sqlite(&mut setup).await?;
        setup.close().await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;

        let conn = tokio::task::spawn_blocking(move || open_writer(path))
            .await
            .map_err(|e| StoreError::Failed(format!("opening the writer: {e}")))??;
        let (jobs, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("tether-sqlite-writer".into())
            .spawn(move || Writer { conn, sink }.run(rx))
            .map_err(|e| StoreError::Failed(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            jobs,
            pending_accepts: Arc::new(AtomicUsize::new(0)),
            accept_limit: accept_queue.max(1),
            readers,
        })
    }

    /// Runs `f` on the writer thread inside the next group commit; answers once it is durable.
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection, Millis, &mut Vec<TraceEvent>) -> Result<Step<R>, StoreError>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Write {
                f: Some(f),
                result: None,
                reply,
                accept_slot: None,
            }))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn open_writer(path: PathBuf) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// What a write job tells the writer: keep its savepoint's writes, or roll them back.
enum Step<R> {
    Keep(R),
    Undo(R),
}

/// One unit of work for the writer thread.
trait Job: Send {
    /// Runs inside the job's own savepoint; `Ok(false)` rolls the savepoint back. Trace events
    /// it writes are pushed to `events` (dropped again on roll-back).
    fn run(
        &mut self,
        conn: &mut Connection,
        now: Millis,
        events: &mut Vec<TraceEvent>,
    ) -> Result<bool, StoreError>;
    /// Called exactly once, after the group's commit (`true`) or its failure.
    fn finish(self: Box<Self>, committed: bool);
}

struct Write<R, F> {
    f: Option<F>,
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
    /// Set for accepts: the slot is given back when the job finishes.
    accept_slot: Option<Arc<AtomicUsize>>,
}

impl<R, F> Job for Write<R, F>
where
    R: Send + 'static,
    F: FnOnce(&mut Connection, Millis, &mut Vec<TraceEvent>) -> Result<Step<R>, StoreError>
        + Send
        + 'static,
{
    fn run(
        &mut self,
        conn: &mut Connection,
        now: Millis,
        events: &mut Vec<TraceEvent>,
    ) -> Result<bool, StoreError> {
        let Some(f) = self.f.take() else {
            return Ok(false);
        };
        let (result, keep) = match f(conn, now, events) {
            Ok(Step::Keep(r)) => (Ok(r), true),
            Ok(Step::Undo(r)) => (Ok(r), false),
            Err(e) => (Err(e), false),
        };
        self.result = Some(result);
        Ok(keep)
    }

    fn finish(self: Box<Self>, committed: bool) {
        if let Some(slot) = &self.accept_slot {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
        let answer = match self.result {
            Some(result) if committed => result,
            _ => Err(StoreError::Failed("the write transaction failed".into())),
        };
        let _ = self.reply.send(answer);
    }
}

struct Writer {
    conn: Connection,
    sink: Arc<dyn TraceSink>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let size = batch.len();
            match self.commit(&mut batch) {
                Ok(events) => {
                    for job in batch.drain(..) {
                        job.finish(true);
                    }
                    self.sink.committed(&events);
                }
                Err(e) => {
                    tracing::error!(error = %e, batch = size, "group commit failed");
                    let _ = self.conn.execute_batch("ROLLBACK");
                    for job in batch.drain(..) {
                        job.finish(false);
                    }
                }
            }
        }
    }

    /// One group commit: every job in its own savepoint, one `COMMIT` for all.
    fn commit(&mut self, batch: &mut [Box<dyn Job>]) -> Result<Vec<TraceEvent>, StoreError> {
        let conn = &mut self.conn;
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let now = now_millis();
        let mut events = Vec::new();
        for job in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            let mark = events.len();
            let keep = match job.run(conn, now, &mut events) {
                Ok(keep) => keep,
                Err(e) => {
                    tracing::error!(error = %e, "write job failed");
                    false
                }
            };
            if !keep {
                events.truncate(mark);
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(events)
    }
}

// --- the writes --------------------------------------------------------------------------

/// Stores a new command and its `ACCEPTED` event, or finds the trace an idempotency key
/// already names.
fn accept_in(
    conn: &mut Connection,
    cmd: &NewCommand,
    now: Millis,
    events: &mut Vec<TraceEvent>,
) -> Result<Step<Result<Accepted, StoreError>>, StoreError> {
    let payload = cmd.payload.to_string();
    if let Some(key) = &cmd.idempotency_key {
        let existing: Option<(String, String, String, i64)> = conn
            .prepare_cached(
                "SELECT trace_id, command_type, payload, created_at FROM commands
                 WHERE owner = ?1 AND idempotency_key = ?2",
            )?
            .query_row(params![cmd.owner, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        if let Some((trace_id, command_type, old_payload, created_at)) = existing {
            let trace_id = parse_trace_id(&trace_id)?;
            return Ok(Step::Keep(
                if command_type == cmd.command_type && old_payload == payload {
                    Ok(Accepted {
                        trace_id,
                        accepted_at: created_at,
                        created: false,
                    })
                } else {
                    Err(StoreError::IdempotencyConflict(trace_id))
                },
            ));
        }
    }
    let id = cmd.trace_id.to_string();
    conn.prepare_cached(
        "INSERT INTO commands (trace_id, command_type, payload, owner, idempotency_key,
             state, next_attempt_at, last_seq, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING', ?6, 1, ?6, ?6)",
    )?
    .execute(params![
        id,
        cmd.command_type,
        payload,
        cmd.owner,
        cmd.idempotency_key,
        now
    ])?;
    let message = format!("{} accepted", cmd.command_type);
    conn.prepare_cached(
        "INSERT INTO trace_events (trace_id, seq, component, status, state, message, at)
         VALUES (?1, 1, 'CommandApi', 'ACCEPTED', 'PENDING', ?2, ?3)",
    )?
    .execute(params![id, message, now])?;
    events.push(TraceEvent {
        trace_id: cmd.trace_id,
        seq: 1,
        component: Component::CommandApi,
        status: Status::Accepted,
        at: now,
        attempt: None,
        message: Some(message),
        detail: None,
        state: TraceState::Pending,
    });
    Ok(Step::Keep(Ok(Accepted {
        trace_id: cmd.trace_id,
        accepted_at: now,
        created: true,
    })))
}

/// One attempt inside its savepoint: the lease check first, so a zombie stops before any
/// business write; then the dedup mark, the command, its outbox rows, its result and its
/// trace events.
fn attempt_in(
    conn: &mut Connection,
    runtime: &tokio::runtime::Handle,
    claim: &Claim,
    work: &dyn AttemptWork,
    now: Millis,
    events: &mut Vec<TraceEvent>,
) -> Result<Step<AttemptOutcome>, StoreError> {
    let id = claim.trace_id.to_string();
    let ours = conn
        .prepare_cached(
            "UPDATE commands SET updated_at = ?1
             WHERE trace_id = ?2 AND fence = ?3 AND state = 'RUNNING' AND lease_expires_at >= ?1",
        )?
        .execute(params![now, id, claim.lease_token])?;
    if ours == 0 {
        return Ok(Step::Undo(AttemptOutcome::Fenced));
    }
    let first_time = conn
        .prepare_cached(
            "INSERT INTO processed (trace_id, series, processed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, claim.series, now])?;
    if first_time == 0 {
        tracing::warn!(trace.id = %claim.trace_id, "series already processed; not running it again");
        return Ok(Step::Undo(AttemptOutcome::Fenced));
    }
    // The command's statements run right here, so its future is ready at every step; the
    // runtime handle only drives it. A panicking command must not take the writer with it.
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut view = SqliteTx { conn: &mut *conn };
        runtime.block_on(work.run(&mut view))
    }));
    let done = match run {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Ok(Step::Undo(AttemptOutcome::Failed(e))),
        Err(_) => {
            tracing::error!(trace.id = %claim.trace_id, "the command panicked");
            let e = crate::domain::CommandError::technical("the command panicked");
            return Ok(Step::Undo(AttemptOutcome::Failed(e)));
        }
    };
    for event in &done.outbox {
        insert_outbox(conn, event, now)?;
    }
    conn.prepare_cached(
        "UPDATE commands SET state = 'SUCCEEDED', result = ?1, lease_expires_at = NULL
         WHERE trace_id = ?2",
    )?
    .execute(params![done.result.to_string(), id])?;
    append_events(
        conn,
        claim.trace_id,
        Some(TraceState::Succeeded),
        now,
        &done.events,
        events,
    )?;
    Ok(Step::Keep(AttemptOutcome::Committed))
}

fn insert_outbox(conn: &Connection, event: &OutboxEvent, now: Millis) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        event.event_id.to_string(),
        event.trace_id.to_string(),
        event.event_type,
        event.payload.to_string(),
        now
    ])?;
    Ok(())
}

/// Appends events to a trace: bumps its sequence counter (and state, if given) and inserts the
/// rows; the committed events go to `out`. Runs inside the caller's savepoint.
fn append_events(
    conn: &Connection,
    trace_id: TraceId,
    state: Option<TraceState>,
    at: Millis,
    new: &[NewTraceEvent],
    out: &mut Vec<TraceEvent>,
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let id = trace_id.to_string();
    let (last_seq, state): (i64, String) = conn
        .prepare_cached(
            "UPDATE commands SET last_seq = last_seq + ?1, updated_at = ?2,
                 state = coalesce(?3, state)
             WHERE trace_id = ?4 RETURNING last_seq, state",
        )?
        .query_row(
            params![new.len() as i64, at, state.map(|s| s.as_str()), id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    let state = parse_state(&state)?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO trace_events (trace_id, seq, component, status, attempt, message, detail, state, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let first = last_seq - new.len() as i64 + 1;
    for (i, e) in new.iter().enumerate() {
        let seq = first + i as i64;
        insert.execute(params![
            id,
            seq,
            e.component.as_str(),
            e.status.as_str(),
            e.attempt,
            e.message,
            e.detail.as_ref().map(Value::to_string),
            state.as_str(),
            at
        ])?;
        out.push(e.clone().numbered(trace_id, seq, at, state));
    }
    Ok(())
}

fn claim_from_rusqlite(r: &rusqlite::Row<'_>) -> Result<Claim, StoreError> {
    let trace_id: String = r.get(0)?;
    let payload: String = r.get(2)?;
    Ok(Claim {
        trace_id: parse_trace_id(&trace_id)?,
        command_type: r.get(1)?,
        payload: parse_json(&payload)?,
        attempt: r.get(3)?,
        series: r.get(4)?,
        lease_token: r.get(5)?,
        lease_expires_at: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
    })
}

// --- rows --------------------------------------------------------------------------------

row_mappers!(SqliteRow);

#[async_trait]
impl Store for SqliteStore {
    async fn accept(&self, command: NewCommand) -> Result<Accepted, StoreError> {
        let slots = &self.pending_accepts;
        if slots.fetch_add(1, Ordering::AcqRel) >= self.accept_limit {
            slots.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Overloaded);
        }
        let (reply, answer) = oneshot::channel();
        let job = Write {
            f: Some(
                move |conn: &mut Connection, now, events: &mut Vec<TraceEvent>| {
                    accept_in(conn, &command, now, events)
                },
            ),
            result: None,
            reply,
            accept_slot: Some(slots.clone()),
        };
        if self.jobs.send(Box::new(job)).is_err() {
            // The job was dropped unfinished: give its slot back here.
            slots.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)??
    }

    async fn trace(&self, trace_id: TraceId) -> Result<Option<TraceRecord>, StoreError> {
        let row = sqlx::query(super::TRACE_QUERY)
            .bind(trace_id.to_string())
            .fetch_optional(&self.readers)
            .await?;
        row.map(|row| trace_from_row(&row, trace_id)).transpose()
    }

    async fn trace_events(
        &self,
        trace_id: TraceId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<TraceEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT trace_id, seq, component, status, attempt, message, detail, state, at
             FROM trace_events WHERE trace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(trace_id.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn dead_letters(
        &self,
        owner: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters
             WHERE ($1 IS NULL OR owner = $1) AND ($2 IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_dead_letter(
        &self,
        trace_id: TraceId,
        event: NewTraceEvent,
    ) -> Result<Option<Accepted>, StoreError> {
        self.write(move |conn, now, events| {
            let id = trace_id.to_string();
            let replayed = conn
                .prepare_cached(
                    "UPDATE dead_letters SET replayed_at = ?1
                     WHERE trace_id = ?2 AND replayed_at IS NULL",
                )?
                .execute(params![now, id])?;
            let restarted = conn
                .prepare_cached(
                    "UPDATE commands SET state = 'PENDING', attempts = 0, series = series + 1,
                         next_attempt_at = ?1, attempt_errors = '[]', error = NULL,
                         lease_expires_at = NULL
                     WHERE trace_id = ?2 AND state = 'DEAD_LETTERED'",
                )?
                .execute(params![now, id])?;
            if replayed == 0 || restarted == 0 {
                return Ok(Step::Undo(None));
            }
            append_events(conn, trace_id, None, now, &[event], events)?;
            Ok(Step::Keep(Some(Accepted {
                trace_id,
                accepted_at: now,
                created: false,
            })))
        })
        .await
    }

    async fn claim(&self, limit: usize, lease_ms: i64) -> Result<Vec<Claim>, StoreError> {
        self.write(move |conn, now, events| {
            let claims = {
                let mut stmt = conn.prepare_cached(concat!(
                    "UPDATE commands SET state = 'RUNNING', attempts = attempts + 1,
                         fence = fence + 1, lease_expires_at = ?1, next_attempt_at = NULL
                     WHERE trace_id IN (
                         SELECT trace_id FROM commands
                         WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= ?2
                         ORDER BY next_attempt_at LIMIT ?3)
                     RETURNING ",
                    claim_columns!()
                ))?;
                let mut rows = stmt.query(params![now + lease_ms, now, limit as i64])?;
                let mut claims = Vec::new();
                while let Some(row) = rows.next()? {
                    claims.push(claim_from_rusqlite(row)?);
                }
                claims
            };
            for claim in &claims {
                let picked = picked_events(claim, lease_ms, "the commands table");
                append_events(
                    conn,
                    claim.trace_id,
                    Some(TraceState::Running),
                    now,
                    &picked,
                    events,
                )?;
            }
            Ok(Step::Keep(claims))
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM commands WHERE state IN ('PENDING', 'RETRYING')",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    async fn heartbeat(&self, claim: &Claim, lease_ms: i64) -> Result<bool, StoreError> {
        let (id, token) = (claim.trace_id.to_string(), claim.lease_token);
        self.write(move |conn, now, _| {
            let changed = conn
                .prepare_cached(
                    "UPDATE commands SET lease_expires_at = ?1
                     WHERE trace_id = ?2 AND fence = ?3 AND state = 'RUNNING'",
                )?
                .execute(params![now + lease_ms, id, token])?;
            Ok(Step::Keep(changed == 1))
        })
        .await
    }

    async fn commit_attempt(
        &self,
        claim: &Claim,
        work: Arc<dyn AttemptWork>,
    ) -> Result<AttemptOutcome, StoreError> {
        let claim = claim.clone();
        let runtime = tokio::runtime::Handle::current();
        self.write(move |conn, now, events| {
            attempt_in(conn, &runtime, &claim, work.as_ref(), now, events)
        })
        .await
    }

    async fn record_failure(&self, claim: &Claim, failure: Failure) -> Result<bool, StoreError> {
        let claim = claim.clone();
        self.write(move |conn, now, events| {
            let id = claim.trace_id.to_string();
            let (state, next_at, error) = match failure.next {
                Next::Retry { at } => (TraceState::Retrying, Some(at), None),
                Next::Fail => (TraceState::Failed, None, Some(failure.error.as_str())),
                Next::DeadLetter => (TraceState::DeadLettered, None, Some(failure.error.as_str())),
            };
            let ours = conn
                .prepare_cached(
                    "UPDATE commands SET state = ?7, next_attempt_at = ?1,
                         lease_expires_at = NULL, error = ?2,
                         attempt_errors = json_insert(attempt_errors, '$[#]',
                             json_object('attempt', attempts, 'at', ?3, 'error', ?4))
                     WHERE trace_id = ?5 AND fence = ?6 AND state = 'RUNNING'
                         AND (?8 = 0 OR lease_expires_at < ?3)",
                )?
                .execute(params![
                    next_at,
                    error,
                    now,
                    failure.error,
                    id,
                    claim.lease_token,
                    state.as_str(),
                    failure.lease_expired
                ])?;
            if ours == 0 {
                return Ok(Step::Undo(false));
            }
            if matches!(failure.next, Next::DeadLetter) {
                conn.prepare_cached(
                    "INSERT INTO dead_letters (trace_id, series, command_type, owner, payload,
                         attempts, history, last_error, dead_lettered_at)
                     SELECT trace_id, series, command_type, owner, payload, attempts,
                         attempt_errors, ?1, ?2
                     FROM commands WHERE trace_id = ?3",
                )?
                .execute(params![failure.error, now, id])?;
                let event = dead_lettered(
                    claim.trace_id,
                    &claim.command_type,
                    claim.attempt,
                    &failure.error,
                );
                insert_outbox(conn, &event, now)?;
            }
            append_events(
                conn,
                claim.trace_id,
                Some(state),
                now,
                &failure.events,
                events,
            )?;
            Ok(Step::Keep(true))
        })
        .await
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
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn release(&self, claim: &Claim, event: NewTraceEvent) -> Result<bool, StoreError> {
        let (trace_id, token) = (claim.trace_id, claim.lease_token);
        self.write(move |conn, now, events| {
            let ours = conn
                .prepare_cached(
                    "UPDATE commands SET state = 'RETRYING', attempts = attempts - 1,
                         next_attempt_at = ?1, lease_expires_at = NULL
                     WHERE trace_id = ?2 AND fence = ?3 AND state = 'RUNNING'",
                )?
                .execute(params![now, trace_id.to_string(), token])?;
            if ours == 0 {
                return Ok(Step::Undo(false));
            }
            append_events(
                conn,
                trace_id,
                Some(TraceState::Retrying),
                now,
                &[event],
                events,
            )?;
            Ok(Step::Keep(true))
        })
        .await
    }

    async fn expire_idempotency_keys(&self, older_than: Millis) -> Result<u64, StoreError> {
        self.write(move |conn, _, _| {
            let n = conn
                .prepare_cached(
                    "UPDATE commands SET idempotency_key = NULL
                     WHERE idempotency_key IS NOT NULL AND created_at < ?1",
                )?
                .execute(params![older_than])?;
            Ok(Step::Keep(n as u64))
        })
        .await
    }

    async fn forget_sent_outbox(&self, sent_before: Millis) -> Result<u64, StoreError> {
        self.write(move |conn, _, _| {
            let n = conn
                .prepare_cached("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?1")?
                .execute(params![sent_before])?;
            Ok(Step::Keep(n as u64))
        })
        .await
    }

    async fn unsent_outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, trace_id, event_type, payload FROM outbox
             WHERE sent_at IS NULL ORDER BY created_at, event_id LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                let event_id: &str = row.try_get("event_id")?;
                Ok(OutboxEvent {
                    event_id: uuid::Uuid::parse_str(event_id)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    trace_id: parse_trace_id(row.try_get("trace_id")?)?,
                    event_type: row.try_get("event_type")?,
                    payload: parse_json(row.try_get("payload")?)?,
                })
            })
            .collect()
    }

    async fn mark_sent(&self, sent: &[OutboxEvent]) -> Result<(), StoreError> {
        let sent: Vec<(uuid::Uuid, TraceId, String)> = sent
            .iter()
            .map(|e| (e.event_id, e.trace_id, e.event_type.clone()))
            .collect();
        self.write(move |conn, now, events| {
            for (event_id, trace_id, event_type) in sent {
                let first = conn
                    .prepare_cached(
                        "UPDATE outbox SET sent_at = ?1 WHERE event_id = ?2 AND sent_at IS NULL",
                    )?
                    .execute(params![now, event_id.to_string()])?;
                if first == 1 {
                    let report = published(event_id, &event_type);
                    append_events(conn, trace_id, None, now, &[report], events)?;
                }
            }
            Ok(Step::Keep(()))
        })
        .await
    }

    async fn embedded_api_key(
        &self,
        generate: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError> {
        let fresh = generate();
        self.write(move |conn, now, _| {
            let existing: Option<String> = conn
                .prepare_cached("SELECT secret FROM api_keys WHERE principal = 'embedded'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            if let Some(secret) = existing {
                return Ok(Step::Keep(secret));
            }
            conn.prepare_cached(
                "INSERT INTO api_keys (principal, secret, created_at) VALUES ('embedded', ?1, ?2)",
            )?
            .execute(params![fresh, now])?;
            Ok(Step::Keep(fresh))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }
}

/// What a command sees of the attempt's transaction: statements run on the writer thread's
/// connection, inside the attempt's savepoint.
struct SqliteTx<'c> {
    conn: &'c mut Connection,
}

/// Binds `args` to a statement written with `$N` placeholders (the dialect commands share
/// with PostgreSQL): SQLite treats `$N` as a name, so each one is looked up by its number.
fn bind_dollar(stmt: &mut rusqlite::Statement<'_>, args: &[SqlArg]) -> Result<(), StoreError> {
    for index in 1..=stmt.parameter_count() {
        let number = stmt
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                StoreError::Failed(format!("parameter {index} is not of the form $N"))
            })?;
        let arg = args
            .get(number - 1)
            .ok_or_else(|| StoreError::Failed(format!("no value bound for ${number}")))?;
        match arg {
            SqlArg::Null => stmt.raw_bind_parameter(index, rusqlite::types::Null)?,
            SqlArg::Int(i) => stmt.raw_bind_parameter(index, i)?,
            SqlArg::Real(f) => stmt.raw_bind_parameter(index, f)?,
            SqlArg::Text(s) => stmt.raw_bind_parameter(index, s.as_str())?,
        }
    }
    Ok(())
}

#[async_trait]
impl Tx for SqliteTx<'_> {
    /// Runs at once: SQLite is in-process, so holding rows back saves no round trip.
    async fn insert(
        &mut self,
        table: &'static str,
        columns: &'static [&'static str],
        values: Vec<SqlArg>,
    ) -> Result<(), StoreError> {
        let head = super::insert_head(table, columns, values.len())?;
        let placeholders: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
        let sql = format!("{head} VALUES ({})", placeholders.join(", "));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        bind_dollar(&mut stmt, &values)?;
        stmt.raw_execute()?;
        Ok(())
    }

    async fn execute(&mut self, sql: &'static str, args: &[SqlArg]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        bind_dollar(&mut stmt, args)?;
        Ok(stmt.raw_execute()? as u64)
    }

    async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: &[SqlArg],
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        bind_dollar(&mut stmt, args)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(columns);
        for i in 0..columns {
            out.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::from(n),
                ValueRef::Real(f) => Value::from(f),
                ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => {
                    return Err(StoreError::Corrupt(format!("column {i} is a blob")));
                }
            });
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dollar_placeholders_bind_by_number_not_by_position() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut tx = SqliteTx { conn: &mut conn };
        let args = [SqlArg::Int(7), SqlArg::from("seven")];
        let row = tx
            .fetch_optional("SELECT $2, $1, $2 || $1", &args)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row,
            vec![Value::from("seven"), Value::from(7), Value::from("seven7")]
        );
        let missing = tx.fetch_optional("SELECT $3", &args).await;
        assert!(matches!(missing, Err(StoreError::Failed(m)) if m.contains("$3")));
        let unnamed = tx.execute("SELECT ?", &args).await;
        assert!(matches!(unnamed, Err(StoreError::Failed(_))));
    }
}
