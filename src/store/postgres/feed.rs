//! Trace events and wake-ups across processes, over `LISTEN/NOTIFY`.
//!
//! * Every transaction that appends trace events also sends a notice on [`EVENTS_CHANNEL`]:
//!   the writer's node ID and, per trace, the first and last sequence number it wrote. Postgres
//!   delivers notices only after the commit, to every listening process.
//! * Transactions that make work runnable (accepts, releases, replays) notify
//!   [`WORK_CHANNEL`]; workers wake up and claim.
//! * The [`Feed`] is the one path to the hub. Events this process committed come in directly;
//!   notices from other processes come as keys, and their rows are read from the database,
//!   for the traces someone here subscribes to only. Per trace, the feed remembers the last
//!   sequence number it delivered and fills any gap from the table, so subscribers see every
//!   event once, in order (G5). A trace seen for the first time is delivered from its start:
//!   subscribers may get events from before they subscribed, never miss one after.
//! * The [`listen`] task owns one dedicated connection. When it is lost (a Postgres restart,
//!   a dropped connection) the task reconnects with backoff, then tells the feed to read every
//!   watched trace again from where it stopped, and wakes the workers, whose fallback poll
//!   covered the gap meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::read_ranges;
use crate::domain::{TraceEvent, TraceId};
use crate::ports::TraceSink;

pub(super) const EVENTS_CHANNEL: &str = "tether_events";
pub(super) const WORK_CHANNEL: &str = "tether_work";
/// Postgres refuses notice payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;

/// Events of one trace written by one transaction: `(trace, first seq, last seq)`.
pub(super) type Range = (TraceId, i64, i64);

/// Notice payloads for `events`: `node|trace first last|trace first last…`, split below the
/// payload limit.
pub(super) fn notices(node: &str, events: &[TraceEvent]) -> Vec<String> {
    let mut ranges: Vec<Range> = Vec::new();
    for e in events {
        match ranges.last_mut() {
            Some((t, _, last)) if *t == e.trace_id && *last + 1 == e.seq => *last = e.seq,
            _ => ranges.push((e.trace_id, e.seq, e.seq)),
        }
    }
    let mut out = Vec::new();
    let mut payload = String::new();
    for (trace, first, last) in ranges {
        let part = format!("|{trace} {first} {last}");
        if !payload.is_empty() && payload.len() + part.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut payload));
        }
        if payload.is_empty() {
            payload.push_str(node);
        }
        payload.push_str(&part);
    }
    if !payload.is_empty() {
        out.push(payload);
    }
    out
}

/// The node that wrote a notice and its ranges; `None` for a payload tether did not write.
fn parse_notice(payload: &str) -> Option<(&str, Vec<Range>)> {
    let mut parts = payload.split('|');
    let node = parts.next()?;
    let mut ranges = Vec::new();
    for part in parts {
        let mut fields = part.split(' ');
        let trace = TraceId::parse(fields.next()?)?;
        let first = fields.next()?.parse().ok()?;
        let last = fields.next()?.parse().ok()?;
        ranges.push((trace, first, last));
    }
    Some((node, ranges))
}

enum Msg {
    /// Committed by this process.
    Local(Vec<TraceEvent>),
    /// Committed by another process; the rows are in the database.
    Remote(Vec<Range>),
    /// Notices may have been lost: read every watched trace again.
    Resync,
}

/// The path from committed events to the hub; see the module doc.
pub struct Feed {
    tx: mpsc::UnboundedSender<Msg>,
    live: Arc<Live>,
}

impl Feed {
    /// Starts the sequencer and the listener; both stop with `stop`. `node` names this
    /// process in its notices; `wake` is the workers' wake-up.
    pub(super) fn start(
        hub: Arc<dyn TraceSink>,
        pool: PgPool,
        options: PgConnectOptions,
        node: Arc<str>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live::default());
        let retry = tx.clone();
        let sequencer = {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = sequence(hub, pool, rx, retry) => {}
                }
            }
        };
        tokio::spawn(sequencer);
        tokio::spawn(listen(options, node, tx.clone(), wake, live.clone(), stop));
        Self { tx, live }
    }

    /// Whether notices arrive (the listener connection is up).
    pub(super) fn live(&self) -> bool {
        self.live.0.load(Ordering::Relaxed)
    }

    pub(super) fn committed(&self, events: &[TraceEvent]) {
        if !events.is_empty() {
            let _ = self.tx.send(Msg::Local(events.to_vec()));
        }
    }
}

/// Messages handled together: their reads share one query.
const BATCH: usize = 256;

/// How long the feed waits before reading again after a failed read.
const READ_RETRY: Duration = Duration::from_millis(200);

