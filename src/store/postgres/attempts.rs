//! Attempts, group-committed: several attempts of this process share one transaction.
//!
//! * `commit_attempt` queues the attempt; a committer takes whatever is queued (up to
//!   [`MAX_GROUP`]) and runs it as one transaction, a few groups in flight at once:
//!   1. each command runs, back to back, on the group's connection; the rows it adds with
//!      `Tx::insert` are held, and written before the next statement of the group (so every
//!      statement sees every earlier row) with one statement per table for all the attempts
//!      (so a group of `createOrder`s costs one round trip for its orders, not one each);
//!   2. one statement checks and ends every lease (its `UPDATE` matches only a command still
//!      `RUNNING` under the attempt's lease token, and locks it until the commit), writes the
//!      dedup marks, and writes every result, trace event and outbox row (the outbox rows
//!      already taken by this process, and handed to its emitter after the commit; see
//!      [`relay`](super::relay); a lone row of a trace's first series with the number of its
//!      "published" report, see [`succeed`]); then the commit.
//! * Leases are almost always still held, so that first pass checks them last. When one is
//!   not (its lease was taken over, or its series was already processed), the group is rolled
//!   back and runs again checked first: one statement locks every lease (`FOR UPDATE`, so no
//!   sweeper takes one over until the commit) and writes the dedup marks, and the attempts
//!   that fail it are fenced off and run nothing (G3).
//! * A command that fails (an error, a panic, a statement the database refused) may leave
//!   the transaction unusable: the group is rolled back, that attempt's outcome is its
//!   failure, and the rest run again as a new group, this time with a savepoint around each
//!   command, so any further failure is rolled back alone (with its dedup mark) and costs no
//!   further pass. Nothing of a rolled-back group is visible, so running a command again
//!   inside the same attempt changes nothing outside it. Held rows that are refused (a
//!   duplicate key) belong to no attempt in particular: the group is rolled back and runs
//!   again with savepoints, where each insert is written when it is made.
//! * A group that fails as a whole (the connection, the commit) falls back to one
//!   transaction per attempt, so each attempt gets its own outcome.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde_json::Value;
use sqlx::{Column, PgConnection, PgPool, Row, TypeInfo, ValueRef};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::feed::Feed;
use super::relay::Relay;
use crate::domain::{
    Claim, CommandError, NewTraceEvent, OutboxEvent, TraceEvent, TraceId, TraceState, now_millis,
};
use crate::ports::{AttemptDone, AttemptOutcome, AttemptWork, SqlArg, StoreError, Tx};

/// Most attempts one group carries.
const MAX_GROUP: usize = 64;
/// Groups being written at once.
const GROUPS_IN_FLIGHT: usize = 2;

/// What a group needs of an attempt's claim (not its payload, which the work holds).
pub(super) struct Lease {
    pub trace_id: TraceId,
    pub lease_token: i64,
    pub series: i32,
}

impl From<&Claim> for Lease {
    fn from(claim: &Claim) -> Self {
        Self {
            trace_id: claim.trace_id,
            lease_token: claim.lease_token,
            series: claim.series,
        }
    }
}

pub(super) struct AttemptJob {
    pub lease: Lease,
    pub work: Arc<dyn AttemptWork>,
    pub reply: oneshot::Sender<Result<AttemptOutcome, StoreError>>,
}

/// What every group of a process shares.
pub(super) struct Committer {
    pub pool: PgPool,
    pub sink: Arc<Feed>,
    /// Where committed outbox rows go for this process's emitter.
    pub relay: Arc<Relay>,
    /// This process's name, written as the taker of the outbox rows.
    pub node: Arc<str>,
}

pub(super) async fn commit_loop(committer: Committer, mut rx: mpsc::Receiver<AttemptJob>) {
    let committer = Arc::new(committer);
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        if rx.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        // Attempts claimed together reach here one by one: let the others that are ready
        // run up to their commit before the group is closed.
        for _ in 0..2 {
            tokio::task::yield_now().await;
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        let committer = committer.clone();
        tokio::spawn(async move {
            run_group(&committer, group).await;
            drop(permit);
        });
    }
}

/// How a group's transaction ended.
enum Group {
    /// Committed: each attempt's outcome, and the events written.
    Committed(Vec<AttemptOutcome>, Vec<TraceEvent>),
    /// The command at this index failed; the transaction was rolled back.
    Failed(usize, CommandError),
    /// Held rows were refused, so whose attempt failed is not known; rolled back.
    Refused,
    /// Checked last, a lease or a dedup mark failed; rolled back.
    Lost,
}

