//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before anyone is told about it (G1).
//!
//! SQLite has one writer at a time. Instead of letting connections fight over the write lock
//! (busy-waiting), every write goes through one connection behind an async mutex, in arrival
//! order; reads use a separate pool and never wait for writers. Two consequences the rest of
//! the crate relies on:
//!
//! * **Group commit.** Accepts queue up on a channel; one task drains whatever has arrived and
//!   commits it in one transaction, so N concurrent accepts cost one fsync, not N. Finished
//!   attempts do the same, each in its own savepoint.
//! * **Ordered fan-out.** Committed trace events are handed to the [`TraceSink`] while the
//!   writer is still held, so the hub sees events in commit order and per-trace sequence
//!   numbers reach subscribers in order (G5).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool, TypeInfo, ValueRef};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::domain::{
    Accepted, Claim, Component, DeadLetter, Millis, NewCommand, NewTraceEvent, OutboxEvent, Status,
    TraceEvent, TraceId, TraceRecord, TraceState, now_millis,
};
use crate::ports::{
    AttemptOutcome, AttemptWork, Failure, Next, SqlArg, Store, StoreError, TraceSink, Tx,
};

/// How many accepts one group commit may carry.
const MAX_ACCEPT_BATCH: usize = 512;
/// Rows per multi-row `INSERT` in a group commit.
const ACCEPT_ROWS_PER_STATEMENT: usize = 128;
/// How many finished attempts one group commit may carry.
const MAX_ATTEMPT_BATCH: usize = 64;

pub struct SqliteStore {
    inner: Arc<Inner>,
    /// Accepts waiting for the next group commit. Bounded: when it is full the API answers
    /// with a throttling error instead of queueing without limit (G8).
    accepts: mpsc::Sender<AcceptJob>,
    /// Attempts waiting for the next group commit (bounded by the executor's slots).
    attempts: mpsc::Sender<AttemptJob>,
}

struct Inner {
    /// The only connection that writes. The mutex orders writers without busy-waiting.
    writer: Mutex<SqliteConnection>,
    readers: SqlitePool,
    sink: Arc<dyn TraceSink>,
}

struct AttemptJob {
    claim: Claim,
    work: Arc<dyn AttemptWork>,
    reply: oneshot::Sender<Result<AttemptOutcome, StoreError>>,
}

struct AcceptJob {
    command: NewCommand,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, applies migrations and starts the
    /// group-commit task.
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
        let mut writer = SqliteConnection::connect_with(&options).await?;
        super::migrate::sqlite(&mut writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            readers,
            sink,
        });
        let (accepts, rx) = mpsc::channel(accept_queue.max(1));
        tokio::spawn(accept_loop(inner.clone(), rx));
        let (attempts, rx) = mpsc::channel(MAX_ATTEMPT_BATCH);
        tokio::spawn(attempt_loop(inner.clone(), rx));
        Ok(Self {
            inner,
            accepts,
            attempts,
        })
    }
}

