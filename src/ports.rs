//! The seams between the pipeline and the outside world, phrased in domain types only.
//!
//! `Store` is the durable state (commands, trace events, outbox, dead letters) and, in the
//! embedded and Postgres shapes, the command queue too. `Tx` is what a command sees of the
//! database inside its attempt's transaction. `Publisher` is where the EventEmitter relays
//! committed outbox rows. Only `app.rs` and tests name the implementations.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use thiserror::Error;

use crate::domain::{
    Accepted, Claim, CommandError, DeadLetter, Millis, NewCommand, NewTraceEvent, OutboxEvent,
    TraceEvent, TraceId, TraceRecord, ValidationError,
};

#[derive(Debug, Error)]
pub enum StoreError {
    /// The same idempotency key was used earlier for a different command.
    #[error("idempotency key already used for a different command (trace {0})")]
    IdempotencyConflict(TraceId),
    /// The store is saturated; the caller should back off.
    #[error("the store is overloaded")]
    Overloaded,
    #[error("the store is shutting down")]
    Closed,
    /// A shared (group) transaction failed; the details are logged where it happened.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// A value bound to a SQL statement a command runs in its transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlArg {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for SqlArg {
    fn from(s: &str) -> Self {
        SqlArg::Text(s.to_owned())
    }
}
impl From<String> for SqlArg {
    fn from(s: String) -> Self {
        SqlArg::Text(s)
    }
}
impl From<i64> for SqlArg {
    fn from(i: i64) -> Self {
        SqlArg::Int(i)
    }
}

/// The database as a command sees it inside its attempt's transaction. Statements use `$1`,
/// `$2`, … placeholders, which both SQLite and PostgreSQL understand; SQL text is static,
/// values are always bound.
#[async_trait]
pub trait Tx: Send {
    /// Runs a statement; returns the number of rows it changed.
    async fn execute(&mut self, sql: &'static str, args: &[SqlArg]) -> Result<u64, StoreError>;
    /// Runs a query; returns the first row's columns as JSON values, if there is a row.
    async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: &[SqlArg],
    ) -> Result<Option<Vec<Value>>, StoreError>;
    /// Inserts one row (`values` in the order of `columns`) and reads nothing back. A store
    /// that runs several attempts in one transaction may hold the row and write it together
    /// with the other attempts' rows for the same table and columns, in one statement, before
    /// any later statement of the transaction runs; so the command's next `execute` or
    /// `fetch_optional` sees it, and if it is refused (a duplicate key, say) the store finds
    /// out whose row it was and fails that attempt alone, as if this call had failed (while
    /// it finds out, another command's statement may be the one that sees the error).
    ///
    /// `table` and `columns` are plain names, quoted as given (no `schema.table`). Values go
    /// in as integers, floats and text, so columns of those types (or that take them by
    /// assignment) only: a `boolean`, `jsonb`, `uuid` or timestamp column needs `execute`,
    /// where the SQL can cast.
    async fn insert(
        &mut self,
        table: &'static str,
        columns: &'static [&'static str],
        values: Vec<SqlArg>,
    ) -> Result<(), StoreError>;
}

/// What a successful attempt leaves behind, written in the same transaction as its business
/// writes.
#[derive(Debug, Default)]
pub struct AttemptDone {
    pub result: Value,
    pub outbox: Vec<OutboxEvent>,
    pub events: Vec<NewTraceEvent>,
}

/// The work of one attempt, run by the store inside the attempt's transaction after the lease
/// check. Returning an error rolls the whole transaction back.
#[async_trait]
pub trait AttemptWork: Send + Sync {
    async fn run(&self, tx: &mut dyn Tx) -> Result<AttemptDone, CommandError>;
}

/// How `Store::commit_attempt` ended.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// Business writes, outbox rows, dedup mark, status and events are committed.
    Committed,
    /// Another attempt holds the lease (or the sweeper took it back): nothing was written.
    Fenced,
    /// The command failed; its transaction was rolled back.
    Failed(CommandError),
}

/// What the ErrorHandler decided after a failed attempt.
#[derive(Debug, Clone)]
pub enum Next {
    Retry { at: Millis },
    Fail,
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub next: Next,
    /// Taken over by the sweeper: applies only if the lease is still expired (a heartbeat may
    /// have renewed it since the sweeper looked).
    pub lease_expired: bool,
    pub error: String,
    pub events: Vec<NewTraceEvent>,
}

/// Where a command named by a queue message stands (SQS mode): the command row decides what
/// the message means, never the message alone.
#[derive(Debug)]
pub enum TraceClaim {
    /// Claimed for a new attempt, counted like a table claim.
    Claimed(Claim),
    /// `SUCCEEDED`, `FAILED` or `DEAD_LETTERED`: nothing left to run.
    Terminal,
    /// Waiting for a retry due at this time.
    NotDue(Millis),
    /// Another attempt holds the lease until this time (a duplicate delivery).
    Running(Millis),
    /// An attempt whose lease ran out: its worker crashed or stalled. Counted like the
    /// sweeper counts it before the trace runs again.
    LeaseExpired(Claim),
    /// No command row has this trace ID.
    Missing,
}

