//! TransactionListener on a message queue (SQS mode).
//!
//! A message names a trace; the command row decides what it means, never the message alone
//! (inbox/dedup):
//! * runnable → claimed like a table claim (attempt counted, lease taken) and run; the
//!   message stays hidden while the attempt runs (its visibility follows the lease's
//!   heartbeat) and is settled by what the row says afterwards;
//! * terminal → the message is deleted without running anything;
//! * waiting for a retry → the message is hidden until the retry is due, so a retry is the
//!   next receive of the same message (attempts and `ApproximateReceiveCount` move together);
//! * running elsewhere (a duplicate delivery) → hidden until that lease would expire;
//! * lease expired (its worker crashed) → the lost attempt is counted, as the sweeper does;
//! * no such trace → a foreign producer's command: checked like a mutation, stored with its
//!   `ACCEPTED` event, then run. A message that is not a valid command becomes a dead letter
//!   (a permanent failure) and is deleted; it does not loop.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Pipeline;
use super::command_api::check;
use crate::domain::{Component, NewCommand, NewTraceEvent, Status, TraceId, now_millis};
use crate::ports::{CommandQueue, QueueMessage, Rejected, TraceClaim};

/// A message is looked at this many times in one receive before it is left to come back.
const STEPS: usize = 6;

impl Pipeline {
    pub async fn listen_queue(
        self,
        queue: Arc<dyn CommandQueue>,
        cancel: CancellationToken,
        attempts: TaskTracker,
    ) {
        // One permit per message in hand: bounds the messages in flight (G8).
        let slots = Arc::new(Semaphore::new(self.config.workers.max(1)));
        let visibility = self.lease_secs();
        let mut backoff = Duration::from_millis(100);
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let want = 1 + slots.available_permits();
            let received = tokio::select! {
                _ = cancel.cancelled() => break,
                received = queue.receive(want, visibility) => received,
            };
            let messages = match received {
                Ok(messages) => {
                    backoff = Duration::from_millis(100);
                    messages
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receiving from the command queue failed");
                    drop(first);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let mut first = Some(first);
            for message in messages {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let (pipeline, queue, cancel) = (self.clone(), queue.clone(), cancel.clone());
                attempts.spawn(async move {
                    pipeline.on_message(queue.as_ref(), &message, &cancel).await;
                    drop(permit);
                });
            }
        }
    }

    /// The visibility timeout that shadows the lease, in whole seconds.
    fn lease_secs(&self) -> i32 {
        ((self.config.lease_ms.max(1) + 999) / 1000) as i32
    }

    async fn on_message(
        &self,
        queue: &dyn CommandQueue,
        message: &QueueMessage,
        cancel: &CancellationToken,
    ) {
        let envelope = match Envelope::parse(&message.body) {
            Ok(envelope) => envelope,
            Err(error) => return self.reject(queue, message, None, None, error).await,
        };
        let trace_id = envelope.trace_id;
        let picked = format!(
            "SQS message {} (receive {})",
            message.id, message.receive_count
        );
        for _ in 0..STEPS {
            if cancel.is_cancelled() {
                // Shutting down: another worker may take it at once.
                return settle(queue.set_visibility(message, 0).await, message);
            }
            let claim = self
                .store
                .claim_trace(trace_id, self.config.lease_ms, &picked)
                .await;
            match claim {
                Err(e) => {
                    // It comes back after its visibility timeout.
                    tracing::error!(trace.id = %trace_id, error = %e, "could not look up the command of a message");
                    return;
                }
                Ok(TraceClaim::Claimed(claim)) => {
                    tokio::select! {
                        _ = self.run_attempt(claim, cancel.clone()) => {}
                        _ = self.keep_hidden(queue, message) => {}
                    }
                }
                Ok(TraceClaim::Terminal) => return settle(queue.delete(message).await, message),
                Ok(TraceClaim::NotDue(at)) => {
                    return settle(queue.set_visibility(message, secs_until(at)).await, message);
                }
                Ok(TraceClaim::Running(until)) => {
                    let secs = secs_until(until) + 1;
                    return settle(queue.set_visibility(message, secs).await, message);
                }
                Ok(TraceClaim::LeaseExpired(claim)) => {
                    self.take_back(&claim).await;
                }
                Ok(TraceClaim::Missing) => {
                    let foreign = match envelope.foreign.clone() {
                        Ok(Some(foreign)) => foreign,
                        Ok(None) => {
                            let error =
                                "the message names no known trace and carries no command".into();
                            return self
                                .reject(queue, message, Some(trace_id), None, error)
                                .await;
                        }
                        Err(error) => {
                            let command = Some(("(invalid message)".to_owned(), None));
                            return self
                                .reject(queue, message, Some(trace_id), command, error)
                                .await;
                        }
                    };
                    let Foreign {
                        command: command_type,
                        input,
                        owner,
                    } = foreign;
                    if let Err(e) = check(
                        &self.builder,
                        &command_type,
                        &input,
                        self.config.max_payload_bytes,
                        self.config.fault_injection,
                    ) {
                        let error = format!("not a valid command: {e}");
                        return self
                            .reject(
                                queue,
                                message,
                                Some(trace_id),
                                Some((command_type, owner)),
                                error,
                            )
                            .await;
                    }
                    let event = NewTraceEvent::new(
                        Component::TransactionListener,
                        Status::Accepted,
                        format!("{command_type} accepted from SQS message {}", message.id),
                    );
                    let command = NewCommand {
                        trace_id,
                        command_type,
                        payload: input,
                        owner: owner.unwrap_or_else(|| self.config.default_owner.clone()),
                        idempotency_key: None,
                    };
                    if let Err(e) = self.store.adopt(command, event).await {
                        tracing::error!(trace.id = %trace_id, error = %e, "could not store a foreign command");
                        return;
                    }
                }
            }
        }
    }

    /// Renews the message's visibility with the lease while the attempt runs; never ends.
    async fn keep_hidden(&self, queue: &dyn CommandQueue, message: &QueueMessage) {
        let every = Duration::from_millis(self.config.heartbeat_ms.max(1) as u64);
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = queue.set_visibility(message, self.lease_secs()).await {
                tracing::warn!(message.id = %message.id, error = %e, "could not extend a message's visibility");
            }
        }
    }