/// Drains the accept queue: everything that arrived while the previous commit ran goes into
/// the next one.
async fn accept_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<AcceptJob>) {
    let mut batch = Vec::with_capacity(MAX_ACCEPT_BATCH);
    while rx.recv_many(&mut batch, MAX_ACCEPT_BATCH).await > 0 {
        let commands: Vec<&NewCommand> = batch.iter().map(|j| &j.command).collect();
        match inner.accept_batch(&commands).await {
            Ok(results) => {
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

impl Inner {
    async fn accept_batch(
        &self,
        commands: &[&NewCommand],
    ) -> Result<Vec<Result<Accepted, StoreError>>, StoreError> {
        let mut writer = self.writer.lock().await;
        let mut tx = writer.begin().await?;
        let now = now_millis();
        let mut results = Vec::with_capacity(commands.len());
        // New traces, written together below; (owner, key) → index, for duplicates within
        // the batch itself.
        let mut fresh: Vec<(&NewCommand, String)> = Vec::with_capacity(commands.len());
        let mut keyed: HashMap<(&str, &str), usize> = HashMap::new();
        for cmd in commands {
            let payload = cmd.payload.to_string();
            if let Some(key) = &cmd.idempotency_key {
                let same = |command_type: &str, old_payload: &str| {
                    command_type == cmd.command_type && old_payload == payload
                };
                if let Some(&i) = keyed.get(&(cmd.owner.as_str(), key.as_str())) {
                    let (first, first_payload) = &fresh[i];
                    results.push(if same(&first.command_type, first_payload) {
                        Ok(Accepted {
                            trace_id: first.trace_id,
                            accepted_at: now,
                            created: false,
                        })
                    } else {
                        Err(StoreError::IdempotencyConflict(first.trace_id))
                    });
                    continue;
                }
                let existing: Option<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT trace_id, command_type, payload, created_at FROM commands
                     WHERE owner = $1 AND idempotency_key = $2",
                )
                .bind(&cmd.owner)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((trace_id, command_type, old_payload, created_at)) = existing {
                    let trace_id = parse_trace_id(&trace_id)?;
                    results.push(if same(&command_type, &old_payload) {
                        Ok(Accepted {
                            trace_id,
                            accepted_at: created_at,
                            created: false,
                        })
                    } else {
                        Err(StoreError::IdempotencyConflict(trace_id))
                    });
                    continue;
                }
                keyed.insert((cmd.owner.as_str(), key.as_str()), fresh.len());
            }
            results.push(Ok(Accepted {
                trace_id: cmd.trace_id,
                accepted_at: now,
                created: true,
            }));
            fresh.push((cmd, payload));
        }
        // Two multi-row statements per chunk, instead of two statements per command: on one
        // writer connection, statements are what accepts wait for once commits are shared.
        let mut events = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(ACCEPT_ROWS_PER_STATEMENT) {
            let mut insert_commands = sqlx::query(sqlx::AssertSqlSafe(values_sql(
                "INSERT INTO commands (trace_id, command_type, payload, owner, idempotency_key,
                     state, next_attempt_at, last_seq, created_at, updated_at) VALUES ",
                chunk.len(),
                5,
                "'PENDING', $N, 1, $N, $N",
            )))
            .bind(now);
            let mut insert_events = sqlx::query(sqlx::AssertSqlSafe(values_sql(
                "INSERT INTO trace_events (trace_id, message, seq, component, status, state, at) VALUES ",
                chunk.len(),
                2,
                "1, 'CommandApi', 'ACCEPTED', 'PENDING', $N",
            )))
            .bind(now);
            for (cmd, payload) in chunk {
                let id = cmd.trace_id.to_string();
                let message = format!("{} accepted", cmd.command_type);
                insert_commands = insert_commands
                    .bind(id.clone())
                    .bind(cmd.command_type.clone())
                    .bind(payload.clone())
                    .bind(cmd.owner.clone())
                    .bind(cmd.idempotency_key.clone());
                insert_events = insert_events.bind(id).bind(message.clone());
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
            }
            insert_commands.execute(&mut *tx).await?;
            insert_events.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.sink.committed(&events);
        Ok(results)
    }
}

/// Drains finished attempts: everything that arrived while the previous commit ran shares the
/// next one, each in its own savepoint, so one attempt's failure rolls back only its own work.
async fn attempt_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<AttemptJob>) {
    let mut batch = Vec::with_capacity(MAX_ATTEMPT_BATCH);
    while rx.recv_many(&mut batch, MAX_ATTEMPT_BATCH).await > 0 {
        let outcomes = inner.attempt_batch(&batch).await;
        for (job, outcome) in batch.drain(..).zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

impl Inner {
    async fn attempt_batch(&self, jobs: &[AttemptJob]) -> Vec<Result<AttemptOutcome, StoreError>> {
        let mut writer = self.writer.lock().await;
        let run = async {
            let mut tx = writer.begin().await?;
            let now = now_millis();
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut events = Vec::new();
            for job in jobs {
                let mut savepoint = tx.begin().await?;
                match attempt_in(&mut savepoint, &job.claim, job.work.as_ref(), now).await {
                    Ok((AttemptOutcome::Committed, committed)) => {
                        savepoint.commit().await?;
                        events.extend(committed);
                        outcomes.push(Ok(AttemptOutcome::Committed));
                    }
                    Ok((other, _)) => {
                        savepoint.rollback().await?;
                        outcomes.push(Ok(other));
                    }
                    Err(e) => {
                        savepoint.rollback().await?;
                        outcomes.push(Err(e));
                    }
                }
            }
            tx.commit().await?;
            Ok::<_, StoreError>((outcomes, events))
        };
        match run.await {
            Ok((outcomes, events)) => {
                self.sink.committed(&events);
                outcomes
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "attempt batch failed");
                jobs.iter()
                    .map(|_| Err(StoreError::Failed("the attempt transaction failed".into())))
                    .collect()
            }
        }
    }
}

/// One attempt inside the caller's (savepoint) transaction: the lease check first, so a zombie
/// stops before any business write; then the dedup mark, the command, its outbox rows, its
/// result and its trace events.
async fn attempt_in(
    conn: &mut SqliteConnection,
    claim: &Claim,
    work: &dyn AttemptWork,
    now: Millis,
) -> Result<(AttemptOutcome, Vec<TraceEvent>), StoreError> {
    let id = claim.trace_id.to_string();
    let ours = sqlx::query(
        "UPDATE commands SET updated_at = $1
         WHERE trace_id = $2 AND fence = $3 AND state = 'RUNNING' AND lease_expires_at >= $1",
    )
    .bind(now)
    .bind(&id)
    .bind(claim.lease_token)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if ours == 0 {
        return Ok((AttemptOutcome::Fenced, Vec::new()));
    }
    let first_time = sqlx::query(
        "INSERT INTO processed (trace_id, series, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(claim.series)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if first_time == 0 {
        tracing::warn!(trace.id = %claim.trace_id, "series already processed; not running it again");
        return Ok((AttemptOutcome::Fenced, Vec::new()));
    }
    // A panicking command must not take the committer task down with it.
    let mut view = SqliteTx { conn: &mut *conn };
    let run = AssertUnwindSafe(work.run(&mut view)).catch_unwind();
    let done = match run.await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Ok((AttemptOutcome::Failed(e), Vec::new())),
        Err(_) => {
            tracing::error!(trace.id = %claim.trace_id, "the command panicked");
            let e = crate::domain::CommandError::technical("the command panicked");
            return Ok((AttemptOutcome::Failed(e), Vec::new()));
        }
    };
    for event in &done.outbox {
        sqlx::query(
            "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event.event_id.to_string())
        .bind(event.trace_id.to_string())
        .bind(&event.event_type)
        .bind(event.payload.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE commands SET state = 'SUCCEEDED', result = $1, lease_expires_at = NULL WHERE trace_id = $2",
    )
        .bind(done.result.to_string())
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    let events = append_events(
        conn,
        claim.trace_id,
        Some(TraceState::Succeeded),
        now,
        &done.events,
    )
    .await?;
    Ok((AttemptOutcome::Committed, events))
}

/// `prefix (…),(…)` for `rows` rows: each row binds `per_row` values of its own, then `tail`,
/// whose `$N` all mean the one value bound first (`$1`, shared by every row).
fn values_sql(prefix: &str, rows: usize, per_row: usize, tail: &str) -> String {
    let tail = tail.replace("$N", "$1");
    let mut sql = String::from(prefix);
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..per_row {
            sql.push_str(&format!("${}, ", 2 + r * per_row + c));
        }
        sql.push_str(&tail);
        sql.push(')');
    }
    sql
}

/// Appends events to a trace: bumps its sequence counter (and state, if given) and inserts the
/// rows. Runs inside the caller's transaction.
async fn append_events(
    conn: &mut SqliteConnection,
    trace_id: TraceId,
    state: Option<TraceState>,
    at: Millis,
    events: &[NewTraceEvent],
) -> Result<Vec<TraceEvent>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let id = trace_id.to_string();
    let (last_seq, state): (i64, String) = sqlx::query_as(
        "UPDATE commands SET last_seq = last_seq + $1, updated_at = $2, state = coalesce($3, state)
         WHERE trace_id = $4 RETURNING last_seq, state",
    )
    .bind(events.len() as i64)
    .bind(at)
    .bind(state.map(|s| s.as_str()))
    .bind(&id)
    .fetch_one(&mut *conn)
    .await?;
    let state = parse_state(&state)?;
    let first = last_seq - events.len() as i64 + 1;
    let mut sql = String::from(
        "INSERT INTO trace_events (trace_id, seq, component, status, attempt, message, detail, state, at) VALUES ",
    );
    for i in 0..events.len() {
        let b = i * 9;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${},${},${},${},${},${},${},${},${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8,
            b + 9
        ));
    }
    // Built only from placeholders; the values are bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let seq = first + i as i64;
        query = query
            .bind(&id)
            .bind(seq)
            .bind(e.component.as_str())
            .bind(e.status.as_str())
            .bind(e.attempt)
            .bind(&e.message)
            .bind(e.detail.as_ref().map(Value::to_string))
            .bind(state.as_str())
            .bind(at);
        out.push(TraceEvent {
            trace_id,
            seq,
            component: e.component,
            status: e.status,
            at,
            attempt: e.attempt,
            message: Some(e.message.clone()),
            detail: e.detail.clone(),
            state,
        });
    }
    query.execute(&mut *conn).await?;
    Ok(out)
}

