//! EventEmitter: relays committed outbox rows to the publisher and marks them sent.
//!
//! At least once: a row is marked sent only after the publisher took it, so a crash in
//! between publishes it again, with the same event ID (G4). Publisher failures back off
//! exponentially; rows wait in the table meanwhile, nothing is lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Pipeline, Stats};

const BATCH: usize = 256;

impl Pipeline {
    pub async fn emit(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.emit_once().await {
                Ok(n) if n > 0 => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.emitter_wake.notified() => {}
                        _ = tokio::time::sleep(self.idle_wait()) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "publishing the outbox failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Gives up this process's hold on unsent rows (on shutdown, after the emitter stopped).
    pub async fn release_outbox(&self) -> anyhow::Result<()> {
        let released = self.store.release_outbox().await?;
        if released > 0 {
            tracing::info!(
                rows = released,
                "left unsent outbox rows to the other processes"
            );
        }
        Ok(())
    }

    /// Publishes one batch of unsent rows; returns how many were sent.
    pub async fn emit_once(&self) -> anyhow::Result<usize> {
        let batch = self.store.unsent_outbox(BATCH).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        self.publisher.publish(&batch).await?;
        self.store.mark_sent(&batch).await?;
        Stats::add(&self.stats.published, batch.len() as u64);
        Ok(batch.len())
    }
}