/// How a group's transaction runs.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    /// Leases checked by the statement that ends them, after the commands ran.
    Optimistic,
    /// Leases locked and dedup marks written first; fenced attempts run nothing.
    Checked,
    /// As `Checked`, with a savepoint around each command.
    Savepoints,
}

async fn run_group(c: &Committer, mut jobs: Vec<AttemptJob>) {
    // First optimistic (no extra round trips); once a lease is found lost, checked first;
    // once a command has failed, the rest run again with one savepoint each, so further
    // failures cost no more passes.
    let mut pass = Pass::Optimistic;
    while !jobs.is_empty() {
        match group_in_tx(c, &jobs, pass).await {
            Ok(Group::Committed(outcomes, events)) => {
                c.sink.committed(&events);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
                return;
            }
            Ok(Group::Failed(i, error)) => {
                let job = jobs.remove(i);
                let _ = job.reply.send(Ok(AttemptOutcome::Failed(error)));
                pass = Pass::Savepoints;
            }
            Ok(Group::Refused) => {
                tracing::debug!(
                    attempts = jobs.len(),
                    "held rows were refused; running the group again with a savepoint per attempt"
                );
                pass = Pass::Savepoints;
            }
            Ok(Group::Lost) => {
                tracing::debug!(
                    attempts = jobs.len(),
                    "a lease was lost; running the group again with its leases checked first"
                );
                pass = Pass::Checked; // only the optimistic pass checks last
            }
            Err(e) if jobs.len() == 1 => {
                let _ = jobs.remove(0).reply.send(Err(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, attempts = jobs.len(), "a group of attempts failed; running them one by one");
                for job in jobs.drain(..) {
                    // With a savepoint: its inserts are then written as they are made, so a
                    // refused row fails this attempt, and `Refused` cannot come back.
                    let outcome = match group_in_tx(c, std::slice::from_ref(&job), Pass::Savepoints)
                        .await
                    {
                        Ok(Group::Committed(mut outcomes, events)) => {
                            c.sink.committed(&events);
                            Ok(outcomes.remove(0))
                        }
                        Ok(Group::Failed(_, error)) => Ok(AttemptOutcome::Failed(error)),
                        Ok(Group::Refused | Group::Lost) => Err(StoreError::Failed(
                            "a group with savepoints held rows or did not check its lease".into(),
                        )),
                        Err(e) => Err(e),
                    };
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }
}

async fn group_in_tx(c: &Committer, jobs: &[AttemptJob], pass: Pass) -> Result<Group, StoreError> {
    let now = now_millis();
    let mut tx = c.pool.begin().await?;
    let runnable = match pass {
        Pass::Optimistic => None,
        Pass::Checked | Pass::Savepoints => Some(check_leases(&mut tx, now, jobs).await?),
    };
    let savepoints = pass == Pass::Savepoints;

    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut done = Vec::new();
    // Without savepoints, inserted rows wait until the next statement, and the rows of every
    // attempt go in one statement per table.
    let mut held = Held::default();
    for (i, job) in jobs.iter().enumerate() {
        if let Some(runnable) = &runnable
            && !runnable.contains(&(job.lease.trace_id.to_string(), job.lease.lease_token))
        {
            outcomes.push(AttemptOutcome::Fenced);
            continue;
        }
        if savepoints {
            sqlx::raw_sql("SAVEPOINT attempt").execute(&mut *tx).await?;
        }
        let run = {
            let mut view = PgTx {
                conn: &mut tx,
                held: (!savepoints).then_some(&mut held),
            };
            AssertUnwindSafe(job.work.run(&mut view))
                .catch_unwind()
                .await
        };
        if held.refused {
            tx.rollback().await?;
            return Ok(Group::Refused);
        }
        let error = match run {
            Ok(Ok(d)) => {
                if savepoints {
                    sqlx::raw_sql("RELEASE SAVEPOINT attempt")
                        .execute(&mut *tx)
                        .await?;
                }
                done.push((&job.lease, d));
                outcomes.push(AttemptOutcome::Committed);
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                tracing::error!(trace.id = %job.lease.trace_id, "the command panicked");
                CommandError::technical("the command panicked")
            }
        };
        if !savepoints {
            // Now, so the group's row locks are gone before the failure is recorded.
            tx.rollback().await?;
            return Ok(Group::Failed(i, error));
        }
        // Its writes go, and so does its dedup mark (written before the savepoint), so that
        // its next attempt may run.
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT attempt")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM processed WHERE trace_id = $1 AND series = $2")
            .bind(job.lease.trace_id.to_string())
            .bind(job.lease.series)
            .execute(&mut *tx)
            .await?;
        outcomes.push(AttemptOutcome::Failed(error));
    }
    if held.write(&mut tx).await.is_err() {
        tx.rollback().await?;
        return Ok(Group::Refused);
    }
    let claimed_until = now + super::OUTBOX_CLAIM_MS;
    let mark = pass == Pass::Optimistic;
    let Some((events, outbox)) =
        succeed(&mut tx, now, done, mark, (&c.node, claimed_until)).await?
    else {
        tx.rollback().await?;
        return Ok(Group::Lost);
    };
    // Listed before the commit, so that no claiming statement can see a row not yet listed.
    let handed = c.relay.pending(outbox);
    tx.commit().await?;
    c.relay.committed(handed, claimed_until);
    Ok(Group::Committed(outcomes, events))
}

/// Locks the leases of a group that are still held (`FOR UPDATE`, so no sweeper takes one
/// over until the commit) and writes their dedup marks; returns the (trace, lease token) pairs
/// that hold both, the attempts that may run.
async fn check_leases(
    conn: &mut PgConnection,
    now: i64,
    jobs: &[AttemptJob],
) -> Result<HashSet<(String, i64)>, StoreError> {
    // Keyed by lease token too: a zombie and its successor may meet in one group. The leases
    // held (`ours`, at most one per trace) and the marks written come back as two lists, with
    // no join of the two: the planner would guess one row for each and loop over both.
    let rows: Vec<(bool, String, Option<i64>)> = sqlx::query_as(
        "WITH ours AS (
             SELECT c.trace_id, c.fence, u.s FROM commands c
             JOIN UNNEST($2::text[], $3::bigint[], $4::int[]) AS u(t, f, s) ON c.trace_id = u.t
             WHERE c.fence = u.f AND c.state = 'RUNNING' AND c.lease_expires_at >= $1
             ORDER BY c.trace_id
             FOR UPDATE OF c),
         marked AS (
             INSERT INTO processed (trace_id, series, processed_at)
             SELECT trace_id, s, $1 FROM ours
             ON CONFLICT DO NOTHING
             RETURNING trace_id)
         SELECT true, trace_id, fence FROM ours
         UNION ALL SELECT false, trace_id, NULL FROM marked",
    )
    .bind(now)
    .bind(
        jobs.iter()
            .map(|j| j.lease.trace_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| j.lease.lease_token).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.lease.series).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let marked: HashSet<&str> = rows
        .iter()
        .filter(|(held, ..)| !held)
        .map(|(_, t, _)| t.as_str())
        .collect();
    Ok(rows
        .iter()
        .filter_map(|(held, t, fence)| match (held, fence) {
            (true, Some(f)) if marked.contains(t.as_str()) => Some((t.clone(), *f)),
            _ => None,
        })
        .collect())
}

/// Writes the successful attempts in one statement: each command's result and state (only
/// where its lease is still held), its trace events (numbered after its last one), its dedup
/// mark when `mark` (the optimistic pass) and its outbox rows (taken by `taker` = (node,
/// until)); returns the events and the outbox rows. An attempt of a trace's first series with
/// one outbox row also takes the number of that row's "published" report, the one after its
/// events (`report_seq`, migrations/postgres/0006). `None` when `mark` and a lease or a mark
/// failed: the caller rolls back.
async fn succeed(
    conn: &mut PgConnection,
    now: i64,
    mut done: Vec<(&Lease, AttemptDone)>,
    mark: bool,
    taker: (&str, i64),
) -> Result<Option<(Vec<TraceEvent>, Vec<OutboxEvent>)>, StoreError> {
    if done.is_empty() {
        return Ok(Some((Vec::new(), Vec::new())));
    }
    // One order for the rows a group locks, whatever order its attempts finished in.
    done.sort_unstable_by_key(|(lease, _)| lease.trace_id);
    if mark && done.windows(2).any(|w| w[0].0.trace_id == w[1].0.trace_id) {
        // A zombie and its successor in one group: only a check first tells them apart.
        return Ok(None);
    }
    // Per attempt, whether its report's number is taken now; per outbox row, the same.
    let reserves: Vec<bool> = done
        .iter()
        .map(|(lease, d)| lease.series == 1 && d.outbox.len() == 1)
        .collect();
    let mut outbox = Vec::new();
    let mut reserved = Vec::new();
    for ((_, d), &r) in done.iter_mut().zip(&reserves) {
        reserved.extend(std::iter::repeat_n(r, d.outbox.len()));
        outbox.append(&mut d.outbox);
    }
    let column = |f: &dyn Fn(&NewTraceEvent) -> Option<String>| {
        done.iter()
            .flat_map(|(_, d)| d.events.iter().map(f))
            .collect::<Vec<_>>()
    };
    // Marks and held leases come back as two lists (no join of the two, see `check_leases`).
    let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
        "WITH ok AS (
             UPDATE commands c SET state = 'SUCCEEDED', result = u.r, lease_expires_at = NULL,
                 last_seq = c.last_seq + u.n, updated_at = $1
             FROM UNNEST($2::text[], $3::text[], $4::bigint[], $18::bigint[]) AS u(t, r, n, f)
             WHERE c.trace_id = u.t AND c.fence = u.f AND c.state = 'RUNNING'
                 AND c.lease_expires_at >= $1
             RETURNING c.trace_id, c.last_seq - u.n AS base, c.last_seq AS last),
         marked AS (
             INSERT INTO processed (trace_id, series, processed_at)
             SELECT t, s, $1 FROM UNNEST($2::text[], $19::int[]) AS m(t, s) WHERE $20
             ON CONFLICT DO NOTHING
             RETURNING trace_id),
         ins AS (
             INSERT INTO trace_events
                 (trace_id, seq, component, status, attempt, message, detail, state, at)
             SELECT e.t, ok.base + e.i, e.c, e.st, e.a, e.m, e.d, 'SUCCEEDED', $1
             FROM UNNEST($5::text[], $6::bigint[], $7::text[], $8::text[], $9::int[],
                     $10::text[], $11::text[]) AS e(t, i, c, st, a, m, d)
             JOIN ok ON ok.trace_id = e.t),
         out AS (
             INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at,
                     claimed_by, claimed_until, report_seq)
             SELECT o.i, o.t, o.y, o.p, $1, $16, $17, ok.last
             FROM UNNEST($12::text[], $13::text[], $14::text[], $15::text[], $21::bool[])
                     AS o(i, t, y, p, r)
                 LEFT JOIN ok ON o.r AND ok.trace_id = o.t)
         SELECT trace_id, base FROM ok
         UNION ALL SELECT trace_id, NULL FROM marked",
    )
    .bind(now)
    .bind(
        done.iter()
            .map(|(c, _)| c.trace_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .map(|(_, d)| d.result.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .zip(&reserves)
            .map(|((_, d), &r)| d.events.len() as i64 + i64::from(r))
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .flat_map(|(c, d)| std::iter::repeat_n(c.trace_id.to_string(), d.events.len()))
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .flat_map(|(_, d)| 1..=d.events.len() as i64)
            .collect::<Vec<_>>(),
    )
    .bind(column(&|e| Some(e.component.as_str().to_owned())))
    .bind(column(&|e| Some(e.status.as_str().to_owned())))
    .bind(
        done.iter()
            .flat_map(|(_, d)| d.events.iter().map(|e| e.attempt))
            .collect::<Vec<_>>(),
    )
    .bind(column(&|e| Some(e.message.clone())))
    .bind(column(&|e| e.detail.as_ref().map(Value::to_string)))
    .bind(
        outbox
            .iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        outbox
            .iter()
            .map(|e| e.trace_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        outbox
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        outbox
            .iter()
            .map(|e| e.payload.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(taker.0)
    .bind(taker.1)
    .bind(done.iter().map(|(c, _)| c.lease_token).collect::<Vec<_>>())
    .bind(done.iter().map(|(c, _)| c.series).collect::<Vec<_>>())
    .bind(mark)
    .bind(&reserved)
    .fetch_all(&mut *conn)
    .await?;
    let (ok, marked): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, base)| base.is_some());
    if mark && (ok.len() != done.len() || marked.len() != done.len()) {
        return Ok(None);
    }
    let base: std::collections::HashMap<String, i64> = ok
        .into_iter()
        .filter_map(|(trace, base)| Some((trace, base?)))
        .collect();
    let mut events = Vec::new();
    for (lease, d) in done {
        let Some(base) = base.get(&lease.trace_id.to_string()) else {
            // Checked first, the leases are locked: only a missing row gets here.
            return Err(StoreError::Failed(format!(
                "trace {} has no running command row under its lease",
                lease.trace_id
            )));
        };
        events.extend(d.events.into_iter().enumerate().map(|(i, e)| {
            e.numbered(
                lease.trace_id,
                base + 1 + i as i64,
                now,
                TraceState::Succeeded,
            )
        }));
    }
    Ok(Some((events, outbox)))
}

/// What a command sees of the attempt's transaction.
struct PgTx<'c> {
    conn: &'c mut PgConnection,
    /// Where `insert` leaves its row while the group runs without savepoints; `None`
    /// writes it at once.
    held: Option<&'c mut Held>,
}

/// Rows the group's commands inserted and that are not written yet.
#[derive(Default)]
struct Held {
    rows: Vec<HeldRow>,
    /// Writing them failed; whose row was refused is not known.
    refused: bool,
}

struct HeldRow {
    table: &'static str,
    columns: &'static [&'static str],
    values: Vec<SqlArg>,
}