fn parse_trace_id(s: &str) -> Result<TraceId, StoreError> {
    TraceId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad trace id {s:?}")))
}

fn parse_state(s: &str) -> Result<TraceState, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

fn event_from_row(row: &SqliteRow) -> Result<TraceEvent, StoreError> {
    let detail: Option<String> = row.try_get("detail")?;
    Ok(TraceEvent {
        trace_id: parse_trace_id(row.try_get("trace_id")?)?,
        seq: row.try_get("seq")?,
        component: row
            .try_get::<&str, _>("component")?
            .parse()
            .map_err(StoreError::Corrupt)?,
        status: row
            .try_get::<&str, _>("status")?
            .parse()
            .map_err(StoreError::Corrupt)?,
        at: row.try_get("at")?,
        attempt: row.try_get("attempt")?,
        message: row.try_get("message")?,
        detail: detail.as_deref().map(parse_json).transpose()?,
        state: parse_state(row.try_get("state")?)?,
    })
}

fn claim_from_row(row: &SqliteRow) -> Result<Claim, StoreError> {
    Ok(Claim {
        trace_id: parse_trace_id(row.try_get("trace_id")?)?,
        command_type: row.try_get("command_type")?,
        payload: parse_json(row.try_get("payload")?)?,
        attempt: row.try_get("attempts")?,
        series: row.try_get("series")?,
        lease_token: row.try_get("fence")?,
        lease_expires_at: row
            .try_get::<Option<i64>, _>("lease_expires_at")?
            .unwrap_or(0),
    })
}

