//! The embedded publisher: an in-process event bus that the EventEmitter relays outbox rows
//! to. Anyone can observe it (`EventBus::subscribe`); each event is also logged at debug level
//! (`RUST_LOG=tether::bus=debug`): at info, a busy executor's thousands of events a second
//! would drown the log, and the trace records every publication (the EventEmitter's event).

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::OutboxEvent;
use crate::ports::{PublishError, Publisher};

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<OutboxEvent>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OutboxEvent> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl Publisher for EventBus {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        for event in events {
            tracing::debug!(
                event.id = %event.event_id,
                event.r#type = %event.event_type,
                trace.id = %event.trace_id,
                "event published"
            );
            // No receiver is fine: the bus is fire-and-forget, the outbox is the durable part.
            if self.tx.receiver_count() > 0 {
                let _ = self.tx.send(event.clone());
            }
        }
        Ok(())
    }
}