impl Held {
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let written = write_rows(conn, &rows).await;
        self.refused |= written.is_err();
        written
    }
}

/// How a column is bound: `Null` where it is NULL in every row of the statement.
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Null,
    Int,
    Real,
    Text,
}

impl Cell {
    fn of(arg: &SqlArg) -> Cell {
        match arg {
            SqlArg::Null => Cell::Null,
            SqlArg::Int(_) => Cell::Int,
            SqlArg::Real(_) => Cell::Real,
            SqlArg::Text(_) => Cell::Text,
        }
    }

    /// The column's binding for rows whose values are `self` so far and `arg` next; `None`
    /// when they disagree (an integer and a text, say), so one array cannot carry both.
    fn with(self, arg: &SqlArg) -> Option<Cell> {
        match (self, Cell::of(arg)) {
            (a, Cell::Null) => Some(a),
            (Cell::Null, b) => Some(b),
            (a, b) => (a == b).then_some(a),
        }
    }

    fn array(self) -> Option<&'static str> {
        match self {
            Cell::Null => None,
            Cell::Int => Some("int8[]"),
            Cell::Real => Some("float8[]"),
            Cell::Text => Some("text[]"),
        }
    }
}

/// Rows of one statement: the same table and columns, each column one binding.
struct Batch<'a> {
    table: &'static str,
    columns: &'static [&'static str],
    cells: Vec<Cell>,
    rows: Vec<&'a HeldRow>,
}