    /// Keeps a message that is not a valid command as a dead letter, then deletes it. With a
    /// trace ID and a command type, the trace exists afterwards (`DEAD_LETTERED`), so a client
    /// that got the ID from the producer sees why.
    async fn reject(
        &self,
        queue: &dyn CommandQueue,
        message: &QueueMessage,
        trace_id: Option<TraceId>,
        command: Option<(String, Option<String>)>,
        error: String,
    ) {
        tracing::warn!(message.id = %message.id, error = %error, "a queue message is not a valid command; dead-lettered");
        // Without a trace ID of its own, the message ID names it (a redelivery dedups).
        let trace_id = trace_id
            .or_else(|| TraceId::parse(&message.id))
            .unwrap_or_default();
        let (command_type, owner) = match &command {
            Some((command_type, owner)) => (command_type.clone(), owner.clone()),
            None => ("(unreadable)".to_owned(), None),
        };
        let trace_events = command.is_some().then(|| {
            vec![
                NewTraceEvent::new(
                    Component::TransactionListener,
                    Status::Accepted,
                    format!("received from SQS message {}", message.id),
                ),
                NewTraceEvent::new(
                    Component::ErrorHandler,
                    Status::Error,
                    format!("{error}; dead-lettered without an attempt"),
                ),
            ]
        });
        let rejected = Rejected {
            trace_id,
            command_type,
            owner: owner.unwrap_or_else(|| self.config.default_owner.clone()),
            body: message.body.clone(),
            error,
            trace_events,
        };
        match self.store.reject(rejected).await {
            Ok(()) => {
                self.emitter_wake.notify_one();
                settle(queue.delete(message).await, message);
            }
            Err(e) => {
                tracing::error!(message.id = %message.id, error = %e, "could not keep a rejected message")
            }
        }
    }
}

