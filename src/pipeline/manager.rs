//! TransactionManager: runs one claimed attempt.
//!
//! It keeps the lease alive with a heartbeat, applies injected faults, asks the
//! CommandBuilder for the handler, and has the store run the command in one transaction that
//! also holds the lease check, the dedup mark, the collected outbox rows and the trace events.
//! A failure goes to the ErrorHandler, whose decision is written fenced by the same lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::collector::EventCollector;
use super::faults::Faults;
use super::{Pipeline, Stats};
use crate::domain::{Claim, CommandError, Component, NewTraceEvent, Status};
use crate::ports::{AttemptDone, AttemptOutcome, AttemptWork, CommandContext, Invokable, Tx};

impl Pipeline {
    /// Runs one attempt to its end: committed, failed (and recorded) or fenced off.
    pub async fn run_attempt(&self, claim: Claim, cancel: CancellationToken) {
        // Faults apply to the first attempt series: a replay runs clean, as after a fix.
        let faults = if self.config.fault_injection && claim.series == 1 {
            Faults::from_payload(&claim.payload).unwrap_or_default()
        } else {
            Faults::default()
        };
        if faults.crashes(claim.attempt) {
            tracing::error!(trace.id = %claim.trace_id, attempt = claim.attempt, "fault injection: aborting the process");
            std::process::abort();
        }

        // Shared with the heartbeat and the attempt's work: its payload is not copied.
        let claim = Arc::new(claim);
        let pause = faults.pause(claim.attempt);
        let frozen = matches!(pause, Some((_, true)));
        let heartbeat = CancellationToken::new();
        if !frozen {
            tokio::spawn(self.clone().heartbeat(claim.clone(), heartbeat.clone()));
        }
        let _stop_heartbeat = heartbeat.clone().drop_guard();

        if let Some((pause, frozen)) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // A frozen process does not notice the shutdown either.
                _ = cancel.cancelled(), if !frozen => {
                    self.release(&claim).await;
                    return;
                }
            }
        }

        let outcome = match self.builder.build(&claim.command_type) {
            Err(e) => Ok(AttemptOutcome::Failed(e)),
            Ok(handler) => {
                let work = Attempt {
                    claim: claim.clone(),
                    handler,
                    fail: faults.fails(claim.attempt),
                };
                self.store.commit_attempt(&claim, Arc::new(work)).await
            }
        };
        heartbeat.cancel();
        match outcome {
            Ok(AttemptOutcome::Committed) => {
                Stats::bump(&self.stats.committed);
                self.emitter_wake.notify_one();
            }
            Ok(AttemptOutcome::Fenced) => {
                Stats::bump(&self.stats.fenced);
                tracing::warn!(trace.id = %claim.trace_id, attempt = claim.attempt, "late commit fenced off: the lease was taken over");
            }
            Ok(AttemptOutcome::Failed(error)) => {
                let component = if self.builder.get(&claim.command_type).is_some() {
                    Component::Command
                } else {
                    Component::CommandBuilder
                };
                self.record_failure(&claim, component, &error).await;
            }
            Err(store_error) => {
                tracing::error!(trace.id = %claim.trace_id, error = %store_error, "attempt transaction failed");
                let error = CommandError::technical("the attempt's transaction failed");
                self.record_failure(&claim, Component::TransactionManager, &error)
                    .await;
            }
        }
    }

    async fn record_failure(&self, claim: &Claim, component: Component, error: &CommandError) {
        let failure = self.error_handler.command_failed(claim, component, error);
        let next = failure.next.clone();
        match self.store.record_failure(claim, failure).await {
            Ok(true) => self.stats.count_failure(&next),
            Ok(false) => Stats::bump(&self.stats.fenced),
            // The lease will expire and the sweeper will count this attempt.
            Err(e) => {
                tracing::error!(trace.id = %claim.trace_id, error = %e, "could not record a failed attempt")
            }
        }
        if matches!(next, crate::ports::Next::DeadLetter) {
            self.emitter_wake.notify_one();
        }
    }

    /// Gives the lease back at shutdown; the attempt does not count.
    async fn release(&self, claim: &Claim) {
        let event = NewTraceEvent::new(
            Component::TransactionManager,
            Status::Accepted,
            format!(
                "attempt {} released at shutdown; it will run again",
                claim.attempt
            ),
        )
        .attempt(claim.attempt);
        if let Err(e) = self.store.release(claim, event).await {
            tracing::error!(trace.id = %claim.trace_id, error = %e, "could not release a lease");
        }
    }

    /// Extends the lease every heartbeat interval until stopped or the lease is lost.
    async fn heartbeat(self, claim: Arc<Claim>, stop: CancellationToken) {
        let every = Duration::from_millis(self.config.heartbeat_ms.max(1) as u64);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.store.heartbeat(&claim, self.config.lease_ms).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(trace.id = %claim.trace_id, error = %e, "heartbeat failed")
                }
            }
        }
    }
}

/// Results up to this size are repeated in the `Command SUCCESS` event; larger ones stay on
/// the trace only, so the event fits a subscription message (240 KB).
const MAX_RESULT_IN_EVENT: usize = 16 * 1024;

fn result_detail(result: &serde_json::Value) -> serde_json::Value {
    let size = result.to_string().len();
    if size <= MAX_RESULT_IN_EVENT {
        result.clone()
    } else {
        serde_json::json!({ "truncated": true, "bytes": size, "see": "trace.result" })
    }
}

/// The transactional part of an attempt: the command, then the EventCollector.
struct Attempt {
    claim: Arc<Claim>,
    handler: Arc<dyn Invokable>,
    /// Injected: fail after the command's writes, so they must roll back.
    fail: bool,
}

#[async_trait]
impl AttemptWork for Attempt {
    async fn run(&self, tx: &mut dyn Tx) -> Result<AttemptDone, CommandError> {
        let claim = &self.claim;
        let mut announced = Vec::new();
        let result = {
            let mut ctx = CommandContext {
                trace_id: claim.trace_id,
                attempt: claim.attempt,
                input: &claim.payload,
                tx,
                collected: &mut announced,
            };
            self.handler.invoke(&mut ctx).await?
        };
        if self.fail {
            return Err(CommandError::technical(format!(
                "injected fault: attempt {} fails after its writes",
                claim.attempt
            )));
        }
        let (outbox, collected) = EventCollector::new(claim.trace_id).collect(announced);
        let attempt = claim.attempt;
        let events = vec![
            NewTraceEvent::new(
                Component::CommandBuilder,
                Status::Success,
                format!("{} built from its payload", claim.command_type),
            )
            .attempt(attempt),
            NewTraceEvent::new(
                Component::Command,
                Status::Success,
                format!("{} done", claim.command_type),
            )
            .attempt(attempt)
            .detail(result_detail(&result)),
            collected.attempt(attempt),
            NewTraceEvent::new(
                Component::TransactionManager,
                Status::Success,
                format!("attempt {attempt} committed"),
            )
            .attempt(attempt),
        ];
        Ok(AttemptDone {
            result,
            outbox,
            events,
        })
    }
}