/// Sorts rows into statements, in the order each table and column list first appears, so
/// rows of a table go in before rows of a table inserted after it. A row joins the first
/// batch of its table and columns that can bind it (NULLs fit any binding); only a row whose
/// values disagree in type with that batch's starts another.
fn batches(rows: &[HeldRow]) -> Vec<Batch<'_>> {
    let mut out: Vec<Batch<'_>> = Vec::new();
    'rows: for row in rows {
        for batch in out
            .iter_mut()
            .filter(|b| b.table == row.table && b.columns == row.columns)
        {
            let cells: Option<Vec<Cell>> = batch
                .cells
                .iter()
                .zip(&row.values)
                .map(|(c, v)| c.with(v))
                .collect();
            if let Some(cells) = cells {
                batch.cells = cells;
                batch.rows.push(row);
                continue 'rows;
            }
        }
        out.push(Batch {
            table: row.table,
            columns: row.columns,
            cells: row.values.iter().map(Cell::of).collect(),
            rows: vec![row],
        });
    }
    out
}

/// Writes rows with one `INSERT … SELECT … FROM UNNEST(…)` per [`Batch`]. A column NULL in
/// every row of its batch is written as a plain `NULL`, which takes the column's type.
async fn write_rows(conn: &mut PgConnection, rows: &[HeldRow]) -> Result<(), StoreError> {
    for Batch {
        table,
        columns,
        cells,
        rows,
    } in batches(rows)
    {
        let head = super::super::insert_head(table, columns, cells.len())?;
        let mut arrays = Vec::new();
        let mut select = Vec::with_capacity(cells.len());
        for array in cells.iter().map(|c| c.array()) {
            match array {
                Some(ty) => {
                    arrays.push(format!("${}::{ty}", arrays.len() + 1));
                    select.push(format!("u.c{}", arrays.len()));
                }
                None => select.push("NULL".to_owned()),
            }
        }
        let from = if arrays.is_empty() {
            "generate_series(1, $1::int8)".to_owned()
        } else {
            let names: Vec<String> = (1..=arrays.len()).map(|i| format!("c{i}")).collect();
            format!("UNNEST({}) AS u({})", arrays.join(", "), names.join(", "))
        };
        let sql = format!("{head} SELECT {} FROM {from}", select.join(", "));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if arrays.is_empty() {
            query = query.bind(rows.len() as i64);
        }
        for (column, cell) in cells.iter().enumerate() {
            let values = rows.iter().map(|r| &r.values[column]);
            // A batch's column holds its binding's variant or NULL, nothing else.
            query = match cell {
                Cell::Null => continue,
                Cell::Int => query.bind(
                    values
                        .map(|v| {
                            if let SqlArg::Int(i) = v {
                                Some(*i)
                            } else {
                                None
                            }
                        })
                        .collect::<Vec<_>>(),
                ),
                Cell::Real => query.bind(
                    values
                        .map(|v| {
                            if let SqlArg::Real(f) = v {
                                Some(*f)
                            } else {
                                None
                            }
                        })
                        .collect::<Vec<_>>(),
                ),
                Cell::Text => query.bind(
                    values
                        .map(|v| match v {
                            SqlArg::Text(s) => Some(s.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
            };
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

fn bind_args<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &'q [SqlArg],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for arg in args {
        query = match arg {
            SqlArg::Null => query.bind(None::<String>),
            SqlArg::Int(i) => query.bind(*i),
            SqlArg::Real(f) => query.bind(*f),
            SqlArg::Text(s) => query.bind(s.as_str()),
        };
    }
    query
}

impl PgTx<'_> {
    /// Held rows go first, so every statement sees every earlier insert of the group.
    async fn write_held(&mut self) -> Result<(), StoreError> {
        match &mut self.held {
            Some(held) => held.write(self.conn).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Tx for PgTx<'_> {
    async fn insert(
        &mut self,
        table: &'static str,
        columns: &'static [&'static str],
        values: Vec<SqlArg>,
    ) -> Result<(), StoreError> {
        // Checked now, so that a malformed row fails the command that made it.
        super::super::check_insert(table, columns, values.len())?;
        let row = HeldRow {
            table,
            columns,
            values,
        };
        match &mut self.held {
            Some(held) => held.rows.push(row),
            None => write_rows(self.conn, std::slice::from_ref(&row)).await?,
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &'static str, args: &[SqlArg]) -> Result<u64, StoreError> {
        self.write_held().await?;
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
        self.write_held().await?;
        let Some(row) = bind_args(sqlx::query(sql), args)
            .fetch_optional(&mut *self.conn)
            .await?
        else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(row.columns().len());
        for (i, column) in row.columns().iter().enumerate() {
            if row.try_get_raw(i)?.is_null() {
                out.push(Value::Null);
                continue;
            }
            out.push(match column.type_info().name() {
                "INT2" => Value::from(row.try_get::<i16, _>(i)?),
                "INT4" => Value::from(row.try_get::<i32, _>(i)?),
                "INT8" => Value::from(row.try_get::<i64, _>(i)?),
                "FLOAT4" => Value::from(row.try_get::<f32, _>(i)?),
                "FLOAT8" => Value::from(row.try_get::<f64, _>(i)?),
                "BOOL" => Value::from(row.try_get::<bool, _>(i)?),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => Value::from(row.try_get::<String, _>(i)?),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "column {i} has type {other}; commands read integers, floats, booleans and text"
                    )));
                }
            });
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: &'static str, values: Vec<SqlArg>) -> HeldRow {
        const COLUMNS: &[&str] = &["a", "b"];
        HeldRow {
            table,
            columns: COLUMNS,
            values,
        }
    }

    #[test]
    fn nulls_share_a_statement_and_only_a_type_clash_starts_another() {
        let rows = [
            row("parent", vec![SqlArg::Int(1), SqlArg::Null]),
            row("child", vec![SqlArg::Int(1), SqlArg::from("x")]),
            row("parent", vec![SqlArg::Null, SqlArg::from("y")]),
            row("parent", vec![SqlArg::from("z"), SqlArg::Null]),
            row("child", vec![SqlArg::Null, SqlArg::Null]),
        ];
        let got: Vec<(&str, Vec<Cell>, usize)> = batches(&rows)
            .into_iter()
            .map(|b| (b.table, b.cells, b.rows.len()))
            .collect();
        let want = vec![
            ("parent", vec![Cell::Int, Cell::Text], 2),
            ("child", vec![Cell::Int, Cell::Text], 2),
            ("parent", vec![Cell::Text, Cell::Null], 1),
        ];
        assert!(got == want, "batches differ");
    }
}
