//! TransactionListener: takes runnable commands off the queue (the `commands` table) and hands
//! each to the TransactionManager. Routing and capacity only, never business logic.
//!
//! It wakes when the CommandApi accepts something (in-process, or from another process over
//! PostgreSQL `NOTIFY`), when an attempt finishes (a slot is free) and when the next retry is
//! due. Polling is a safety net: rare while wake-ups arrive, every `poll_ms` while they may
//! not (the `LISTEN` connection is down).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Pipeline;
use crate::domain::now_millis;

impl Pipeline {
    pub async fn listen(self, cancel: CancellationToken, attempts: TaskTracker) {
        // One permit per attempt in flight: bounds memory and database pressure (G8).
        let workers = self.config.workers.max(1);
        let slots = Arc::new(Semaphore::new(workers));
        // While a backlog waits (the last claim got all it asked for), claim only once a
        // quarter of the slots are free: one claim, and one group commit, for many attempts,
        // while the attempts of the claims before still fill the rest. (At a half, a worker on
        // PostgreSQL spent two thirds of a drain in its claim statement, the claims one after
        // another, and the machine idled more.)
        let mut backlog = false;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let poll = self.idle_wait();
            let free = slots.available_permits();
            if free == 0 || (backlog && free < workers.div_ceil(4)) {
                // Slots are busy: wait for an attempt to finish.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            let claimed = match self.store.claim(free, self.config.lease_ms).await {
                Ok(claims) => {
                    let claimed = claims.len();
                    for claim in claims {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let pipeline = self.clone();
                        let cancel = cancel.clone();
                        attempts.spawn(async move {
                            pipeline.run_attempt(claim, cancel).await;
                            drop(permit);
                            pipeline.wake.notify_one();
                        });
                    }
                    claimed
                }
                Err(e) => {
                    // The database is unreachable: try again at the short interval.
                    tracing::error!(error = %e, "claim failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(self.short_wait()) => {}
                    }
                    continue;
                }
            };
            backlog = claimed > 0 && claimed == free;
            if backlog {
                continue; // there may be more
            }
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => Duration::from_millis(
                    (due - now_millis()).clamp(0, poll.as_millis() as i64) as u64,
                ),
                Ok(None) => poll,
                Err(_) => self.short_wait(),
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