fn dead_letter_from_row(row: &SqliteRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        trace_id: parse_trace_id(row.try_get("trace_id")?)?,
        command_type: row.try_get("command_type")?,
        owner: row.try_get("owner")?,
        payload: parse_json(row.try_get("payload")?)?,
        attempts: row.try_get("attempts")?,
        series: row.try_get("series")?,
        history: parse_json(row.try_get("history")?)?,
        last_error: row.try_get("last_error")?,
        dead_lettered_at: row.try_get("dead_lettered_at")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}

macro_rules! claim_columns {
    () => {
        "trace_id, command_type, payload, attempts, series, fence, lease_expires_at"
    };
}

#[async_trait]
impl Store for SqliteStore {
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
        let row = sqlx::query(
            "SELECT command_type, owner, state, attempts, series, created_at, updated_at, result, error
             FROM commands WHERE trace_id = $1",
        )
        .bind(trace_id.to_string())
        .fetch_optional(&self.inner.readers)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let result: Option<String> = row.try_get("result")?;
        Ok(Some(TraceRecord {
            trace_id,
            command_type: row.try_get("command_type")?,
            owner: row.try_get("owner")?,
            state: parse_state(row.try_get("state")?)?,
            attempts: row.try_get("attempts")?,
            series: row.try_get("series")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            result: result.as_deref().map(parse_json).transpose()?,
            error: row.try_get("error")?,
        }))
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
        .fetch_all(&self.inner.readers)
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
        .fetch_all(&self.inner.readers)
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_dead_letter(
        &self,
        trace_id: TraceId,
        event: NewTraceEvent,
    ) -> Result<Option<Accepted>, StoreError> {
        let id = trace_id.to_string();
        let mut writer = self.inner.writer.lock().await;
        let mut tx = writer.begin().await?;
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
        tx.commit().await?;
        self.inner.sink.committed(&events);
        Ok(Some(Accepted {
            trace_id,
            accepted_at: now,
            created: false,
        }))
    }

