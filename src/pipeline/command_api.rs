//! CommandApi: the accept path. Validates (fail fast), stores the command and its `ACCEPTED`
//! event in one transaction, wakes the listener, and answers with the trace ID.

use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;
use tokio::sync::Notify;

use super::Registry;
use crate::domain::{
    Accepted, Component, NewCommand, NewTraceEvent, Principal, Status, TraceId, TraceState,
    ValidationError,
};
use crate::ports::{Store, StoreError};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("trace {0} not found")]
    NotFound(TraceId),
    #[error("trace {0} is not dead-lettered")]
    NotDeadLettered(TraceId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The fail-fast checks of a command, wherever it comes from (a mutation, or a foreign
/// producer's queue message): a handler exists, the payload fits, fault injection is allowed,
/// and the handler's own validation passes. GraphQL types and AWS scalars are checked before.
pub fn check(
    registry: &Registry,
    command_type: &str,
    input: &Value,
    max_payload_bytes: usize,
    fault_injection: bool,
) -> Result<(), ValidationError> {
    let handler = registry.get(command_type).ok_or_else(|| {
        ValidationError::new(format!("no handler is registered for `{command_type}`"))
    })?;
    let size = input.to_string().len();
    if size > max_payload_bytes {
        return Err(ValidationError::field(
            "input",
            format!("the command payload is {size} bytes; the limit is {max_payload_bytes}"),
        ));
    }
    if !fault_injection && input.get("faults").is_some_and(|f| !f.is_null()) {
        return Err(ValidationError::field(
            "input.faults",
            "fault injection is disabled on this server (start it with --fault-injection)",
        ));
    }
    handler.validate(input)
}

#[derive(Clone)]
pub struct CommandApi {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// Tells the TransactionListener (in this process) that there is new work.
    wake: Arc<Notify>,
    max_payload_bytes: usize,
    fault_injection: bool,
}

impl CommandApi {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        wake: Arc<Notify>,
        max_payload_bytes: usize,
        fault_injection: bool,
    ) -> Self {
        Self {
            store,
            registry,
            wake,
            max_payload_bytes,
            fault_injection,
        }
    }

    /// Accepts a command whose GraphQL types and AWS scalars are already checked.
    pub async fn submit(
        &self,
        principal: &Principal,
        command_type: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, AcceptError> {
        check(
            &self.registry,
            command_type,
            &input,
            self.max_payload_bytes,
            self.fault_injection,
        )?;
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(ValidationError::field(
                "idempotencyKey",
                format!("idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
            )
            .into());
        }
        let accepted = self
            .store
            .accept(NewCommand {
                trace_id: TraceId::new(),
                command_type: command_type.to_owned(),
                payload: input,
                owner: principal.id.clone(),
                idempotency_key,
            })
            .await?;
        if accepted.created {
            self.wake.notify_one();
        }
        tracing::debug!(trace.id = %accepted.trace_id, command.r#type = command_type, created = accepted.created, "command accepted");
        Ok(accepted)
    }

    /// Starts a new attempt series for a dead letter the caller may read.
    pub async fn replay(
        &self,
        principal: &Principal,
        trace_id: TraceId,
    ) -> Result<Accepted, AcceptError> {
        let trace = self.store.trace(trace_id).await?;
        let Some(trace) = trace.filter(|t| principal.may_read(&t.owner)) else {
            return Err(AcceptError::NotFound(trace_id));
        };
        if trace.state != TraceState::DeadLettered {
            return Err(AcceptError::NotDeadLettered(trace_id));
        }
        let event = NewTraceEvent::new(
            Component::CommandApi,
            Status::Accepted,
            format!(
                "dead letter replayed by {}: attempt series {} starts",
                principal.id,
                trace.series + 1
            ),
        );
        let accepted = self
            .store
            .replay_dead_letter(trace_id, event)
            .await?
            .ok_or(AcceptError::NotDeadLettered(trace_id))?;
        self.wake.notify_one();
        Ok(accepted)
    }
}
