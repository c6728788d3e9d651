//! Pure domain types: what a command, a trace and a trace event are. No I/O here.
//!
//! Everything that crosses a boundary (GraphQL input, SQL rows) is parsed into these types in
//! one place (`schema` for GraphQL, `store` for SQL), so the rest of the crate works with
//! values that are already known to be valid.

mod error;
mod trace;

pub use error::{CommandError, ValidationError};
pub use trace::{
    Component, DeadLetter, NewTraceEvent, Status, TraceEvent, TraceId, TraceRecord, TraceState,
};

use chrono::{DateTime, TimeZone, Utc};

/// Who is calling. Owns the traces it submits (G7); an admin may read every trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub admin: bool,
}

impl Principal {
    /// May this principal read or follow a trace owned by `owner`?
    pub fn may_read(&self, owner: &str) -> bool {
        self.admin || self.id == owner
    }
}

/// How a caller proved who it is: AppSync's authorization modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMode {
    ApiKey,
    Iam,
    Oidc,
    CognitoUserPools,
    /// `--open-access`: no authentication; every directive admits it.
    Open,
}

impl AuthMode {
    /// AppSync's name for the mode (`API_KEY`, `AWS_IAM`, …), as configured.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_uppercase().as_str() {
            "API_KEY" => Self::ApiKey,
            "AWS_IAM" => Self::Iam,
            "OPENID_CONNECT" => Self::Oidc,
            "AMAZON_COGNITO_USER_POOLS" => Self::CognitoUserPools,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ApiKey => "API_KEY",
            Self::Iam => "AWS_IAM",
            Self::Oidc => "OPENID_CONNECT",
            Self::CognitoUserPools => "AMAZON_COGNITO_USER_POOLS",
            Self::Open => "NONE",
        }
    }
}

/// An authenticated caller: who (the principal that owns traces), how (the mode the
/// `@aws_*` directives check), with which groups, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub mode: AuthMode,
    /// `cognito:groups` of a user-pool token (`@aws_cognito_user_pools(cognito_groups:)`).
    pub groups: Vec<String>,
    /// When the credential stops being valid (a JWT's `exp`), in ms since the epoch.
    pub expires_at: Option<Millis>,
}

impl Identity {
    pub fn new(principal: Principal, mode: AuthMode) -> Self {
        Self {
            principal,
            mode,
            groups: Vec::new(),
            expires_at: None,
        }
    }

    pub fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|exp| now >= exp)
    }
}

/// A command type name: the `Mutation` field that carries it, e.g. `createOrder`.
pub type CommandType = String;

/// Milliseconds since the Unix epoch: how every timestamp is stored and compared.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Renders stored milliseconds as an `AWSDateTime` (RFC 3339, millisecond precision, `Z`).
pub fn aws_datetime(ms: Millis) -> String {
    let at: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A command as the CommandApi accepts it: already validated, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub trace_id: TraceId,
    pub command_type: CommandType,
    pub payload: serde_json::Value,
    pub owner: String,
    pub idempotency_key: Option<String>,
}

/// The answer to an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub trace_id: TraceId,
    pub accepted_at: Millis,
    /// False when an earlier command with the same idempotency key was found.
    pub created: bool,
}

/// A command claimed by an executor: the lease token fences every write of this attempt.
#[derive(Debug, Clone)]
pub struct Claim {
    pub trace_id: TraceId,
    pub command_type: CommandType,
    pub payload: serde_json::Value,
    /// 1-based attempt number within the current series.
    pub attempt: i32,
    /// Replays start a new series; the dedup mark is per series.
    pub series: i32,
    pub lease_token: i64,
    pub lease_expires_at: Millis,
}

/// An event the command wants to publish (a side effect), collected by the EventCollector and
/// written to the outbox in the command's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Stable for the life of the event: every published copy carries it (G4).
    pub event_id: uuid::Uuid,
    pub trace_id: TraceId,
    pub event_type: String,
    pub payload: serde_json::Value,
}