    async fn claim(&self, limit: usize, lease_ms: i64) -> Result<Vec<Claim>, StoreError> {
        let mut writer = self.inner.writer.lock().await;
        let mut tx = writer.begin().await?;
        let now = now_millis();
        let rows = sqlx::query(concat!(
            "UPDATE commands SET state = 'RUNNING', attempts = attempts + 1, fence = fence + 1,
                 lease_expires_at = $1, next_attempt_at = NULL
             WHERE trace_id IN (
                 SELECT trace_id FROM commands
                 WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $2
                 ORDER BY next_attempt_at LIMIT $3)
             RETURNING ",
            claim_columns!()
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let claims = rows
            .iter()
            .map(claim_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut events = Vec::with_capacity(claims.len() * 2);
        for claim in &claims {
            let picked = [
                NewTraceEvent::new(
                    Component::TransactionListener,
                    Status::Accepted,
                    format!("{} picked up from the commands table", claim.command_type),
                )
                .attempt(claim.attempt),
                NewTraceEvent::new(
                    Component::TransactionManager,
                    Status::Accepted,
                    format!("attempt {} started (lease {} ms)", claim.attempt, lease_ms),
                )
                .attempt(claim.attempt),
            ];
            events.extend(
                append_events(
                    &mut tx,
                    claim.trace_id,
                    Some(TraceState::Running),
                    now,
                    &picked,
                )
                .await?,
            );
        }
        tx.commit().await?;
        self.inner.sink.committed(&events);
        Ok(claims)
    }

    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM commands WHERE state IN ('PENDING', 'RETRYING')",
        )
        .fetch_one(&self.inner.readers)
        .await?)
    }

