//! Store implementations: `sqlite` is the embedded default, `postgres` the shared engine for
//! many processes. The contract tests in `tests/store.rs` run against both.

/// The query behind `Store::trace`, the same for both stores.
const TRACE_QUERY: &str =
    "SELECT command_type, owner, state, attempts, series, created_at, updated_at, result, error
     FROM commands WHERE trace_id = $1";

/// The columns a claim reads, in `claim_from_row`'s order.
macro_rules! claim_columns {
    () => {
        "trace_id, command_type, payload, attempts, series, fence, lease_expires_at"
    };
}

/// Row → domain mappers, written once for both stores' row types.
macro_rules! row_mappers {
    ($row:ty) => {
        fn event_from_row(row: &$row) -> Result<TraceEvent, StoreError> {
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

        fn trace_from_row(row: &$row, trace_id: TraceId) -> Result<TraceRecord, StoreError> {
            let result: Option<String> = row.try_get("result")?;
            Ok(TraceRecord {
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
            })
        }

        fn claim_from_row(row: &$row) -> Result<Claim, StoreError> {
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

        fn dead_letter_from_row(row: &$row) -> Result<DeadLetter, StoreError> {
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
    };
}

pub mod migrate;
pub mod postgres;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

// --- what both stores share -----------------------------------------------------------------

use serde_json::Value;

use crate::domain::{Claim, Component, NewTraceEvent, OutboxEvent, Status, TraceId, TraceState};
use crate::ports::StoreError;

fn parse_trace_id(s: &str) -> Result<TraceId, StoreError> {
    TraceId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad trace id {s:?}")))
}

fn parse_state(s: &str) -> Result<TraceState, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

/// A `Tx::insert` row has one value per column, and some columns.
fn check_insert(table: &str, columns: &[&str], values: usize) -> Result<(), StoreError> {
    if columns.is_empty() || columns.len() != values {
        return Err(StoreError::Failed(format!(
            "insert into {table}: {} columns, {values} values",
            columns.len()
        )));
    }
    Ok(())
}

/// `INSERT INTO "table" ("a", "b", …)` for `Tx::insert`, once the values match the columns.
fn insert_head(table: &str, columns: &[&str], values: usize) -> Result<String, StoreError> {
    check_insert(table, columns, values)?;
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let columns: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
    Ok(format!(
        "INSERT INTO {} ({})",
        quoted(table),
        columns.join(", ")
    ))
}

/// How many events a claim writes on its trace.
const PICKED_EVENTS: usize = 2;

/// The words after the command type and after `attempt <n>` in the picked-up events (the
/// PostgreSQL claim writes those events in SQL, from these).
fn picked_suffixes(lease_ms: i64, from: &str) -> (String, String) {
    (
        format!(" picked up from {from}"),
        format!(" started (lease {lease_ms} ms)"),
    )
}

/// The events a claim writes on its trace: picked up (from where), attempt started.
fn picked_events(claim: &Claim, lease_ms: i64, from: &str) -> [NewTraceEvent; PICKED_EVENTS] {
    let (picked, started) = picked_suffixes(lease_ms, from);
    [
        NewTraceEvent::new(
            Component::TransactionListener,
            Status::Accepted,
            format!("{}{picked}", claim.command_type),
        )
        .attempt(claim.attempt),
        NewTraceEvent::new(
            Component::TransactionManager,
            Status::Accepted,
            format!("attempt {}{started}", claim.attempt),
        )
        .attempt(claim.attempt),
    ]
}

/// The side effect announcing a dead letter, written with it.
fn dead_lettered(trace_id: TraceId, command_type: &str, attempts: i32, error: &str) -> OutboxEvent {
    OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        trace_id,
        event_type: "CommandDeadLettered".into(),
        payload: serde_json::json!({
            "traceId": trace_id.to_string(), "commandType": command_type,
            "attempts": attempts, "error": error,
        }),
    }
}

/// The EventEmitter's report on a trace once one of its outbox rows is published.
fn published(event_id: uuid::Uuid, event_type: &str) -> NewTraceEvent {
    NewTraceEvent::new(
        Component::EventEmitter,
        Status::Success,
        format!("published {event_type} {event_id}"),
    )
    .detail(serde_json::json!({ "eventId": event_id.to_string(), "eventType": event_type }))
}
