//! Subscription fan-out with AppSync's `@aws_subscribe` semantics.
//!
//! A publish names the *mutation* that produced a payload (`publishTraceEvent`, or any
//! mutation an `@aws_subscribe` lists); the hub routes it to the subscription fields that
//! listed that mutation, and delivers it to each subscriber whose explicit arguments equal
//! the payload's top-level fields (an explicit `null` argument matches only a null or missing
//! field). The payload is already projected on the publisher's selection set; the subscriber's
//! own selection is applied by its connection (`schema::live`).
//!
//! The hub is injected (no global). Every subscriber has a bounded buffer: a subscriber that
//! does not keep up is dropped and told so, instead of growing memory (G8). Subscribers that
//! filter on `traceId` are indexed by it, so a publish touches only the subscribers of its
//! trace.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::domain::{TraceEvent, TraceId};
use crate::ports::TraceSink;

/// The mutation whose results carry trace events to `onTraceEvent`.
pub const TRACE_EVENT_MUTATION: &str = "publishTraceEvent";

/// The field subscribers are indexed by.
const INDEX_FIELD: &str = "traceId";

type Key = (String, Option<String>);

pub struct Hub {
    /// mutation name → the subscription fields whose `@aws_subscribe` lists it.
    routes: HashMap<String, Vec<String>>,
    subscribers: Mutex<HashMap<Key, Vec<Subscriber>>>,
    /// Items a subscriber may have waiting before it is dropped as too slow.
    buffer: usize,
    /// Larger payloads are not delivered, as on AppSync (240 KB there).
    max_message_bytes: usize,
    next_id: AtomicU64,
    delivered: AtomicU64,
    dropped_slow: AtomicU64,
}

struct Subscriber {
    id: u64,
    filters: Vec<(String, Value)>,
    tx: mpsc::Sender<Arc<Value>>,
    overflowed: Arc<AtomicBool>,
}

impl Hub {
    pub fn new(
        routes: HashMap<String, Vec<String>>,
        buffer: usize,
        max_message_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            routes,
            max_message_bytes,
            subscribers: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
            next_id: AtomicU64::new(1),
            delivered: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// Registers a subscriber to `field` with the arguments the client gave explicitly.
    /// Dropping the returned stream unsubscribes.
    pub fn subscribe(self: &Arc<Self>, field: &str, filters: Vec<(String, Value)>) -> Subscription {
        let index = filters
            .iter()
            .find(|(name, _)| name == INDEX_FIELD)
            .and_then(|(_, v)| v.as_str().map(str::to_owned));
        let key = (field.to_owned(), index);
        let (tx, rx) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            id,
            filters,
            tx,
            overflowed: overflowed.clone(),
        };
        self.lock().entry(key.clone()).or_default().push(subscriber);
        Subscription {
            rx,
            overflowed,
            hub: self.clone(),
            key,
            id,
        }
    }

    /// Delivers the result of `mutation` (projected on its caller's selection) to every
    /// matching subscriber. Never blocks.
    pub fn publish(&self, mutation: &str, payload: Value) {
        let Some(fields) = self.routes.get(mutation) else {
            return;
        };
        let size = payload.to_string().len();
        if size > self.max_message_bytes {
            // AppSync drops oversized messages silently; tether drops them too, but says so.
            tracing::warn!(
                mutation,
                size,
                limit = self.max_message_bytes,
                "subscription message too large; not delivered"
            );
            return;
        }
        let payload = Arc::new(payload);
        let index = payload
            .get(INDEX_FIELD)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut subscribers = self.lock();
        for field in fields {
            let mut keys = vec![(field.clone(), None)];
            if index.is_some() {
                keys.push((field.clone(), index.clone()));
            }
            for key in keys {
                let Some(list) = subscribers.get_mut(&key) else {
                    continue;
                };
                list.retain(|s| self.offer(s, &payload));
                if list.is_empty() {
                    subscribers.remove(&key);
                }
            }
        }
    }

    /// Offers the payload to one subscriber; false when the subscriber must go.
    fn offer(&self, s: &Subscriber, payload: &Arc<Value>) -> bool {
        if !matches(&s.filters, payload) {
            return !s.tx.is_closed();
        }
        match s.tx.try_send(payload.clone()) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.overflowed.store(true, Ordering::Relaxed);
                self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subscriber = s.id, "subscriber too slow; dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// (delivered items, subscribers dropped as too slow) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.dropped_slow.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Subscriber>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, key: &Key, id: u64) {
        let mut subscribers = self.lock();
        if let Some(list) = subscribers.get_mut(key) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                subscribers.remove(key);
            }
        }
    }
}

/// AppSync basic filtering: every explicit argument equals the payload's top-level field of
/// the same name; an explicit null matches a null or missing field.
fn matches(filters: &[(String, Value)], payload: &Value) -> bool {
    filters.iter().all(|(name, want)| {
        let got = payload.get(name).unwrap_or(&Value::Null);
        got == want
    })
}

