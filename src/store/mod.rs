//! Store implementations: `sqlite` is the embedded default, `postgres` the shared engine for
//! many processes. The contract tests in `tests/store.rs` run against both.

pub mod migrate;
pub mod postgres;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

// --- what both stores share -----------------------------------------------------------------

use serde_json::Value;

use crate::domain::{Claim, Component, NewTraceEvent, OutboxEvent, Status, TraceId, TraceState};
use crate::ports::{Failure, StoreError};

fn parse_trace_id(s: &str) -> Result<TraceId, StoreError> {
    TraceId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad trace id {s:?}")))
}

fn parse_state(s: &str) -> Result<TraceState, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

/// The events a claim writes on its trace: picked up, attempt started.
fn picked_events(claim: &Claim, lease_ms: i64) -> [NewTraceEvent; 2] {
    [
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
    ]
}

/// The side effect announcing a dead letter, written with it.
fn dead_lettered(claim: &Claim, failure: &Failure) -> OutboxEvent {
    OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        trace_id: claim.trace_id,
        event_type: "CommandDeadLettered".into(),
        payload: serde_json::json!({
            "traceId": claim.trace_id.to_string(), "commandType": claim.command_type,
            "attempts": claim.attempt, "error": failure.error,
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
