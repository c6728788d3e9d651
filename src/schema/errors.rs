//! The one place that turns failures into GraphQL errors with an AppSync-style `errorType`.
//! Internals are logged here once, with a reference the client can quote; they never reach
//! the client.

use async_graphql::{Error, ErrorExtensions};

use crate::ports::StoreError;

/// The `errorType`s tether answers with.
pub mod kind {
    pub const VALIDATION: &str = "ValidationError";
    pub const NOT_FOUND: &str = "NotFound";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const IDEMPOTENCY_CONFLICT: &str = "IdempotencyConflict";
    pub const THROTTLED: &str = "ThrottlingException";
    pub const NOT_DEAD_LETTERED: &str = "NotDeadLettered";
    pub const INTERNAL: &str = "InternalFailure";
    pub const SUBSCRIPTION_OVERFLOW: &str = "SubscriptionOverflow";
}

/// A GraphQL error carrying `errorType` (moved to the top level of the error by the HTTP
/// layer, where AppSync puts it).
pub fn error(error_type: &'static str, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("errorType", error_type))
}

pub fn not_found(trace_id: &str) -> Error {
    error(kind::NOT_FOUND, format!("trace {trace_id} not found"))
}

pub fn unauthorized(field: &str, type_name: &str) -> Error {
    error(
        kind::UNAUTHORIZED,
        format!("Not Authorized to access {field} on type {type_name}"),
    )
}

/// Maps a store failure; unexpected ones are logged with a reference and answered generically.
pub fn store(e: StoreError) -> Error {
    match e {
        StoreError::IdempotencyConflict(trace_id) => error(
            kind::IDEMPOTENCY_CONFLICT,
            format!(
                "this idempotency key was already used for a different command (trace {trace_id})"
            ),
        ),
        StoreError::Overloaded => {
            error(kind::THROTTLED, "too many commands in flight; retry later")
        }
        StoreError::Closed => error(kind::THROTTLED, "the server is shutting down; retry later"),
        other => internal(&other),
    }
}

pub fn internal(e: &dyn std::fmt::Display) -> Error {
    let reference = uuid::Uuid::new_v4();
    tracing::error!(error = %e, error.reference = %reference, "internal error");
    error(
        kind::INTERNAL,
        format!("internal error (reference {reference})"),
    )
}
