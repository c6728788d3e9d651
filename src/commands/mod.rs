//! The example domain (DESIGN §9): orders. One file per command; [`all`] is what the registry
//! is built from. Adding a command = one `Mutation` field in `schema.graphql` + one handler
//! here.

mod cancel_order;
mod create_order;
mod ship_order;

use std::sync::Arc;

use serde_json::Value;

use crate::domain::{CommandError, ValidationError};
use crate::ports::{Invokable, StoreError};

pub use cancel_order::CancelOrder;
pub use create_order::CreateOrder;
pub use ship_order::ShipOrder;

/// Every handler of the example domain.
pub fn all() -> Vec<Arc<dyn Invokable>> {
    vec![
        Arc::new(CreateOrder),
        Arc::new(CancelOrder),
        Arc::new(ShipOrder),
    ]
}

/// A required, non-blank string field of at most `max` characters.
fn required_str<'a>(input: &'a Value, field: &str, max: usize) -> Result<&'a str, ValidationError> {
    let s = input
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    if s.is_empty() {
        return Err(ValidationError::field(
            format!("input.{field}"),
            format!("{field} must not be blank"),
        ));
    }
    if s.chars().count() > max {
        return Err(ValidationError::field(
            format!("input.{field}"),
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(s)
}

/// A database failure inside a command: technical (retried). The details stay in the log,
/// under a reference; the trace, which clients read, gets only the reference.
fn db_error(what: &str, e: StoreError) -> CommandError {
    let reference = uuid::Uuid::new_v4();
    tracing::error!(error = %e, error.reference = %reference, "{what} failed");
    CommandError::technical(format!(
        "{what} failed: database error (reference {reference})"
    ))
}
