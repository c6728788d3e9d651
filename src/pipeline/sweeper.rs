//! The sweeper: finds attempts whose lease expired (their worker crashed or stalled), counts
//! them as attempts and hands them to the ErrorHandler (retry or dead letter). Once an hour it
//! forgets idempotency keys and deletes sent outbox rows past their retention. In SQS mode it
//! re-sends the message of a command left due too long (the queue lost it, or moved it to its
//! own dead-letter queue).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Pipeline, Stats};
use crate::domain::{Claim, now_millis};

impl Pipeline {
    pub async fn sweep(self, cancel: CancellationToken) {
        let every = Duration::from_millis(self.config.sweep_ms.max(1) as u64);
        let mut last_key_expiry = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            self.sweep_once().await;
            self.redispatch().await;
            let now = now_millis();
            if now - last_key_expiry > 3_600_000 {
                last_key_expiry = now;
                match self
                    .store
                    .expire_idempotency_keys(now - self.config.idempotency_retention_ms)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "idempotency keys expired"),
                    Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
                }
                if let Some(retention) = self.config.outbox_retention_ms {
                    match self.store.forget_sent_outbox(now - retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "sent outbox rows deleted"),
                        Err(e) => tracing::warn!(error = %e, "could not delete sent outbox rows"),
                    }
                }
            }
        }
    }

    /// One pass over expired leases; returns how many were taken back.
    pub async fn sweep_once(&self) -> usize {
        let expired = match self.store.expired_leases(256).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "sweep failed");
                return 0;
            }
        };
        let mut taken = 0;
        for claim in expired {
            if self.take_back(&claim).await {
                taken += 1;
            }
        }
        if taken > 0 {
            self.wake.notify_one();
            self.emitter_wake.notify_one();
        }
        taken
    }

    /// Counts an attempt whose lease expired and asks the ErrorHandler what comes next.
    /// False when the attempt finished (or was taken back) meanwhile.
    pub(super) async fn take_back(&self, claim: &Claim) -> bool {
        let failure = self.error_handler.lease_expired(claim);
        let next = failure.next.clone();
        match self.store.record_failure(claim, failure).await {
            Ok(true) => {
                Stats::bump(&self.stats.leases_expired);
                self.stats.count_failure(&next);
                tracing::warn!(trace.id = %claim.trace_id, attempt = claim.attempt, "lease expired; attempt counted");
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(trace.id = %claim.trace_id, error = %e, "could not take back a lease");
                false
            }
        }
    }

    /// SQS mode: commands left due for too long get a new message.
    async fn redispatch(&self) {
        if self.queue.is_none() {
            return;
        }
        let after = self.config.redispatch_ms;
        match self
            .store
            .redispatch_stale(now_millis() - after, 1000)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    commands = n,
                    "commands waited too long for their message; sent again"
                );
                self.wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "could not look for commands without a message"),
        }
    }
}
