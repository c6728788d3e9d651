//! ErrorHandler: decides what a failed attempt leads to.
//!
//! Permanent failures (business errors, malformed payloads) end the trace in `FAILED` at once.
//! Technical failures, crashes and expired leases are retried with backoff until the policy
//! is exhausted; then the command becomes a dead letter. The decision and its trace events
//! are written by the store in one transaction, fenced by the attempt's lease.

use serde_json::json;

use super::retry::RetryPolicy;
use crate::domain::{Claim, CommandError, Component, NewTraceEvent, Status, now_millis};
use crate::ports::{Failure, Next};

#[derive(Debug, Clone)]
pub struct ErrorHandler {
    policy: RetryPolicy,
}

impl ErrorHandler {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// After the command (or its builder) returned an error.
    pub fn command_failed(
        &self,
        claim: &Claim,
        component: Component,
        error: &CommandError,
    ) -> Failure {
        let (kind, code) = match error {
            CommandError::Business { code, .. } => ("business", Some(code.as_str())),
            CommandError::Malformed(_) => ("malformed", None),
            CommandError::Technical(_) => ("technical", None),
        };
        let report = NewTraceEvent::new(component, Status::Error, error.to_string())
            .attempt(claim.attempt)
            .detail(json!({ "kind": kind, "code": code }));
        self.decide(claim, error.is_permanent(), error.to_string(), report)
    }

    /// After the sweeper found the attempt's lease expired: its worker crashed or stalled.
    /// That counts as an attempt.
    pub fn lease_expired(&self, claim: &Claim) -> Failure {
        let error = format!(
            "attempt {} lost its lease (the worker crashed or stalled)",
            claim.attempt
        );
        let report =
            NewTraceEvent::new(Component::TransactionManager, Status::Error, error.clone())
                .attempt(claim.attempt);
        Failure {
            lease_expired: true,
            ..self.decide(claim, false, error, report)
        }
    }

    fn decide(
        &self,
        claim: &Claim,
        permanent: bool,
        error: String,
        report: NewTraceEvent,
    ) -> Failure {
        let (next, verdict) = if permanent {
            (
                Next::Fail,
                NewTraceEvent::new(
                    Component::ErrorHandler,
                    Status::Error,
                    "permanent failure: not retried",
                ),
            )
        } else if self.policy.exhausted(claim.attempt) {
            (
                Next::DeadLetter,
                NewTraceEvent::new(
                    Component::ErrorHandler,
                    Status::Error,
                    format!(
                        "retries exhausted after {} attempts: dead-lettered",
                        claim.attempt
                    ),
                ),
            )
        } else {
            let wait = self.policy.backoff(claim.attempt);
            let retry = claim.attempt; // retries so far, this one included
            (
                Next::Retry {
                    at: now_millis() + wait.as_millis() as i64,
                },
                NewTraceEvent::new(
                    Component::ErrorHandler,
                    Status::Accepted,
                    format!(
                        "retry {retry} of {} in {} ms",
                        self.policy.max_attempts - 1,
                        wait.as_millis()
                    ),
                )
                .detail(json!({ "retryInMs": wait.as_millis() as u64 })),
            )
        };
        Failure {
            next,
            lease_expired: false,
            error,
            events: vec![report, verdict.attempt(claim.attempt)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TraceId;

    fn claim(attempt: i32) -> Claim {
        Claim {
            trace_id: TraceId::new(),
            command_type: "createOrder".into(),
            payload: json!({}),
            attempt,
            series: 1,
            lease_token: 1,
            lease_expires_at: 0,
        }
    }

    #[test]
    fn business_errors_are_not_retried() {
        let h = ErrorHandler::new(RetryPolicy::default());
        let f = h.command_failed(
            &claim(1),
            Component::Command,
            &CommandError::business("X", "no"),
        );
        assert!(matches!(f.next, Next::Fail));
    }

    #[test]
    fn technical_errors_retry_three_times_then_dead_letter() {
        let h = ErrorHandler::new(RetryPolicy::default());
        let err = CommandError::technical("db down");
        for attempt in 1..=3 {
            let f = h.command_failed(&claim(attempt), Component::Command, &err);
            assert!(matches!(f.next, Next::Retry { .. }), "attempt {attempt}");
        }
        let f = h.command_failed(&claim(4), Component::Command, &err);
        assert!(matches!(f.next, Next::DeadLetter));
        assert!(matches!(h.lease_expired(&claim(4)).next, Next::DeadLetter));
        assert!(matches!(
            h.lease_expired(&claim(2)).next,
            Next::Retry { .. }
        ));
    }
}
