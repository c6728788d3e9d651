//! Trace events and wake-ups across processes, over `LISTEN/NOTIFY`.
//!
//! * After every commit that appended trace events, the writer announces them on
//!   [`EVENTS_CHANNEL`]: its node ID and, per trace, the first and last sequence number
//!   written. After a commit that made work runnable (accepts, releases, replays, retries) it
//!   announces [`WORK_CHANNEL`], and workers wake up and claim.
//! * Announcements are sent by one task per process ([`announce`]), after the commit and
//!   outside the writing transaction: everything committed meanwhile goes out in one
//!   statement on a connection with `synchronous_commit = off`, and at most one such
//!   statement every [`ANNOUNCE_GAP`]. A `NOTIFY` inside the writing transaction would hold a
//!   cluster-wide lock from before its commit until its WAL flush, so no two such commits
//!   could share an fsync.
//! * A notice lost that way (the writer died between its commit and the announcement, or the
//!   announcing connection failed) delays events, never loses them: the sequencer checks every
//!   [`CHECK_EVERY`] whether a watched trace has events it has not delivered, and workers poll.
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

/// The ranges `events` cover, one per run of consecutive sequence numbers of a trace.
fn ranges(events: &[TraceEvent]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some((t, _, last)) if *t == e.trace_id && *last + 1 == e.seq => *last = e.seq,
            _ => out.push((e.trace_id, e.seq, e.seq)),
        }
    }
    out
}

/// Notice payloads for `ranges`: `node|trace first last|trace first last…`, split below the
/// payload limit.
fn notices(node: &str, ranges: &[Range]) -> Vec<String> {
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

/// What one commit asks the announcer to tell other processes.
struct Announcement {
    ranges: Vec<Range>,
    work: bool,
}

/// The path from committed events to the hub, and to other processes; see the module doc.
pub struct Feed {
    hub: Arc<dyn TraceSink>,
    tx: mpsc::UnboundedSender<Msg>,
    announce: mpsc::UnboundedSender<Announcement>,
    live: Arc<Live>,
}

impl Feed {
    /// Starts the sequencer, the announcer and the listener; all stop with `stop`. `node`
    /// names this process in its notices; `wake` is the workers' wake-up.
    pub(super) fn start(
        hub: Arc<dyn TraceSink>,
        pool: PgPool,
        options: PgConnectOptions,
        node: Arc<str>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (announce_tx, announce_rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live::default());
        let retry = tx.clone();
        let sequencer = {
            let stop = stop.clone();
            let sink = hub.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = sequence(sink, pool, rx, retry) => {}
                }
            }
        };
        tokio::spawn(sequencer);
        tokio::spawn(announce(
            options.clone(),
            node.clone(),
            announce_rx,
            stop.clone(),
        ));
        tokio::spawn(listen(options, node, tx.clone(), wake, live.clone(), stop));
        Self {
            hub,
            tx,
            announce: announce_tx,
            live,
        }
    }

    /// Whether notices arrive (the listener connection is up).
    pub(super) fn live(&self) -> bool {
        self.live.0.load(Ordering::Relaxed)
    }

    /// After a commit: delivers its events here and announces them to other processes.
    pub(super) fn committed(&self, events: &[TraceEvent]) {
        self.committed_work(events, false);
    }

    /// After a commit that also made work runnable: wakes the workers of every process too.
    /// Events go to the sequencer only while someone here subscribes to trace events; one who
    /// subscribes meanwhile is caught up from the table by the sequencer's check.
    pub(super) fn committed_work(&self, events: &[TraceEvent], work: bool) {
        if !events.is_empty() && self.hub.watching_any() {
            let _ = self.tx.send(Msg::Local(events.to_vec()));
        }
        if work || !events.is_empty() {
            let _ = self.announce.send(Announcement {
                ranges: ranges(events),
                work,
            });
        }
    }
}

/// Most announcements sent in one statement.
const ANNOUNCE_BATCH: usize = 1024;

