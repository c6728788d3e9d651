//! Outbox rows handed from this process's attempts to its own emitter, without a round trip.
//!
//! A group commit writes its outbox rows already taken by this process (`claimed_by`, for
//! [`OUTBOX_CLAIM_MS`](super::OUTBOX_CLAIM_MS)), so no other emitter takes them, and leaves
//! them here; `unsent_outbox` gives the emitter these before it asks the database, so rows
//! this process wrote cost no claiming statement. The table stays the truth: a row that is
//! not handed over (the process died, the list was full, the claim is running out, the
//! commit's answer was lost) is still unsent and claimed by this process, and the claiming
//! statement takes it as before (here at its next run, elsewhere after the claim or once this
//! process released its claims on a graceful shutdown). That statement still runs on every
//! [`OUTBOX_STATEMENT_EVERY`](super::OUTBOX_STATEMENT_EVERY)th call while this list has rows, so
//! rows only it can reach (other processes' expired claims, dead-letter events, rows whose
//! publishing failed) are not held back behind a steady stream of new ones. While any rows
//! are listed here, that statement leaves this process's own unexpired claims alone (they
//! may be rows listed here; taking them would cost the update this list saves), so a row
//! whose publishing failed is taken again once the load pauses or its claim runs out.
//!
//! A row is handed over with at least [`MIN_CLAIM_LEFT_MS`] of its claim left (the statement
//! gives its rows the whole claim); a publisher slower than that may overlap another
//! process's claim and the row is published twice, with the same event ID (G4 allows it).
//!
//! No row is handed over twice, so the one emitter of a process never publishes a row it
//! already holds: a group lists its rows *before* it commits (as pending) and confirms them
//! after, and every row the claiming statement returns is struck from the list. A statement
//! that sees a row therefore runs after the row was listed, and strikes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::domain::{Millis, OutboxEvent};

/// Most rows waiting here; beyond that, confirmed rows are left to the claiming statement.
const MAX_WAITING: usize = 4096;
/// A row is handed over only while this much of its claim is left, so that it is published
/// and marked sent before another process may take it.
const MIN_CLAIM_LEFT_MS: Millis = 5_000;

#[derive(Default)]
pub(super) struct Relay {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_group: u64,
    /// Rows of groups that have not committed yet, by group.
    pending: HashMap<u64, Vec<OutboxEvent>>,
    /// Committed rows in commit order, with the end of their claim.
    ready: VecDeque<(Millis, OutboxEvent)>,
}

/// A group's rows while it commits; see [`Relay::pending`]. Dropped without
/// [`Relay::committed`] (the commit failed, or may have), they are not handed over.
pub(super) struct Pending<'r> {
    relay: &'r Relay,
    group: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.relay
            .inner
            .lock()
            .expect("relay lock")
            .pending
            .remove(&self.group);
    }
}

impl Relay {
    /// Lists a group's rows before its commit.
    pub(super) fn pending(&self, rows: Vec<OutboxEvent>) -> Pending<'_> {
        let mut inner = self.inner.lock().expect("relay lock");
        let group = inner.next_group;
        inner.next_group += 1;
        if !rows.is_empty() {
            inner.pending.insert(group, rows);
        }
        Pending { relay: self, group }
    }

    /// The group committed: its rows (those no statement took meanwhile) are ready.
    pub(super) fn committed(&self, group: Pending<'_>, claimed_until: Millis) {
        let mut inner = self.inner.lock().expect("relay lock");
        let Some(rows) = inner.pending.remove(&group.group) else {
            return;
        };
        let room = MAX_WAITING.saturating_sub(inner.ready.len());
        inner
            .ready
            .extend(rows.into_iter().take(room).map(|r| (claimed_until, r)));
    }

    /// Whether rows are ready to be handed over, and whether any are listed (ready, or of a
    /// group still committing).
    pub(super) fn listed(&self) -> (bool, bool) {
        let inner = self.inner.lock().expect("relay lock");
        let ready = !inner.ready.is_empty();
        (ready, ready || !inner.pending.is_empty())
    }

    /// Up to `limit` ready rows whose claim lasts long enough; rows whose claim is running
    /// out are dropped (the claiming statement takes them).
    pub(super) fn take(&self, limit: usize, now: Millis) -> Vec<OutboxEvent> {
        let mut inner = self.inner.lock().expect("relay lock");
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((until, row)) = inner.ready.pop_front() else {
                break;
            };
            if until - now >= MIN_CLAIM_LEFT_MS {
                out.push(row);
            }
        }
        out
    }

    /// The claiming statement returned these rows: they are not handed over again.
    pub(super) fn strike(&self, taken: &[OutboxEvent]) {
        let mut inner = self.inner.lock().expect("relay lock");
        if inner.pending.is_empty() && inner.ready.is_empty() {
            return;
        }
        let ids: HashSet<uuid::Uuid> = taken.iter().map(|e| e.event_id).collect();
        for rows in inner.pending.values_mut() {
            rows.retain(|r| !ids.contains(&r.event_id));
        }
        inner.ready.retain(|(_, r)| !ids.contains(&r.event_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TraceId;

    fn row() -> OutboxEvent {
        OutboxEvent {
            event_id: uuid::Uuid::new_v4(),
            trace_id: TraceId::new(),
            event_type: "OrderCreated".into(),
            payload: serde_json::json!({}),
        }
    }

    fn ids(rows: &[OutboxEvent]) -> Vec<uuid::Uuid> {
        rows.iter().map(|r| r.event_id).collect()
    }

    #[test]
    fn rows_are_handed_over_once_after_their_commit_in_commit_order() {
        let relay = Relay::default();
        let (a, b, c) = (row(), row(), row());
        let first = relay.pending(vec![a.clone(), b.clone()]);
        let second = relay.pending(vec![c.clone()]);
        assert!(relay.take(10, 0).is_empty(), "nothing before a commit");
        relay.committed(second, 10_000);
        relay.committed(first, 10_000);
        assert_eq!(ids(&relay.take(2, 0)), ids(&[c, a]));
        assert_eq!(ids(&relay.take(10, 0)), ids(&[b]));
        assert!(relay.take(10, 0).is_empty());
    }

    #[test]
    fn rows_a_statement_took_or_of_a_dropped_group_are_not_handed_over() {
        let relay = Relay::default();
        let (a, b, c) = (row(), row(), row());
        let group = relay.pending(vec![a.clone(), b.clone()]);
        relay.strike(std::slice::from_ref(&a));
        relay.committed(group, 10_000);
        drop(relay.pending(vec![c]));
        let (d, e) = (row(), row());
        let ready = relay.pending(vec![d.clone(), e.clone()]);
        relay.committed(ready, 10_000);
        relay.strike(std::slice::from_ref(&d));
        assert_eq!(ids(&relay.take(10, 0)), ids(&[b, e]));
        assert!(relay.inner.lock().unwrap().pending.is_empty());
    }

    #[test]
    fn a_claim_running_out_is_left_to_the_statement_and_the_list_is_bounded() {
        let relay = Relay::default();
        let old = relay.pending(vec![row()]);
        relay.committed(old, 1_000);
        assert!(
            relay.take(10, 0).is_empty(),
            "4 s of claim left is too little"
        );
        let many = relay.pending((0..MAX_WAITING + 10).map(|_| row()).collect());
        relay.committed(many, 10_000);
        assert_eq!(relay.take(usize::MAX, 0).len(), MAX_WAITING);
    }
}
