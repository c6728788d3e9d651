use thiserror::Error;

/// A command's input was rejected before it was stored (fail fast). Nothing is written.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{message}")]
pub struct ValidationError {
    /// The input path, e.g. `input.items[0].quantity`.
    pub field: Option<String>,
    pub message: String,
}

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// How a command attempt failed. The type decides what the ErrorHandler does next.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CommandError {
    /// The business said no (unknown order, already shipped). Permanent: `ERROR` at once,
    /// no retry.
    #[error("{code}: {message}")]
    Business { code: String, message: String },
    /// The payload cannot be turned into the command's input. Permanent, like a business
    /// error: running it again cannot help.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Something outside the business failed (database, network, injected fault). Retried
    /// with backoff, then dead-lettered.
    #[error("{0}")]
    Technical(String),
}

impl CommandError {
    pub fn business(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Business {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn technical(message: impl Into<String>) -> Self {
        Self::Technical(message.into())
    }

    pub fn is_permanent(&self) -> bool {
        !matches!(self, CommandError::Technical(_))
    }
}
