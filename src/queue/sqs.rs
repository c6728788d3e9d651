//! Amazon SQS on aws-sdk-sqs: the command queue (dispatch, long-poll receive, visibility as
//! the lease's shadow, delete when the trace is terminal) and the side-effect event queue.
//!
//! Message formats (also in the README and `appsync/`):
//! * command queue: `{"traceId": "<uuid>"}` from tether's own dispatcher; a foreign producer
//!   (an AppSync resolver) adds `"command"` (the `Mutation` field, e.g. `createOrder`),
//!   `"input"` (its arguments' `input` object) and optionally `"owner"`;
//! * event queue: `{"eventId", "eventType", "traceId", "payload"}`, with `eventId` and
//!   `eventType` also as String message attributes. On a FIFO queue the trace ID is the message
//!   group and the event ID the deduplication ID.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use serde_json::json;

use crate::domain::{OutboxEvent, TraceId};
use crate::ports::{CommandQueue, PublishError, Publisher, QueueError, QueueMessage};

/// SQS takes at most 10 entries per batch call and per receive.
const MAX_BATCH: usize = 10;
/// A batch's bodies together may not exceed SQS's message size (256 KiB, kept under).
const MAX_BATCH_BYTES: usize = 250 * 1024;

fn error(e: impl std::error::Error) -> String {
    DisplayErrorContext(e).to_string()
}

/// A client for the AWS SDK's usual settings, with optional overrides (region, endpoint).
pub async fn client(region: Option<String>, endpoint: Option<String>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .build(),
    );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    Client::new(&loader.load().await)
}

/// The command queue.
pub struct SqsCommandQueue {
    client: Client,
    url: String,
    wait_seconds: i32,
    fifo: bool,
}

impl SqsCommandQueue {
    pub fn new(client: Client, url: String, wait_seconds: i32) -> Self {
        Self {
            fifo: url.ends_with(".fifo"),
            client,
            url,
            wait_seconds: wait_seconds.clamp(0, 20),
        }
    }

    /// Whether the queue answers; start-up only warns, since accepts do not need SQS (G1).
    pub async fn check(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError(error(e)))
    }
}

#[async_trait]
impl CommandQueue for SqsCommandQueue {
    async fn send(&self, traces: &[TraceId]) -> Result<Vec<TraceId>, QueueError> {
        let mut taken = Vec::with_capacity(traces.len());
        let mut last_error = None;
        for chunk in traces.chunks(MAX_BATCH) {
            let mut request = self.client.send_message_batch().queue_url(&self.url);
            for (i, trace) in chunk.iter().enumerate() {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(json!({ "traceId": trace.to_string() }).to_string());
                if self.fifo {
                    entry = entry
                        .message_group_id(trace.to_string())
                        .message_deduplication_id(format!("{trace}-{}", uuid::Uuid::now_v7()));
                }
                request = request.entries(entry.build().map_err(|e| QueueError(error(e)))?);
            }
            match request.send().await {
                Ok(out) => {
                    for ok in out.successful() {
                        if let Some(trace) =
                            ok.id().parse::<usize>().ok().and_then(|i| chunk.get(i))
                        {
                            taken.push(*trace);
                        }
                    }
                    if let Some(failed) = out.failed().first() {
                        last_error = Some(format!(
                            "{} of {} messages refused, e.g. {}: {}",
                            out.failed().len(),
                            chunk.len(),
                            failed.code(),
                            failed.message().unwrap_or("")
                        ));
                    }
                }
                Err(e) => last_error = Some(error(e)),
            }
        }
        match (taken.is_empty(), last_error) {
            (true, Some(e)) => Err(QueueError(e)),
            (_, Some(e)) => {
                tracing::warn!(error = %e, "some dispatch messages were refused; they are sent again later");
                Ok(taken)
            }
            (_, None) => Ok(taken),
        }
    }

    async fn receive(
        &self,
        max: usize,
        visibility_secs: i32,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(self.wait_seconds)
            .visibility_timeout(visibility_secs.max(1))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| QueueError(error(e)))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(QueueMessage {
                    id: m.message_id()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    receipt: m.receipt_handle()?.to_owned(),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect())
    }

    async fn set_visibility(&self, message: &QueueMessage, secs: i32) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt)
            .visibility_timeout(secs.clamp(0, 43_200))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError(error(e)))
    }

    async fn delete(&self, message: &QueueMessage) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError(error(e)))
    }
}

/// The side-effect event queue: the EventEmitter's publisher in SQS mode.
pub struct SqsPublisher {
    client: Client,
    url: String,
    fifo: bool,
}

impl SqsPublisher {
    pub fn new(client: Client, url: String) -> Self {
        Self {
            fifo: url.ends_with(".fifo"),
            client,
            url,
        }
    }

    fn entry(
        &self,
        i: usize,
        event: &OutboxEvent,
    ) -> Result<SendMessageBatchRequestEntry, PublishError> {
        let attribute = |value: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| PublishError(error(e)))
        };
        let body = json!({
            "eventId": event.event_id.to_string(),
            "eventType": event.event_type,
            "traceId": event.trace_id.to_string(),
            "payload": event.payload,
        });
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(body.to_string())
            .message_attributes("eventId", attribute(event.event_id.to_string())?)
            .message_attributes("eventType", attribute(event.event_type.clone())?);
        if self.fifo {
            entry = entry
                .message_group_id(event.trace_id.to_string())
                .message_deduplication_id(event.event_id.to_string());
        }
        entry.build().map_err(|e| PublishError(error(e)))
    }
}

#[async_trait]
impl Publisher for SqsPublisher {
    /// All or error: the emitter marks rows sent only when every one went out, so a partly
    /// failed batch is published again in full (duplicates carry the same event ID, G4).
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let mut start = 0;
        while start < events.len() {
            // Up to 10 entries, and under SQS's batch size.
            let mut end = start;
            let mut bytes = 0;
            while end < events.len() && end - start < MAX_BATCH {
                let size = events[end].payload.to_string().len() + 200;
                if end > start && bytes + size > MAX_BATCH_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let mut request = self.client.send_message_batch().queue_url(&self.url);
            for (i, event) in events[start..end].iter().enumerate() {
                request = request.entries(self.entry(i, event)?);
            }
            let out = request.send().await.map_err(|e| PublishError(error(e)))?;
            if let Some(failed) = out.failed().first() {
                return Err(PublishError(format!(
                    "SQS refused {} of {} events, e.g. {}: {}",
                    out.failed().len(),
                    end - start,
                    failed.code(),
                    failed.message().unwrap_or("")
                )));
            }
            start = end;
        }
        Ok(())
    }
}
