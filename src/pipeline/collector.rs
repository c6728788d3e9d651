//! EventCollector: turns the side effects a command announced into outbox rows with stable
//! event IDs, written in the command's own transaction.

use serde_json::{Value, json};

use crate::domain::{Component, NewTraceEvent, OutboxEvent, Status, TraceId};

pub struct EventCollector {
    trace_id: TraceId,
}

impl EventCollector {
    pub fn new(trace_id: TraceId) -> Self {
        Self { trace_id }
    }

    /// Gives every announced event its ID (fixed from here on: each published copy carries it,
    /// G4) and reports what was collected on the trace.
    pub fn collect(&self, announced: Vec<(String, Value)>) -> (Vec<OutboxEvent>, NewTraceEvent) {
        let outbox: Vec<OutboxEvent> = announced
            .into_iter()
            .map(|(event_type, payload)| OutboxEvent {
                event_id: uuid::Uuid::now_v7(),
                trace_id: self.trace_id,
                event_type,
                payload,
            })
            .collect();
        let types: Vec<&str> = outbox.iter().map(|e| e.event_type.as_str()).collect();
        let report = NewTraceEvent::new(
            Component::EventCollector,
            Status::Success,
            format!("{} event(s) collected for the outbox", outbox.len()),
        )
        .detail(json!({
            "events": outbox.iter().map(|e| json!({"eventId": e.event_id.to_string(), "eventType": e.event_type})).collect::<Vec<_>>(),
            "types": types,
        }));
        (outbox, report)
    }
}