/// After sending, the announcer waits this long before it sends again; what commits meanwhile
/// goes out together. An idle process announces at once; a busy one delays its notices by up
/// to this much and sends far fewer of them: every statement wakes every listening backend of
/// the cluster and every listening process, its own included. With one statement per accept
/// batch (~2000/s), listening backends spent ~2.5 µs of CPU per accept; with this gap ~1.4
/// (medians of 5 alternating runs of `TETHER_BENCH_PG_PHASES=1 scripts/bench --pg`,
/// 2026-12-06), and ~0.5–1.3 with the accept committer on its own thread as well.
const ANNOUNCE_GAP: Duration = Duration::from_millis(2);

/// Sends what commits announce, everything waiting in one statement, on a connection of its
/// own whose transactions do not wait for their WAL flush (a notice is a hint: losing one to a
/// crash only delays its reader until its next check).
async fn announce(
    options: PgConnectOptions,
    node: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<Announcement>,
    stop: CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options.options([("synchronous_commit", "off")]));
    let mut batch = Vec::with_capacity(ANNOUNCE_BATCH);
    let mut backoff = BACKOFF_MIN;
    loop {
        batch.clear();
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, ANNOUNCE_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let mut all = Vec::new();
        let mut work = false;
        for a in batch.drain(..) {
            all.extend(a.ranges);
            work |= a.work;
        }
        let mut payloads = notices(&node, &all);
        let mut channels = vec![EVENTS_CHANNEL; payloads.len()];
        if work {
            channels.push(WORK_CHANNEL);
            payloads.push(String::new());
        }
        let sent =
            sqlx::query("SELECT pg_notify(c, p) FROM UNNEST($1::text[], $2::text[]) AS u(c, p)")
                .bind(channels)
                .bind(payloads)
                .execute(&pool)
                .await;
        match sent {
            Ok(_) => {
                backoff = BACKOFF_MIN;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ANNOUNCE_GAP) => {}
                }
            }
            Err(e) => {
                // Readers catch up at their next check; workers poll meanwhile.
                tracing::warn!(error = %e, notices = n, "sending notices failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Messages handled together: their reads share one query.
const BATCH: usize = 256;

/// How long the feed waits before reading again after a failed read.
const READ_RETRY: Duration = Duration::from_millis(200);

/// How often the sequencer checks watched traces for events it has not delivered (a notice
/// lost between a commit and its announcement).
const CHECK_EVERY: Duration = Duration::from_secs(1);

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
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        batch.clear();
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 {
                return;
            },
            _ = check.tick() => match behind(&pool, hub.as_ref(), &delivered).await {
                Ok(ranges) if !ranges.is_empty() => batch.push(Msg::Remote(ranges)),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "checking watched traces failed");
                    continue;
                }
            },
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

/// Watched traces with events past what was delivered: `(trace, delivered, last written)`.
async fn behind(
    pool: &PgPool,
    hub: &dyn TraceSink,
    delivered: &HashMap<TraceId, i64>,
) -> Result<Vec<Range>, sqlx::Error> {
    let watched = hub.watched();
    if watched.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = watched.iter().map(TraceId::to_string).collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT trace_id, last_seq FROM commands WHERE trace_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, last)| {
            let trace = TraceId::parse(&id)?;
            let from = delivered.get(&trace).copied().unwrap_or(0);
            (last > from).then_some((trace, from, last))
        })
        .collect())
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
        let payloads = notices("n1", &ranges(&events));
        assert_eq!(payloads.len(), 1);
        let (node, ranges) = parse_notice(&payloads[0]).unwrap();
        assert_eq!(node, "n1");
        assert_eq!(ranges, vec![(a, 3, 4), (b, 1, 1), (a, 6, 6)]);
    }

    #[test]
    fn notices_stay_below_the_payload_limit() {
        let events: Vec<_> = (0..1000).map(|_| event(TraceId::new(), 1)).collect();
        let payloads = notices("node", &ranges(&events));
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