async fn sequence(
    hub: Arc<dyn TraceSink>,
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    retry: mpsc::UnboundedSender<Msg>,
) {
    // watched trace → last sequence number delivered
    let mut delivered: HashMap<TraceId, i64> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_prune = std::time::Instant::now();
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut watching: HashMap<TraceId, bool> = HashMap::new();
        let mut is_watched = |t: TraceId| *watching.entry(t).or_insert_with(|| hub.watching(t));
        // Per trace: the events at hand, and the highest sequence number known to exist.
        let mut have: HashMap<TraceId, BTreeMap<i64, TraceEvent>> = HashMap::new();
        let mut upto: HashMap<TraceId, i64> = HashMap::new();
        for msg in batch.drain(..) {
            match msg {
                Msg::Local(events) => {
                    for e in events {
                        if is_watched(e.trace_id) {
                            let hi = upto.entry(e.trace_id).or_insert(e.seq);
                            *hi = (*hi).max(e.seq);
                            have.entry(e.trace_id).or_default().insert(e.seq, e);
                        }
                    }
                }
                Msg::Remote(ranges) => {
                    for (trace, _, last) in ranges {
                        if is_watched(trace) {
                            let hi = upto.entry(trace).or_insert(last);
                            *hi = (*hi).max(last);
                        }
                    }
                }
                Msg::Resync => {
                    for trace in hub.watched() {
                        upto.entry(trace).or_insert(i64::MAX);
                    }
                }
            }
        }
        // What is missing between the last delivery (or the trace's start) and `upto`.
        let mut wanted: Vec<Range> = Vec::new();
        for (&trace, &hi) in &upto {
            let from = delivered.get(&trace).copied().unwrap_or(0);
            let held = have.get(&trace);
            let complete =
                hi != i64::MAX && held.is_some_and(|m| (from + 1..=hi).all(|s| m.contains_key(&s)));
            if hi > from && !complete {
                wanted.push((trace, from, hi));
            }
        }
        if !wanted.is_empty() {
            match read_ranges(&pool, &wanted).await {
                Ok(rows) => {
                    for e in rows {
                        have.entry(e.trace_id)
                            .or_default()
                            .entry(e.seq)
                            .or_insert(e);
                    }
                }
                Err(e) => {
                    // Deliver nothing of these traces rather than a gap: ask again shortly.
                    tracing::warn!(error = %e, traces = wanted.len(), "reading trace events for subscribers failed; retrying");
                    for (trace, _, _) in &wanted {
                        have.remove(trace);
                    }
                    let again = retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(READ_RETRY).await;
                        let _ = again.send(Msg::Remote(wanted));
                    });
                }
            }
        }
        let mut out = Vec::new();
        for (trace, events) in have {
            let from = delivered.get(&trace).copied().unwrap_or(0);
            let mut last = from;
            for (seq, e) in events {
                if seq > last {
                    last = seq;
                    out.push(e);
                }
            }
            delivered.insert(trace, last);
        }
        if !out.is_empty() {
            hub.committed(&out);
        }
        if last_prune.elapsed() > Duration::from_secs(5) {
            delivered.retain(|t, _| hub.watching(*t));
            last_prune = std::time::Instant::now();
        }
    }
}

/// Whether the listener connection is up; while it is down, workers poll at the short
/// fallback interval.
#[derive(Default)]
struct Live(AtomicBool);

/// Listens on both channels over a dedicated connection until `stop`; see the module doc.
async fn listen(
    options: PgConnectOptions,
    node: Arc<str>,
    feed: mpsc::UnboundedSender<Msg>,
    wake: Arc<Notify>,
    live: Arc<Live>,
    stop: CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let mut backoff = BACKOFF_MIN;
    let mut lost = false;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all([EVENTS_CHANNEL, WORK_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            connected = connected => match connected {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        live.0.store(true, Ordering::Relaxed);
        backoff = BACKOFF_MIN;
        if lost {
            tracing::info!("LISTEN connection back; catching up");
            let _ = feed.send(Msg::Resync);
            wake.notify_one();
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(n)) if n.channel() == WORK_CHANNEL => wake.notify_one(),
                Ok(Some(n)) => match parse_notice(n.payload()) {
                    Some((from, _)) if from == &*node => {} // delivered locally already
                    Some((_, ranges)) => {
                        let _ = feed.send(Msg::Remote(ranges));
                    }
                    None => tracing::debug!(payload = n.payload(), "ignoring a foreign notice"),
                },
                Ok(None) | Err(_) => {
                    if let Err(e) = &next {
                        tracing::warn!(error = %e, "LISTEN connection lost");
                    } else {
                        tracing::warn!("LISTEN connection lost");
                    }
                    live.0.store(false, Ordering::Relaxed);
                    lost = true;
                    break;
                }
            }
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Component, Status, TraceState};

    fn event(trace: TraceId, seq: i64) -> TraceEvent {
        TraceEvent {
            trace_id: trace,
            seq,
            component: Component::CommandApi,
            status: Status::Accepted,
            at: 0,
            attempt: None,
            message: None,
            detail: None,
            state: TraceState::Pending,
        }
    }

    #[test]
    fn notices_carry_one_range_per_trace_and_parse_back() {
        let (a, b) = (TraceId::new(), TraceId::new());
        let events = [event(a, 3), event(a, 4), event(b, 1), event(a, 6)];
        let payloads = notices("n1", &events);
        assert_eq!(payloads.len(), 1);
        let (node, ranges) = parse_notice(&payloads[0]).unwrap();
        assert_eq!(node, "n1");
        assert_eq!(ranges, vec![(a, 3, 4), (b, 1, 1), (a, 6, 6)]);
    }

    #[test]
    fn notices_stay_below_the_payload_limit() {
        let events: Vec<_> = (0..1000).map(|_| event(TraceId::new(), 1)).collect();
        let payloads = notices("node", &events);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let ranges: usize = payloads
            .iter()
            .map(|p| parse_notice(p).unwrap().1.len())
            .sum();
        assert_eq!(ranges, 1000);
    }

    #[test]
    fn foreign_payloads_are_not_notices() {
        assert!(parse_notice("hello|world").is_none());
        assert_eq!(parse_notice("n").unwrap().1, vec![]);
    }
}
