//! TransactionListener: takes runnable commands off the queue (the `commands` table) and hands
//! each to the TransactionManager. Routing and capacity only, never business logic.
//!
//! It wakes when the CommandApi accepts something (in-process, or from another process over
//! PostgreSQL `NOTIFY`), when an attempt finishes (a slot is free) and when the next retry is
//! due. Polling is a safety net: rare while wake-ups arrive, every `poll_ms` while they may
//! not (the `LISTEN` connection is down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Pipeline;
use crate::domain::now_millis;
use crate::ports::StoreError;

/// Claim statements of one worker at once while a backlog waits.
const CLAIMS_IN_FLIGHT: usize = 2;

impl Pipeline {
    pub async fn listen(self, cancel: CancellationToken, attempts: TaskTracker) {
        // One permit per attempt in flight: bounds memory and database pressure (G8).
        let workers = self.config.workers.max(1);
        let slots = Arc::new(Semaphore::new(workers));
        // While a backlog waits (the last claim got all it asked for), claim only once a
        // quarter of the slots are free: one claim, and one group commit, for many attempts,
        // while the attempts of the claims before still fill the rest. (At a half, a worker on
        // PostgreSQL spent two thirds of a drain in its claim statement, the claims one after
        // another, and the machine idled more.) Meanwhile a claim runs in the background, so
        // the next one may start before it ends: a claim statement takes about as long as the
        // attempts it feeds, and one at a time they kept slots empty.
        let backlog = Arc::new(AtomicBool::new(false));
        let claiming = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let poll = self.idle_wait();
            let free = slots.available_permits();
            let waiting = backlog.load(Ordering::Acquire);
            if free == 0
                || (waiting && free < workers.div_ceil(4))
                || claiming.available_permits() == 0
            {
                // Slots are busy (or claims are): wait for an attempt or a claim to finish.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            // The slots are taken before the claim, so a claim beside it counts them busy.
            let (Ok(taken), Ok(turn)) = (
                slots.clone().try_acquire_many_owned(free as u32),
                claiming.clone().try_acquire_owned(),
            ) else {
                continue;
            };
            if waiting {
                let pipeline = self.clone();
                let (tracker, cancel, backlog) =
                    (attempts.clone(), cancel.clone(), backlog.clone());
                // Tracked like the attempts, so a shutdown waits for it and for what it starts.
                attempts.spawn(async move {
                    let claimed = pipeline.claim_into(free, taken, &tracker, &cancel).await;
                    backlog.store(matches!(claimed, Ok(n) if n == free), Ordering::Release);
                    drop(turn);
                    pipeline.wake.notify_one();
                });
                continue;
            }
            let claimed = match self.claim_into(free, taken, &attempts, &cancel).await {
                Ok(claimed) => claimed,
                Err(()) => {
                    // The database is unreachable: try again at the short interval.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(self.short_wait()) => {}
                    }
                    continue;
                }
            };
            drop(turn);
            let more = claimed > 0 && claimed == free;
            backlog.store(more, Ordering::Release);
            if more {
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

    /// Claims up to `limit` commands and starts an attempt for each, on one of the `taken`
    /// slots (the rest are given back); returns how many it claimed.
    async fn claim_into(
        &self,
        limit: usize,
        mut taken: OwnedSemaphorePermit,
        attempts: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<usize, ()> {
        let claims = self
            .store
            .claim(limit, self.config.lease_ms)
            .await
            .map_err(|e: StoreError| tracing::error!(error = %e, "claim failed"))?;
        let claimed = claims.len();
        for claim in claims {
            let Some(permit) = taken.split(1) else {
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
        Ok(claimed)
    }
}
