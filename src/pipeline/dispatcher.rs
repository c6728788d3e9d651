//! Dispatcher (SQS mode): relays the dispatch outbox to the command queue.
//!
//! The CommandApi writes a dispatch row in the accept transaction, so SQS being down at accept
//! time loses nothing (G1): rows wait in the table, and the dispatcher sends them with
//! `SendMessageBatch` once SQS answers, deleting each row SQS took. Entries SQS refused stay
//! and go out again after a back-off. A message sent twice is harmless: the command row's
//! lease and state decide what a message means.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Pipeline;
use crate::domain::{TraceId, now_millis};
use crate::ports::{CommandQueue, Dispatch};

/// Rows taken per round (sent in batches of SQS's 10).
const ROUND: usize = 100;

impl Pipeline {
    /// Starts the dispatcher, in every process of SQS mode: API replicas send what they
    /// accepted, workers are the safety net.
    pub fn spawn_dispatcher(&self, cancel: &CancellationToken, tasks: &TaskTracker) {
        if let Some(queue) = &self.queue {
            tasks.spawn(self.clone().dispatch(queue.clone(), cancel.clone()));
        }
    }

    async fn dispatch(self, queue: Arc<dyn CommandQueue>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.dispatch_once(queue.as_ref()).await {
                Ok(Round::Sent(_)) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(Round::Idle(held_until)) => {
                    // Rows another process holds come free at `held_until`.
                    let wait = held_until.map_or(self.idle_wait(), |at| {
                        Duration::from_millis((at - now_millis()).max(1) as u64)
                            .min(self.idle_wait())
                    });
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "dispatching commands to the queue failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Sends one round of dispatch rows. An error when the queue refused some or all of
    /// them, so the caller backs off.
    pub async fn dispatch_once(&self, queue: &dyn CommandQueue) -> anyhow::Result<Round> {
        let (rows, held_until) = self.store.unsent_dispatch(ROUND).await?;
        if rows.is_empty() {
            return Ok(Round::Idle(held_until));
        }
        let traces: Vec<TraceId> = rows.iter().map(|d| d.trace_id).collect();
        let taken: HashSet<TraceId> = queue.send(&traces).await?.into_iter().collect();
        let sent: Vec<Dispatch> = rows
            .into_iter()
            .filter(|d| taken.contains(&d.trace_id))
            .collect();
        self.store.mark_dispatched(&sent).await?;
        anyhow::ensure!(
            sent.len() == traces.len(),
            "the queue took {} of {} messages",
            sent.len(),
            traces.len()
        );
        Ok(Round::Sent(sent.len()))
    }
}

/// What one round of the dispatcher did.
#[derive(Debug, PartialEq)]
pub enum Round {
    /// The queue took this many messages.
    Sent(usize),
    /// Nothing to send; rows held by another process come free at this time, if any.
    Idle(Option<i64>),
}