    async fn heartbeat(&self, claim: &Claim, lease_ms: i64) -> Result<bool, StoreError> {
        let mut writer = self.inner.writer.lock().await;
        let changed = sqlx::query(
            "UPDATE commands SET lease_expires_at = $1
             WHERE trace_id = $2 AND fence = $3 AND state = 'RUNNING'",
        )
        .bind(now_millis() + lease_ms)
        .bind(claim.trace_id.to_string())
        .bind(claim.lease_token)
        .execute(&mut *writer)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn commit_attempt(
        &self,
        claim: &Claim,
        work: Arc<dyn AttemptWork>,
    ) -> Result<AttemptOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = AttemptJob {
            claim: claim.clone(),
            work,
            reply,
        };
        self.attempts
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_failure(&self, claim: &Claim, failure: Failure) -> Result<bool, StoreError> {
        let id = claim.trace_id.to_string();
        let mut writer = self.inner.writer.lock().await;
        let mut tx = writer.begin().await?;
        let now = now_millis();
        let (state, next_at, error) = match failure.next {
            Next::Retry { at } => (TraceState::Retrying, Some(at), None),
            Next::Fail => (TraceState::Failed, None, Some(failure.error.as_str())),
            Next::DeadLetter => (TraceState::DeadLettered, None, Some(failure.error.as_str())),
        };
        let ours = sqlx::query(
            "UPDATE commands SET state = $7, next_attempt_at = $1, lease_expires_at = NULL, error = $2,
                 attempt_errors = json_insert(attempt_errors, '$[#]',
                     json_object('attempt', attempts, 'at', $3, 'error', $4))
             WHERE trace_id = $5 AND fence = $6 AND state = 'RUNNING'
                 AND ($8 = 0 OR lease_expires_at < $3)",
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
            let event = OutboxEvent {
                event_id: uuid::Uuid::now_v7(),
                trace_id: claim.trace_id,
                event_type: "CommandDeadLettered".into(),
                payload: serde_json::json!({
                    "traceId": id, "commandType": claim.command_type,
                    "attempts": claim.attempt, "error": failure.error,
                }),
            };
            sqlx::query(
                "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.event_id.to_string())
            .bind(&id)
            .bind(&event.event_type)
            .bind(event.payload.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let events =
            append_events(&mut tx, claim.trace_id, Some(state), now, &failure.events).await?;
        tx.commit().await?;
        self.inner.sink.committed(&events);
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
        .fetch_all(&self.inner.readers)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn release(&self, claim: &Claim, event: NewTraceEvent) -> Result<bool, StoreError> {
        let mut writer = self.inner.writer.lock().await;
        let mut tx = writer.begin().await?;
        let now = now_millis();
        let ours = sqlx::query(
            "UPDATE commands SET state = 'RETRYING', attempts = attempts - 1, next_attempt_at = $1, lease_expires_at = NULL
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
        self.inner.sink.committed(&events);
        Ok(true)
    }

    async fn expire_idempotency_keys(&self, older_than: Millis) -> Result<u64, StoreError> {
        let mut writer = self.inner.writer.lock().await;
        Ok(sqlx::query(
            "UPDATE commands SET idempotency_key = NULL
             WHERE idempotency_key IS NOT NULL AND created_at < $1",
        )
        .bind(older_than)
        .execute(&mut *writer)
        .await?
        .rows_affected())
    }

    async fn unsent_outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, trace_id, event_type, payload FROM outbox
             WHERE sent_at IS NULL ORDER BY created_at, event_id LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.inner.readers)
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
        let mut writer = self.inner.writer.lock().await;
        let mut tx = writer.begin().await?;
        let now = now_millis();
        let mut events = Vec::with_capacity(sent.len());
        for event in sent {
            let first = sqlx::query(
                "UPDATE outbox SET sent_at = $1 WHERE event_id = $2 AND sent_at IS NULL",
            )
            .bind(now)
            .bind(event.event_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if first == 1 {
                let report = NewTraceEvent::new(
                    Component::EventEmitter,
                    Status::Success,
                    format!("published {} {}", event.event_type, event.event_id),
                )
                .detail(serde_json::json!({ "eventId": event.event_id.to_string(),
                                            "eventType": event.event_type }));
                events.extend(append_events(&mut tx, event.trace_id, None, now, &[report]).await?);
            }
        }
        tx.commit().await?;
        self.inner.sink.committed(&events);
        Ok(())
    }

    async fn embedded_api_key(
        &self,
        generate: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError> {
        let mut writer = self.inner.writer.lock().await;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT secret FROM api_keys WHERE principal = 'embedded'")
                .fetch_optional(&mut *writer)
                .await?;
        if let Some(secret) = existing {
            return Ok(secret);
        }
        let secret = generate();
        sqlx::query(
            "INSERT INTO api_keys (principal, secret, created_at) VALUES ('embedded', $1, $2)",
        )
        .bind(&secret)
        .bind(now_millis())
        .execute(&mut *writer)
        .await?;
        Ok(secret)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.readers).await?;
        Ok(())
    }
}

/// What a command sees of the attempt's transaction.
struct SqliteTx<'c> {
    conn: &'c mut SqliteConnection,
}

fn bind_args<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    args: &'q [SqlArg],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for arg in args {
        query = match arg {
            SqlArg::Null => query.bind(None::<i64>),
            SqlArg::Int(i) => query.bind(*i),
            SqlArg::Real(f) => query.bind(*f),
            SqlArg::Text(s) => query.bind(s.as_str()),
        };
    }
    query
}

#[async_trait]
impl Tx for SqliteTx<'_> {
    async fn execute(&mut self, sql: &'static str, args: &[SqlArg]) -> Result<u64, StoreError> {
        Ok(bind_args(sqlx::query(sql), args)
            .execute(&mut *self.conn)
            .await?
            .rows_affected())
    }

    async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: &[SqlArg],
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let Some(row) = bind_args(sqlx::query(sql), args)
            .fetch_optional(&mut *self.conn)
            .await?
        else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(row.columns().len());
        for i in 0..row.columns().len() {
            let raw = row.try_get_raw(i)?;
            let value = if raw.is_null() {
                Value::Null
            } else {
                match raw.type_info().name() {
                    "INTEGER" => Value::from(row.try_get::<i64, _>(i)?),
                    "REAL" => Value::from(row.try_get::<f64, _>(i)?),
                    _ => Value::from(row.try_get::<String, _>(i)?),
                }
            };
            out.push(value);
        }
        Ok(Some(out))
    }
}