/// Whole seconds from now until `at` (at least 0).
fn secs_until(at: i64) -> i32 {
    ((at - now_millis()).max(0) + 999).min(43_200_000) as i32 / 1000
}

fn settle(result: Result<(), crate::ports::QueueError>, message: &QueueMessage) {
    if let Err(e) = result {
        // The message comes back after its visibility timeout and is looked at again.
        tracing::warn!(message.id = %message.id, error = %e, "could not settle a message");
    }
}

/// A command queue message: a trace ID, and from a foreign producer the command itself. Only
/// the trace ID must be readable: when its trace exists, the row decides and the rest of the
/// message does not matter.
#[derive(Debug, Clone)]
struct Envelope {
    trace_id: TraceId,
    foreign: Result<Option<Foreign>, String>,
}

#[derive(Debug, Clone)]
struct Foreign {
    command: String,
    input: Value,
    owner: Option<String>,
}

impl Envelope {
    fn parse(body: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| format!("the message body is not JSON ({e})"))?;
        let Value::Object(fields) = value else {
            return Err("the message body is not a JSON object".into());
        };
        let trace_id = fields
            .get("traceId")
            .and_then(Value::as_str)
            .and_then(TraceId::parse)
            .ok_or("the message has no valid traceId (a UUID)")?;
        Ok(Self {
            trace_id,
            foreign: Foreign::parse(&fields),
        })
    }
}

impl Foreign {
    fn parse(fields: &serde_json::Map<String, Value>) -> Result<Option<Self>, String> {
        let owner = match fields.get("owner") {
            None | Some(Value::Null) => None,
            Some(Value::String(owner)) if !owner.is_empty() && owner.len() <= 255 => {
                Some(owner.clone())
            }
            Some(_) => return Err("owner must be a string of 1 to 255 bytes".into()),
        };
        let (command, input) = match (fields.get("command"), fields.get("input")) {
            (None | Some(Value::Null), None | Some(Value::Null)) => return Ok(None),
            (Some(Value::String(command)), Some(input @ Value::Object(_))) => {
                (command.clone(), input.clone())
            }
            (Some(Value::String(command)), None | Some(Value::Null)) => {
                (command.clone(), Value::Object(Default::default()))
            }
            (Some(Value::String(_)), Some(_)) => return Err("input must be a JSON object".into()),
            _ => return Err("command must be the name of a command mutation".into()),
        };
        Ok(Some(Self {
            command,
            input,
            owner,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse_or_say_what_is_wrong() {
        let t = "0190f5d2-9a43-7c1e-8b2a-3f1e2d4c5b6a";
        let own = Envelope::parse(&format!(r#"{{"traceId":"{t}"}}"#)).unwrap();
        assert_eq!(own.trace_id.to_string(), t);
        assert!(matches!(own.foreign, Ok(None)));
        let foreign = Envelope::parse(&format!(
            r#"{{"traceId":"{t}","command":"createOrder","input":{{"customerId":"c"}},"owner":"oidc:u1"}}"#
        ))
        .unwrap()
        .foreign
        .unwrap()
        .unwrap();
        assert_eq!(foreign.command, "createOrder");
        assert_eq!(foreign.owner.as_deref(), Some("oidc:u1"));

        for body in [
            "not json",
            "[1]",
            r#"{"traceId":"nope"}"#,
            r#"{"command":"createOrder"}"#,
        ] {
            assert!(Envelope::parse(body).is_err(), "{body}");
        }
        // A readable trace ID with a bad rest: the trace's row decides, if it exists.
        for rest in [
            r#""command":7"#,
            r#""command":"x","input":[]"#,
            r#""owner":"""#,
        ] {
            let body = format!(r#"{{"traceId":"{t}",{rest}}}"#);
            let envelope = Envelope::parse(&body).unwrap();
            assert!(envelope.foreign.is_err(), "{body}");
        }
    }

    #[test]
    fn retry_waits_round_up_to_whole_seconds() {
        let now = now_millis();
        assert_eq!(secs_until(now - 5_000), 0);
        let s = secs_until(now + 1_500);
        assert!((1..=2).contains(&s), "{s}");
    }
}
