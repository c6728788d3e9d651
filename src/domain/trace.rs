use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use super::{Millis, aws_datetime};

/// The ID a client gets back when its command is accepted and follows afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(uuid::Uuid);

impl TraceId {
    /// A new, time-ordered ID (UUID v7), so traces sort by creation.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s.trim()).ok().map(Self)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl Default for TraceId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<uuid::Uuid> for TraceId {
    fn from(u: uuid::Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The seeds' three statuses a component reports.
    Status { Accepted = "ACCEPTED", Success = "SUCCESS", Error = "ERROR" }
}

string_enum! {
    /// The overall state of a trace, derived from its events and kept on the command row.
    /// `SUCCEEDED` and `FAILED` are final; `DEAD_LETTERED` is parked until an explicit
    /// `replayDeadLetter` starts a new attempt series.
    TraceState {
        Pending = "PENDING",
        Running = "RUNNING",
        Retrying = "RETRYING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        DeadLettered = "DEAD_LETTERED",
    }
}

string_enum! {
    /// The pipeline components that report to a trace (the seeds' names).
    Component {
        CommandApi = "CommandApi",
        TransactionListener = "TransactionListener",
        TransactionManager = "TransactionManager",
        CommandBuilder = "CommandBuilder",
        Command = "Command",
        EventCollector = "EventCollector",
        EventEmitter = "EventEmitter",
        ErrorHandler = "ErrorHandler",
    }
}

/// A trace event before the store gives it its sequence number and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTraceEvent {
    pub component: Component,
    pub status: Status,
    pub attempt: Option<i32>,
    pub message: String,
    pub detail: Option<Value>,
}

impl NewTraceEvent {
    pub fn new(component: Component, status: Status, message: impl Into<String>) -> Self {
        Self {
            component,
            status,
            attempt: None,
            message: message.into(),
            detail: None,
        }
    }

    pub fn attempt(mut self, attempt: i32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The event as written: its trace, sequence number, time and the trace's state.
    pub fn numbered(
        self,
        trace_id: TraceId,
        seq: i64,
        at: Millis,
        state: TraceState,
    ) -> TraceEvent {
        TraceEvent {
            trace_id,
            seq,
            component: self.component,
            status: self.status,
            at,
            attempt: self.attempt,
            message: Some(self.message),
            detail: self.detail,
            state,
        }
    }
}

/// One committed step of a trace. `seq` is strictly increasing per trace (G5).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    pub trace_id: TraceId,
    pub seq: i64,
    pub component: Component,
    pub status: Status,
    pub at: Millis,
    pub attempt: Option<i32>,
    pub message: Option<String>,
    pub detail: Option<Value>,
    /// The trace's overall state once this event is committed.
    pub state: TraceState,
}

impl TraceEvent {
    /// The event as the GraphQL type `TraceEvent` carries it, every field selected. This is
    /// also what the executor publishes, the way a worker would call `publishTraceEvent`.
    pub fn to_graphql(&self) -> Value {
        json!({
            "traceId": self.trace_id.to_string(),
            "seq": self.seq,
            "component": self.component.as_str(),
            "status": self.status.as_str(),
            "timestamp": aws_datetime(self.at),
            "attempt": self.attempt,
            "message": self.message,
            "detail": self.detail.as_ref().map(|d| d.to_string()),
            "state": self.state.as_str(),
        })
    }
}

/// What `trace(traceId)` answers: the command row and its history.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    pub trace_id: TraceId,
    pub command_type: String,
    pub owner: String,
    pub state: TraceState,
    pub attempts: i32,
    pub series: i32,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// A command that exhausted its retries (G6).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub trace_id: TraceId,
    pub command_type: String,
    pub owner: String,
    pub payload: Value,
    pub attempts: i32,
    pub series: i32,
    /// One entry per failed attempt: `{attempt, at, error}`.
    pub history: Value,
    pub last_error: String,
    pub dead_lettered_at: Millis,
    pub replayed_at: Option<Millis>,
}
