//! The sweeper: finds attempts whose lease expired (their worker crashed or stalled), counts
//! them as attempts and hands them to the ErrorHandler (retry or dead letter). It also forgets
//! idempotency keys past their retention.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Pipeline, Stats};
use crate::domain::now_millis;

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
            let failure = self.error_handler.lease_expired(&claim);
            let next = failure.next.clone();
            match self.store.record_failure(&claim, failure).await {
                Ok(true) => {
                    taken += 1;
                    Stats::bump(&self.stats.leases_expired);
                    self.stats.count_failure(&next);
                    tracing::warn!(trace.id = %claim.trace_id, attempt = claim.attempt, "lease expired; attempt counted");
                }
                Ok(false) => {} // the attempt finished meanwhile
                Err(e) => {
                    tracing::error!(trace.id = %claim.trace_id, error = %e, "could not take back a lease")
                }
            }
        }
        if taken > 0 {
            self.wake.notify_one();
            self.emitter_wake.notify_one();
        }
        taken
    }
}