/// A queue message that cannot become a command: kept as a dead letter (a permanent failure)
/// so that it neither loops nor disappears.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub trace_id: TraceId,
    pub command_type: String,
    pub owner: String,
    /// The message body as received.
    pub body: String,
    pub error: String,
    /// When the message named a trace ID that has no command yet, the trace is created as
    /// `DEAD_LETTERED` with these events, so whoever follows it sees why.
    pub trace_events: Option<Vec<NewTraceEvent>>,
}

/// A row of the dispatch outbox: a command waiting to be sent to the command queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub trace_id: TraceId,
    /// Written again when the trace needs another message; only the row that was sent is
    /// deleted.
    pub created_at: Millis,
}

/// Durable state and the command queue (the `commands` table).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- CommandApi -------------------------------------------------------------------
    /// Stores the command and its `ACCEPTED` event in one transaction (G1). Concurrent calls
    /// may share one commit. The same owner + idempotency key returns the first trace.
    async fn accept(&self, command: NewCommand) -> Result<Accepted, StoreError>;

    async fn trace(&self, trace_id: TraceId) -> Result<Option<TraceRecord>, StoreError>;
    async fn trace_events(
        &self,
        trace_id: TraceId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<TraceEvent>, StoreError>;
    /// Dead letters, newest first, after the cursor `before_id`; all owners when `owner` is
    /// `None`.
    async fn dead_letters(
        &self,
        owner: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// Starts a new attempt series for a dead-lettered trace. `None` when the trace is not
    /// dead-lettered (or already replayed).
    async fn replay_dead_letter(
        &self,
        trace_id: TraceId,
        event: NewTraceEvent,
    ) -> Result<Option<Accepted>, StoreError>;

    // --- TransactionListener / TransactionManager --------------------------------------
    /// Claims up to `limit` runnable commands with a lease of `lease_ms`, counting the attempt.
    async fn claim(&self, limit: usize, lease_ms: i64) -> Result<Vec<Claim>, StoreError>;
    /// When the next retry becomes due, if any is waiting.
    async fn next_due(&self) -> Result<Option<Millis>, StoreError>;
    /// Extends a lease that is still ours; false when it is not.
    async fn heartbeat(&self, claim: &Claim, lease_ms: i64) -> Result<bool, StoreError>;
    /// Runs `work` in one transaction fenced by the claim's lease token and the lease's expiry
    /// (G3): an attempt whose lease ran out commits nothing, even before the sweeper noticed.
    /// Concurrent attempts may share one commit; each still commits or rolls back alone.
    async fn commit_attempt(
        &self,
        claim: &Claim,
        work: Arc<dyn AttemptWork>,
    ) -> Result<AttemptOutcome, StoreError>;
    /// Records a failed attempt (retry, fail or dead letter) if the lease is still ours.
    async fn record_failure(&self, claim: &Claim, failure: Failure) -> Result<bool, StoreError>;
    /// Running commands whose lease has expired: their worker crashed or stalled.
    async fn expired_leases(&self, limit: usize) -> Result<Vec<Claim>, StoreError>;
    /// Gives a lease back without counting the attempt (graceful shutdown).
    async fn release(&self, claim: &Claim, event: NewTraceEvent) -> Result<bool, StoreError>;
    /// Forgets idempotency keys older than `older_than`.
    async fn expire_idempotency_keys(&self, older_than: Millis) -> Result<u64, StoreError>;
    /// Deletes outbox rows sent before `sent_before`; unsent rows are never deleted.
    async fn forget_sent_outbox(&self, sent_before: Millis) -> Result<u64, StoreError>;

    // --- SQS mode (PostgreSQL only; the embedded store refuses) ---------------------------
    /// Claims the command of `trace_id` if it is runnable now; otherwise says where it stands.
    async fn claim_trace(
        &self,
        _trace_id: TraceId,
        _lease_ms: i64,
        _picked: &str,
    ) -> Result<TraceClaim, StoreError> {
        Err(sqs_needs_postgres())
    }
    /// Stores a command a foreign producer sent straight to the queue, with its `ACCEPTED`
    /// event, unless its trace exists already. True when it was created.
    async fn adopt(&self, _command: NewCommand, _event: NewTraceEvent) -> Result<bool, StoreError> {
        Err(sqs_needs_postgres())
    }
    /// Keeps a message that is not a valid command as a dead letter, announced by a
    /// `CommandDeadLettered` outbox row like any other (idempotent by trace ID).
    async fn reject(&self, _rejected: Rejected) -> Result<(), StoreError> {
        Err(sqs_needs_postgres())
    }
    /// Takes up to `limit` rows of the dispatch outbox for a short while (like the outbox).
    /// With none to take, says when the earliest row another process holds is free again
    /// (that process may have died).
    async fn unsent_dispatch(
        &self,
        _limit: usize,
    ) -> Result<(Vec<Dispatch>, Option<Millis>), StoreError> {
        Err(sqs_needs_postgres())
    }
    /// Deletes dispatch rows the command queue took.
    async fn mark_dispatched(&self, _sent: &[Dispatch]) -> Result<(), StoreError> {
        Err(sqs_needs_postgres())
    }
    /// The safety net for a message the queue lost (or moved to its own dead-letter queue):
    /// commands due for longer than `older_than` get a new dispatch row. Returns how many.
    async fn redispatch_stale(
        &self,
        _older_than: Millis,
        _limit: usize,
    ) -> Result<u64, StoreError> {
        Err(sqs_needs_postgres())
    }

    // --- EventEmitter -------------------------------------------------------------------
    async fn unsent_outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Marks outbox rows sent and reports it on their traces.
    async fn mark_sent(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;
    /// Gives up this process's hold on unsent outbox rows, so that other processes relay
    /// them at once (graceful shutdown). Stores of one process hold nothing.
    async fn release_outbox(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    // --- Auth and health ----------------------------------------------------------------
    /// The API key kept for embedded mode, created on first start.
    async fn embedded_api_key(
        &self,
        generate: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether every change that makes work runnable wakes the listener (true in one process;
    /// on PostgreSQL while the `LISTEN` connection is up). While false, workers poll at the
    /// short fallback interval.
    fn wakeups_live(&self) -> bool {
        true
    }
}

fn sqs_needs_postgres() -> StoreError {
    StoreError::Failed("the SQS command queue needs the PostgreSQL store".into())
}

/// A message taken from the command queue, with what it takes to settle it.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
    /// Names this receipt of the message: visibility changes and the delete use it.
    pub receipt: String,
    /// How many times the queue has handed this message out (`ApproximateReceiveCount`).
    pub receive_count: u32,
}

#[derive(Debug, Error)]
#[error("command queue: {0}")]
pub struct QueueError(pub String);

/// The command queue between the CommandApi and the executor when it is not the `commands`
/// table (Amazon SQS). Messages name a trace; the command row holds the truth.
#[async_trait]
pub trait CommandQueue: Send + Sync + 'static {
    /// Sends one message per trace; returns the traces the queue took (the rest stay in the
    /// dispatch outbox and are sent again later).
    async fn send(&self, traces: &[TraceId]) -> Result<Vec<TraceId>, QueueError>;
    /// Waits up to the queue's long-poll time for at most `max` messages, each hidden from
    /// other receivers for `visibility_secs`.
    async fn receive(
        &self,
        max: usize,
        visibility_secs: i32,
    ) -> Result<Vec<QueueMessage>, QueueError>;
    /// Hides the message for `secs` more seconds from now (0: visible again at once).
    async fn set_visibility(&self, message: &QueueMessage, secs: i32) -> Result<(), QueueError>;
    async fn delete(&self, message: &QueueMessage) -> Result<(), QueueError>;
}

/// Receives committed trace events in commit order (the hub).
pub trait TraceSink: Send + Sync + 'static {
    fn committed(&self, events: &[TraceEvent]);

    /// Whether anyone here listens to `trace_id`. Events of other traces need not be read
    /// from the database when another process wrote them.
    fn watching(&self, _trace_id: TraceId) -> bool {
        true
    }

    /// The traces someone here listens to: after a lost notification connection, their
    /// events are read again so no live subscriber misses one.
    fn watched(&self) -> Vec<TraceId> {
        Vec::new()
    }

    /// Whether anyone here listens to trace events at all. A process where no one does (a
    /// worker) need not hand its own commits to the sink.
    fn watching_any(&self) -> bool {
        true
    }
}

#[derive(Debug, Error)]
#[error("publish failed: {0}")]
pub struct PublishError(pub String);

/// Where the EventEmitter relays committed outbox rows (side effects).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError>;
}

/// A command handler (the seeds' "Invokable"). Registered by the name of the `Mutation` field
/// that carries the command; found by the CommandBuilder.
#[async_trait]
pub trait Invokable: Send + Sync + 'static {
    /// The `Mutation` field this handler runs, e.g. `createOrder`.
    fn command_type(&self) -> &'static str;

    /// Fail-fast checks at accept time, beyond what GraphQL types and AWS scalars already
    /// checked. Nothing is stored when this fails.
    fn validate(&self, input: &Value) -> Result<(), ValidationError>;

    /// The business logic, inside the attempt's transaction: its writes, the events it
    /// collects and the trace's new status commit together or not at all. Returns the trace's
    /// result.
    async fn invoke(&self, ctx: &mut CommandContext<'_>) -> Result<Value, CommandError>;
}

/// What a command sees while it runs.
pub struct CommandContext<'a> {
    pub trace_id: TraceId,
    pub attempt: i32,
    pub input: &'a Value,
    pub tx: &'a mut dyn Tx,
    /// Side effects the command announces; the EventCollector turns them into outbox rows.
    pub(crate) collected: &'a mut Vec<(String, Value)>,
}

impl CommandContext<'_> {
    /// Announces a side effect (e.g. `OrderCreated`). It is published only if the attempt
    /// commits.
    pub fn emit(&mut self, event_type: impl Into<String>, payload: Value) {
        self.collected.push((event_type.into(), payload));
    }
}