impl TraceSink for Hub {
    /// Committed trace events travel the same path as a `publishTraceEvent` call that selected
    /// every field.
    fn committed(&self, events: &[TraceEvent]) {
        for event in events {
            self.publish(TRACE_EVENT_MUTATION, event.to_graphql());
        }
    }

    fn watching(&self, trace_id: TraceId) -> bool {
        let Some(fields) = self.routes.get(TRACE_EVENT_MUTATION) else {
            return false;
        };
        let id = trace_id.to_string();
        let subscribers = self.lock();
        fields.iter().any(|field| {
            subscribers.contains_key(&(field.clone(), Some(id.clone())))
                || subscribers.contains_key(&(field.clone(), None))
        })
    }

    fn watched(&self) -> Vec<TraceId> {
        let Some(fields) = self.routes.get(TRACE_EVENT_MUTATION) else {
            return Vec::new();
        };
        self.lock()
            .keys()
            .filter(|(field, _)| fields.contains(field))
            .filter_map(|(_, id)| TraceId::parse(id.as_deref()?))
            .collect()
    }

    fn watching_any(&self) -> bool {
        let Some(fields) = self.routes.get(TRACE_EVENT_MUTATION) else {
            return false;
        };
        self.lock().keys().any(|(field, _)| fields.contains(field))
    }
}

/// The subscriber's end: a stream of payloads that ends with `Err(TooSlow)` if the hub had
/// to drop it.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Value>>,
    overflowed: Arc<AtomicBool>,
    hub: Arc<Hub>,
    key: Key,
    id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSlow;

impl Stream for Subscription {
    type Item = Result<Arc<Value>, TooSlow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(v)) => Poll::Ready(Some(Ok(v))),
            Poll::Ready(None) if self.overflowed.swap(false, Ordering::Relaxed) => {
                Poll::Ready(Some(Err(TooSlow)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    fn hub(buffer: usize) -> Arc<Hub> {
        let routes = HashMap::from([(
            TRACE_EVENT_MUTATION.to_owned(),
            vec!["onTraceEvent".to_owned()],
        )]);
        Hub::new(routes, buffer, 240_000)
    }

    #[tokio::test]
    async fn watching_any_follows_trace_event_subscribers_only() {
        let hub = hub(8);
        assert!(!hub.watching_any(), "no one subscribes yet");
        let other = hub.subscribe("onOrderCreated", Vec::new());
        assert!(!hub.watching_any(), "a subscriber to another field");
        let one = hub.subscribe("onTraceEvent", vec![("traceId".into(), json!("a"))]);
        assert!(hub.watching_any());
        drop(one);
        assert!(!hub.watching_any(), "the last trace subscriber left");
        let all = hub.subscribe("onTraceEvent", Vec::new());
        assert!(hub.watching_any(), "a subscriber to every trace");
        drop((all, other));
        assert!(!hub.watching_any());
    }

    #[tokio::test]
    async fn delivers_only_to_matching_filters() {
        let hub = hub(8);
        let mut a = hub.subscribe("onTraceEvent", vec![("traceId".into(), json!("a"))]);
        let mut b = hub.subscribe("onTraceEvent", vec![("traceId".into(), json!("b"))]);
        hub.publish(TRACE_EVENT_MUTATION, json!({"traceId": "a", "seq": 1}));
        hub.publish("someOtherMutation", json!({"traceId": "b", "seq": 1}));
        assert_eq!(a.next().await.unwrap().unwrap()["seq"], 1);
        assert!(
            b.rx.try_recv().is_err(),
            "b got an event it did not ask for"
        );
    }

    #[tokio::test]
    async fn explicit_null_matches_only_null_or_missing() {
        let hub = hub(8);
        let mut s = hub.subscribe("onTraceEvent", vec![("message".into(), Value::Null)]);
        hub.publish(
            TRACE_EVENT_MUTATION,
            json!({"traceId": "a", "message": "x"}),
        );
        hub.publish(TRACE_EVENT_MUTATION, json!({"traceId": "a", "seq": 2}));
        assert_eq!(s.next().await.unwrap().unwrap()["seq"], 2);
    }

    #[tokio::test]
    async fn slow_subscriber_is_dropped_with_an_error_and_unregistered() {
        let hub = hub(2);
        let mut s = hub.subscribe("onTraceEvent", vec![("traceId".into(), json!("a"))]);
        for seq in 0..3 {
            hub.publish(TRACE_EVENT_MUTATION, json!({"traceId": "a", "seq": seq}));
        }
        assert_eq!(hub.subscriber_count(), 0);
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.unwrap().is_ok());
        assert_eq!(s.next().await.unwrap(), Err(TooSlow));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_unsubscribes() {
        let hub = hub(2);
        let s = hub.subscribe("onTraceEvent", vec![("traceId".into(), json!("a"))]);
        assert_eq!(hub.subscriber_count(), 1);
        drop(s);
        assert_eq!(hub.subscriber_count(), 0);
    }
}
