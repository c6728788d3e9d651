//! The Store contract, written once and run against both stores (`sqlite::…`, `postgres::…`):
//! group commit, idempotency, back-pressure, claims, leases and fencing.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::*;
use serde_json::json;
use tether::domain::{Claim, Component, NewCommand, NewTraceEvent, Status, TraceId, now_millis};
use tether::ports::{Failure, Next, Store, StoreError};

async fn store(backend: Backend) -> (Arc<dyn Store>, TestDb) {
    let db = TestDb::new(backend, "store").await;
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    (db.store(hub, 10_000).await, db)
}

contract!(
    concurrent_accepts_all_land_durably,
    a_full_accept_queue_throttles_instead_of_growing,
    idempotency_keys_are_forgotten_after_their_retention,
    idempotency_keys_within_one_batch_name_one_trace,
    sent_outbox_rows_are_deleted_after_their_retention_and_unsent_ones_never,
    a_lease_is_exclusive_and_a_stale_token_writes_nothing,
    attempts_sharing_a_commit_roll_back_alone,
    a_group_fences_its_stale_leases_and_commits_the_rest,
    inserted_rows_are_seen_and_a_refused_one_fails_its_attempt_alone,
    an_expired_lease_commits_nothing_and_a_renewed_one_is_not_taken_over,
    concurrent_claimers_never_share_a_command,
    published_rows_are_reported_on_their_trace_in_publishing_order,
);

fn command(owner: &str, key: Option<&str>) -> NewCommand {
    NewCommand {
        trace_id: TraceId::new(),
        command_type: "createOrder".into(),
        payload: json!({ "customerId": "c" }),
        owner: owner.into(),
        idempotency_key: key.map(str::to_owned),
    }
}

async fn sent_outbox_rows_are_deleted_after_their_retention_and_unsent_ones_never(
    backend: Backend,
) {
    let (store, db) = store(backend).await;
    // Sent long ago, sent just now, and never sent (however old).
    db.rows(
        "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at, sent_at)
         VALUES ('old-sent', 't1', 'OrderCreated', '{}', 1000, 2000),
                ('new-sent', 't2', 'OrderCreated', '{}', 1000, 9000),
                ('unsent', 't3', 'OrderCreated', '{}', 1000, NULL)",
        &[],
    )
    .await;
    let ids = || async {
        db.rows("SELECT event_id FROM outbox ORDER BY event_id", &[])
            .await
            .into_iter()
            .map(|r| r[0].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(store.forget_sent_outbox(2000).await.unwrap(), 0);
    assert_eq!(store.forget_sent_outbox(5000).await.unwrap(), 1);
    assert_eq!(ids().await, ["new-sent", "unsent"]);
    assert_eq!(store.forget_sent_outbox(i64::MAX).await.unwrap(), 1);
    assert_eq!(ids().await, ["unsent"]);
}

async fn concurrent_accepts_all_land_durably(backend: Backend) {
    let (store, db) = store(backend).await;
    let accepted = futures_util::future::join_all((0..500).map(|_| {
        let store = store.clone();
        async move { store.accept(command("alice", None)).await.unwrap() }
    }))
    .await;
    let commands = db
        .scalar("SELECT count(*) FROM commands WHERE owner = $1", "alice")
        .await;
    let events = db
        .scalar(
            "SELECT count(*) FROM trace_events WHERE component = $1",
            "CommandApi",
        )
        .await;
    assert_eq!((commands, events), (500, 500));
    assert!(accepted.iter().all(|a| a.created));
}

async fn a_full_accept_queue_throttles_instead_of_growing(backend: Backend) {
    let db = TestDb::new(backend, "store-full").await;
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let store = db.store(hub, 1).await;
    let results = futures_util::future::join_all((0..200).map(|_| {
        let store = store.clone();
        async move { store.accept(command("alice", None)).await }
    }))
    .await;
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Overloaded)))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok + throttled,
        200,
        "every accept either lands or is told to back off"
    );
    assert!(
        throttled > 0,
        "a queue of 1 must push back under 200 concurrent accepts"
    );
}

async fn idempotency_keys_are_forgotten_after_their_retention(backend: Backend) {
    let (store, _db) = store(backend).await;
    let first = store.accept(command("alice", Some("k"))).await.unwrap();
    let again = store.accept(command("alice", Some("k"))).await.unwrap();
    assert_eq!((again.trace_id, again.created), (first.trace_id, false));
    // Retention not reached: nothing is forgotten.
    assert_eq!(
        store
            .expire_idempotency_keys(first.accepted_at - 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .accept(command("alice", Some("k")))
            .await
            .unwrap()
            .trace_id,
        first.trace_id
    );
    // Past it, the key is free again.
    assert_eq!(
        store
            .expire_idempotency_keys(now_millis() + 1)
            .await
            .unwrap(),
        1
    );
    let later = store.accept(command("alice", Some("k"))).await.unwrap();
    assert!(later.created);
    assert_ne!(later.trace_id, first.trace_id);
}

async fn a_lease_is_exclusive_and_a_stale_token_writes_nothing(backend: Backend) {
    let (store, _db) = store(backend).await;
    let accepted = store.accept(command("alice", None)).await.unwrap();
    let claims = store.claim(10, 10_000).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert!(
        store.claim(10, 10_000).await.unwrap().is_empty(),
        "a leased command is not claimed twice"
    );
    let mut stale = claims[0].clone();
    stale.lease_token -= 1;
    let failure = Failure {
        next: Next::Fail,
        lease_expired: false,
        error: "x".into(),
        events: vec![NewTraceEvent::new(
            Component::ErrorHandler,
            Status::Error,
            "x",
        )],
    };
    assert!(!store.record_failure(&stale, failure.clone()).await.unwrap());
    assert!(!store.heartbeat(&stale, 10_000).await.unwrap());
    assert!(store.heartbeat(&claims[0], 10_000).await.unwrap());
    assert!(
        store
            .record_failure(&claims[0], failure.clone())
            .await
            .unwrap()
    );
    // Once the attempt is recorded, its own token is stale too.
    assert!(!store.record_failure(&claims[0], failure).await.unwrap());
    let trace = store.trace(accepted.trace_id).await.unwrap().unwrap();
    assert_eq!(trace.state.as_str(), "FAILED");
    let events = store.trace_events(accepted.trace_id, 0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

/// How many orders a trace wrote, and its state.
async fn orders_and_state(
    store: &Arc<dyn Store>,
    db: &TestDb,
    trace: TraceId,
) -> (i64, tether::domain::TraceState) {
    let orders = db
        .scalar(
            "SELECT count(*) FROM orders WHERE trace_id = $1",
            &trace.to_string(),
        )
        .await;
    (orders, store.trace(trace).await.unwrap().unwrap().state)
}

/// What the sweeper writes when it takes over an expired lease: the attempt is retried.
fn takeover() -> Failure {
    Failure {
        next: Next::Retry { at: 0 },
        lease_expired: true,
        error: "lost".into(),
        events: vec![NewTraceEvent::new(
            Component::ErrorHandler,
            Status::Error,
            "lost",
        )],
    }
}

/// Writes an order row for its trace, then fails or not.
struct WriteOrder {
    trace_id: TraceId,
    fail: bool,
}

#[async_trait::async_trait]
impl tether::ports::AttemptWork for WriteOrder {
    async fn run(
        &self,
        tx: &mut dyn tether::ports::Tx,
    ) -> Result<tether::ports::AttemptDone, tether::domain::CommandError> {
        tx.execute(
            "INSERT INTO orders (order_id, trace_id, customer_id, items, total_cents, status, created_at, updated_at)
             VALUES ($1, $2, 'c', '[]', 0, 'CREATED', 0, 0)",
            &[uuid::Uuid::new_v4().to_string().into(), self.trace_id.to_string().into()],
        )
        .await
        .map_err(|e| tether::domain::CommandError::technical(e.to_string()))?;
        if self.fail {
            return Err(tether::domain::CommandError::technical("after the write"));
        }
        Ok(tether::ports::AttemptDone::default())
    }
}

async fn attempts_sharing_a_commit_roll_back_alone(backend: Backend) {
    let (store, db) = store(backend).await;
    for _ in 0..40 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let claims = store.claim(40, 10_000).await.unwrap();
    assert_eq!(claims.len(), 40);
    let outcomes = futures_util::future::join_all(claims.iter().enumerate().map(|(i, claim)| {
        let store = store.clone();
        let work = Arc::new(WriteOrder {
            trace_id: claim.trace_id,
            fail: i % 2 == 0,
        });
        async move { store.commit_attempt(claim, work).await.unwrap() }
    }))
    .await;
    for (i, (claim, outcome)) in claims.iter().zip(outcomes).enumerate() {
        let (orders, state) = orders_and_state(&store, &db, claim.trace_id).await;
        if i % 2 == 0 {
            assert!(matches!(outcome, tether::ports::AttemptOutcome::Failed(_)));
            assert_eq!((orders, state.as_str()), (0, "RUNNING"));
        } else {
            assert!(matches!(outcome, tether::ports::AttemptOutcome::Committed));
            assert_eq!((orders, state.as_str()), (1, "SUCCEEDED"));
        }
    }
    // A second commit with the same (now stale) lease is fenced off.
    let again = store
        .commit_attempt(
            &claims[1],
            Arc::new(WriteOrder {
                trace_id: claims[1].trace_id,
                fail: false,
            }),
        )
        .await;
    assert!(matches!(
        again.unwrap(),
        tether::ports::AttemptOutcome::Fenced
    ));
}

/// Attempts that finish together share a commit but not a fate: live leases commit; stale ones
/// (committed once already, or taken over and claimed again) are fenced off and write nothing,
/// even next to their successor. PostgreSQL first checks leases in the statement that ends
/// them and runs the group again, checked first, when one fails there. About half the attempts here
/// insert their order with `Tx::insert` (held, and written for the whole group), half run a
/// statement of their own.
async fn a_group_fences_its_stale_leases_and_commits_the_rest(backend: Backend) {
    use tether::ports::AttemptOutcome::{Committed, Fenced};
    let (store, db) = store(backend).await;
    for _ in 0..10 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let live = store.claim(10, 10_000).await.unwrap();
    let statement = |trace_id| -> Arc<dyn tether::ports::AttemptWork> {
        Arc::new(WriteOrder {
            trace_id,
            fail: false,
        })
    };
    let held = |trace_id| -> Arc<dyn tether::ports::AttemptWork> {
        Arc::new(InsertOrder {
            trace_id,
            order_id: uuid::Uuid::new_v4().to_string(),
            status: Some("CREATED"),
            read_back: false,
        })
    };
    let write = |claim: &Claim| {
        let hex = claim.trace_id.to_string();
        if hex.ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e']) {
            statement(claim.trace_id)
        } else {
            held(claim.trace_id)
        }
    };
    // Four of them commit now: their leases go stale.
    for claim in &live[..4] {
        let outcome = store.commit_attempt(claim, write(claim)).await.unwrap();
        assert!(matches!(outcome, Committed), "{outcome:?}");
    }
    // Two leases that expire at once, taken over by the sweeper and claimed again.
    for _ in 0..2 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let zombies = store.claim(2, -1).await.unwrap();
    for zombie in &zombies {
        assert!(store.record_failure(zombie, takeover()).await.unwrap());
    }
    let successors = store.claim(2, 10_000).await.unwrap();
    assert_eq!(
        successors
            .iter()
            .map(|c| c.trace_id)
            .collect::<HashSet<_>>(),
        zombies.iter().map(|c| c.trace_id).collect::<HashSet<_>>()
    );
    // A zombie alone, while its successor holds the lease, once in each way of writing.
    for (zombie, work) in zombies
        .iter()
        .zip([statement(zombies[0].trace_id), held(zombies[1].trace_id)])
    {
        let outcome = store.commit_attempt(zombie, work).await.unwrap();
        assert!(matches!(outcome, Fenced), "{outcome:?}");
        let (orders, state) = orders_and_state(&store, &db, zombie.trace_id).await;
        assert_eq!((orders, state.as_str()), (0, "RUNNING"));
    }

    // All at once: stale, zombie, successor and live attempts, interleaved.
    let mut attempts: Vec<(&Claim, bool)> = Vec::new();
    for i in 0..6 {
        attempts.push((&live[4 + i], true));
        if i < 4 {
            attempts.push((&live[i], false));
        }
        if i < 2 {
            attempts.push((&zombies[i], false));
            attempts.push((&successors[i], true));
        }
    }
    let outcomes = futures_util::future::join_all(attempts.iter().map(|(claim, _)| {
        let store = store.clone();
        async move { store.commit_attempt(claim, write(claim)).await.unwrap() }
    }))
    .await;
    for ((claim, holds), outcome) in attempts.iter().zip(outcomes) {
        match (holds, outcome) {
            (true, Committed) | (false, Fenced) => {}
            (_, outcome) => panic!("{} (lease held: {holds}): {outcome:?}", claim.trace_id),
        }
        let (orders, state) = orders_and_state(&store, &db, claim.trace_id).await;
        assert_eq!(
            (orders, state.as_str()),
            (1, "SUCCEEDED"),
            "{}",
            claim.trace_id
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 12);
    assert_eq!(db.count("SELECT count(*) FROM processed").await, 12);
}

/// Adds an order with `Tx::insert` (with no status if told: a NOT NULL column), then, if
/// told to, reads it back in the same transaction.
struct InsertOrder {
    trace_id: TraceId,
    order_id: String,
    status: Option<&'static str>,
    read_back: bool,
}

#[async_trait::async_trait]
impl tether::ports::AttemptWork for InsertOrder {
    async fn run(
        &self,
        tx: &mut dyn tether::ports::Tx,
    ) -> Result<tether::ports::AttemptDone, tether::domain::CommandError> {
        let failed = |e: StoreError| tether::domain::CommandError::technical(e.to_string());
        tx.insert(
            "orders",
            &[
                "order_id",
                "trace_id",
                "customer_id",
                "items",
                "total_cents",
                "status",
                "created_at",
                "updated_at",
            ],
            vec![
                self.order_id.as_str().into(),
                self.trace_id.to_string().into(),
                "c".into(),
                "[]".into(),
                tether::ports::SqlArg::Int(1),
                self.status.map_or(tether::ports::SqlArg::Null, Into::into),
                tether::ports::SqlArg::Int(0),
                tether::ports::SqlArg::Int(0),
            ],
        )
        .await
        .map_err(failed)?;
        if !self.read_back {
            return Ok(tether::ports::AttemptDone::default());
        }
        let seen = tx
            .fetch_optional(
                "SELECT trace_id FROM orders WHERE order_id = $1",
                &[self.order_id.as_str().into()],
            )
            .await
            .map_err(failed)?;
        if seen != Some(vec![json!(self.trace_id.to_string())]) {
            return Err(tether::domain::CommandError::technical(format!(
                "the order just inserted reads back as {seen:?}"
            )));
        }
        Ok(tether::ports::AttemptDone::default())
    }
}

async fn inserted_rows_are_seen_and_a_refused_one_fails_its_attempt_alone(backend: Backend) {
    let (store, db) = store(backend).await;
    for _ in 0..41 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let first = store.claim(1, 10_000).await.unwrap().remove(0);
    let work = Arc::new(InsertOrder {
        trace_id: first.trace_id,
        order_id: "taken".into(),
        status: Some("CREATED"),
        read_back: true,
    });
    assert!(matches!(
        store.commit_attempt(&first, work).await.unwrap(),
        tether::ports::AttemptOutcome::Committed
    ));
    // 40 attempts at once, so they share commits: one reuses an existing order ID, one has
    // no status, two others insert the same new one; every other one reads its order back.
    let claims = store.claim(40, 10_000).await.unwrap();
    assert_eq!(claims.len(), 40);
    let order_id = |i: usize| match i {
        7 => "taken".to_owned(),
        8 | 9 => "twin".to_owned(),
        _ => format!("ord-{i}"),
    };
    let outcomes = futures_util::future::join_all(claims.iter().enumerate().map(|(i, claim)| {
        let store = store.clone();
        let work = Arc::new(InsertOrder {
            trace_id: claim.trace_id,
            order_id: order_id(i),
            status: (i != 10).then_some("CREATED"),
            read_back: i % 2 == 0,
        });
        async move { store.commit_attempt(claim, work).await.unwrap() }
    }))
    .await;
    let mut twins_committed = 0;
    for (i, (claim, outcome)) in claims.iter().zip(outcomes).enumerate() {
        let (orders, state) = orders_and_state(&store, &db, claim.trace_id).await;
        let committed = matches!(outcome, tether::ports::AttemptOutcome::Committed);
        let failed = matches!(outcome, tether::ports::AttemptOutcome::Failed(_));
        match i {
            7 | 10 => assert_eq!((failed, orders, state.as_str()), (true, 0, "RUNNING")),
            8 | 9 if !committed => {
                assert_eq!((failed, orders, state.as_str()), (true, 0, "RUNNING"))
            }
            _ => {
                assert!(committed, "attempt {i}: {outcome:?}");
                assert_eq!((orders, state.as_str()), (1, "SUCCEEDED"));
                twins_committed += usize::from(i == 8 || i == 9);
            }
        }
    }
    assert_eq!(
        twins_committed, 1,
        "exactly one of two equal order IDs lands"
    );
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 38);
    // A failed attempt left nothing behind, its dedup mark included: run again under the
    // same lease, it commits.
    for i in [7, 10] {
        let work = Arc::new(InsertOrder {
            trace_id: claims[i].trace_id,
            order_id: format!("again-{i}"),
            status: Some("CREATED"),
            read_back: true,
        });
        let outcome = store.commit_attempt(&claims[i], work).await.unwrap();
        assert!(
            matches!(outcome, tether::ports::AttemptOutcome::Committed),
            "attempt {i} again: {outcome:?}"
        );
    }
}

async fn an_expired_lease_commits_nothing_and_a_renewed_one_is_not_taken_over(backend: Backend) {
    let (store, _db) = store(backend).await;
    store.accept(command("alice", None)).await.unwrap();
    // A lease that is already over when it is granted: the attempt must not commit, even
    // though no sweeper has taken it back yet.
    let claim = store.claim(1, -1).await.unwrap().remove(0);
    let work = Arc::new(WriteOrder {
        trace_id: claim.trace_id,
        fail: false,
    });
    assert!(matches!(
        store.commit_attempt(&claim, work).await.unwrap(),
        tether::ports::AttemptOutcome::Fenced
    ));
    // The sweeper saw it expired, but a heartbeat renews it before the takeover lands.
    assert_eq!(store.expired_leases(10).await.unwrap().len(), 1);
    assert!(store.heartbeat(&claim, 10_000).await.unwrap());
    assert!(
        !store.record_failure(&claim, takeover()).await.unwrap(),
        "a live lease was taken over"
    );
    let work = Arc::new(WriteOrder {
        trace_id: claim.trace_id,
        fail: false,
    });
    assert!(matches!(
        store.commit_attempt(&claim, work).await.unwrap(),
        tether::ports::AttemptOutcome::Committed
    ));
}

async fn idempotency_keys_within_one_batch_name_one_trace(backend: Backend) {
    let (store, db) = store(backend).await;
    // Concurrent accepts share group commits, so some of these land in the same batch.
    let results = futures_util::future::join_all((0..50).map(|i| {
        let store = store.clone();
        async move {
            let mut cmd = command("alice", Some("same-key"));
            if i == 49 {
                cmd.payload = json!({ "customerId": "someone else" });
            }
            store.accept(cmd).await
        }
    }))
    .await;
    let firsts: Vec<_> = results[..49].iter().map(|r| r.as_ref().unwrap()).collect();
    assert_eq!(firsts.iter().filter(|a| a.created).count(), 1);
    assert!(firsts.iter().all(|a| a.trace_id == firsts[0].trace_id));
    assert!(matches!(
        &results[49],
        Err(StoreError::IdempotencyConflict(t)) if *t == firsts[0].trace_id
    ));
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM commands WHERE idempotency_key = $1",
            "same-key"
        )
        .await,
        1
    );
}

async fn concurrent_claimers_never_share_a_command(backend: Backend) {
    let (store, _db) = store(backend).await;
    for _ in 0..200 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let batches = futures_util::future::join_all((0..8).map(|_| {
        let store = store.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let claims = store.claim(7, 10_000).await.unwrap();
                if claims.is_empty() {
                    return mine;
                }
                mine.extend(claims.into_iter().map(|c| c.trace_id));
            }
        }
    }))
    .await;
    let all: Vec<TraceId> = batches.into_iter().flatten().collect();
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every command claimed");
    assert_eq!(distinct.len(), 200, "no command claimed twice");
}

/// Succeeds with `n` outbox rows, of types `E0`, `E1`, …
struct AnnounceMany {
    trace_id: TraceId,
    n: usize,
}

#[async_trait::async_trait]
impl tether::ports::AttemptWork for AnnounceMany {
    async fn run(
        &self,
        _tx: &mut dyn tether::ports::Tx,
    ) -> Result<tether::ports::AttemptDone, tether::domain::CommandError> {
        Ok(tether::ports::AttemptDone {
            result: json!({}),
            outbox: (0..self.n)
                .map(|i| tether::domain::OutboxEvent {
                    event_id: uuid::Uuid::new_v4(),
                    trace_id: self.trace_id,
                    event_type: format!("E{i}"),
                    payload: json!({}),
                })
                .collect(),
            events: Vec::new(),
        })
    }
}

/// Each published row gets one EventEmitter event on its trace, numbered after the trace's
/// last event in the order the rows were published (whatever order they were written in and
/// however the traces interleave in a batch); a row reported sent again gets none. A trace
/// with one row gets its report right after its last event too (PostgreSQL numbers that one
/// when the attempt commits).
async fn published_rows_are_reported_on_their_trace_in_publishing_order(backend: Backend) {
    let (store, _db) = store(backend).await;
    for _ in 0..3 {
        store.accept(command("alice", None)).await.unwrap();
    }
    let claims = store.claim(3, 10_000).await.unwrap();
    assert_eq!(claims.len(), 3);
    for (i, claim) in claims.iter().enumerate() {
        let work = Arc::new(AnnounceMany {
            trace_id: claim.trace_id,
            n: if i < 2 { 3 } else { 1 },
        });
        assert!(matches!(
            store.commit_attempt(claim, work).await.unwrap(),
            tether::ports::AttemptOutcome::Committed
        ));
    }
    let (a, b, c) = (claims[0].trace_id, claims[1].trace_id, claims[2].trace_id);
    let rows = store.unsent_outbox(100).await.unwrap();
    assert_eq!(rows.len(), 7);
    let row = |trace: TraceId, ty: &str| {
        rows.iter()
            .find(|r| r.trace_id == trace && r.event_type == ty)
            .unwrap()
            .clone()
    };
    let before = |trace| {
        let store = store.clone();
        async move { store.trace_events(trace, 0, 100).await.unwrap().len() as i64 }
    };
    let (a_last, b_last, c_last) = (before(a).await, before(b).await, before(c).await);
    store
        .mark_sent(&[
            row(a, "E2"),
            row(b, "E0"),
            row(c, "E0"),
            row(a, "E0"),
            row(b, "E1"),
            row(a, "E1"),
        ])
        .await
        .unwrap();
    store
        .mark_sent(&[row(b, "E2"), row(a, "E0"), row(c, "E0")])
        .await
        .unwrap();
    for (trace, last, order) in [
        (a, a_last, &["E2", "E0", "E1"][..]),
        (b, b_last, &["E0", "E1", "E2"]),
        (c, c_last, &["E0"]),
    ] {
        let events = store.trace_events(trace, 0, 100).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=last + order.len() as i64).collect::<Vec<_>>(),
            "{trace}: one event per row"
        );
        let reported: Vec<(Component, String, &str)> = events[last as usize..]
            .iter()
            .map(|e| (e.component, e.message.clone().unwrap(), e.state.as_str()))
            .collect();
        let expected: Vec<(Component, String, &str)> = order
            .iter()
            .map(|ty| {
                let id = row(trace, ty).event_id;
                (
                    Component::EventEmitter,
                    format!("published {ty} {id}"),
                    "SUCCEEDED",
                )
            })
            .collect();
        assert_eq!(reported, expected, "{trace}");
    }
}

/// PostgreSQL only (the mechanism differs): emitters in different processes take disjoint
/// outbox rows, and an emitter that failed to publish takes its own rows again at once.
#[tokio::test]
async fn postgres_emitters_of_different_processes_take_disjoint_outbox_rows() {
    let db = TestDb::new(Backend::Postgres, "outbox").await;
    let hub = || tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let (a, b) = (db.store(hub(), 100).await, db.store(hub(), 100).await);
    for i in 0..10 {
        let trace = a.accept(command("alice", None)).await.unwrap().trace_id;
        db.rows(
            "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at)
             VALUES (gen_random_uuid()::text, $1, 'OrderCreated', '{}', $2::bigint)",
            &[&trace.to_string(), &i.to_string()],
        )
        .await;
    }
    let first = a.unsent_outbox(6).await.unwrap();
    let second = b.unsent_outbox(100).await.unwrap();
    assert_eq!((first.len(), second.len()), (6, 4), "disjoint, all taken");
    let ids = |v: &[tether::domain::OutboxEvent]| -> std::collections::HashSet<_> {
        v.iter().map(|e| e.event_id).collect()
    };
    assert!(ids(&first).is_disjoint(&ids(&second)));
    // Each, retrying, gets its own rows back and none of the other's.
    assert_eq!(ids(&b.unsent_outbox(100).await.unwrap()), ids(&second));
    assert_eq!(ids(&a.unsent_outbox(100).await.unwrap()), ids(&first));
    // Once sent, no one takes them again.
    a.mark_sent(&first).await.unwrap();
    assert!(a.unsent_outbox(100).await.unwrap().is_empty());
}

/// Accepts, claims and commits `n` commands on `store`, each with one outbox row.
async fn announced(store: &Arc<dyn Store>, n: usize) {
    for _ in 0..n {
        store.accept(command("alice", None)).await.unwrap();
    }
    for claim in store.claim(n, 10_000).await.unwrap() {
        let work = Arc::new(AnnounceMany {
            trace_id: claim.trace_id,
            n: 1,
        });
        let outcome = store.commit_attempt(&claim, work).await.unwrap();
        assert!(matches!(outcome, tether::ports::AttemptOutcome::Committed));
    }
}

/// PostgreSQL only: the outbox rows a process's attempts commit are taken by that process
/// from the start and handed to its own emitter, each once; another process gets them only
/// once that claim has run out (the process died before publishing them).
#[tokio::test]
async fn postgres_outbox_rows_go_to_their_own_process_first_and_to_others_after_its_claim() {
    let db = TestDb::new(Backend::Postgres, "relay").await;
    let hub = || tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let (a, b) = (db.store(hub(), 100).await, db.store(hub(), 100).await);
    announced(&a, 4).await;
    let unsent = "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND claimed_by IS NOT NULL";
    assert_eq!(db.count(unsent).await, 4, "taken by their writer at once");
    assert!(b.unsent_outbox(100).await.unwrap().is_empty());
    let ids = |v: &[tether::domain::OutboxEvent]| -> std::collections::HashSet<_> {
        v.iter().map(|e| e.event_id).collect()
    };
    // Handed over once each: the second call gets the other two, not the first two again.
    let first = a.unsent_outbox(2).await.unwrap();
    let rest = a.unsent_outbox(100).await.unwrap();
    assert_eq!((first.len(), rest.len()), (2, 2));
    assert!(ids(&first).is_disjoint(&ids(&rest)));
    // Not published (the emitter failed): they are still its own to take again.
    let again = a.unsent_outbox(100).await.unwrap();
    assert_eq!(ids(&again), &ids(&first) | &ids(&rest));
    a.mark_sent(&again).await.unwrap();
    assert!(a.unsent_outbox(100).await.unwrap().is_empty());

    // While its own rows keep coming, `a` still takes rows only the table has (here one no
    // one holds) within a few calls, not after its own.
    announced(&a, 8).await;
    db.rows(
        "INSERT INTO outbox (event_id, trace_id, event_type, payload, created_at)
         SELECT gen_random_uuid()::text, trace_id, 'OrderFailed', '{}', 0 FROM commands LIMIT 1",
        &[],
    )
    .await;
    let mut batches = Vec::new();
    for _ in 0..4 {
        batches.push(a.unsent_outbox(1).await.unwrap());
    }
    let types: Vec<&str> = batches
        .iter()
        .flatten()
        .map(|e| e.event_type.as_str())
        .collect();
    assert!(types.contains(&"OrderFailed"), "{types:?}");
    let mut rest = a.unsent_outbox(100).await.unwrap();
    rest.extend(batches.into_iter().flatten());
    assert_eq!(rest.len(), 9, "each row once");
    a.mark_sent(&rest).await.unwrap();

    // A graceful shutdown leaves the rows `a` held to `b` at once.
    announced(&a, 2).await;
    assert!(b.unsent_outbox(100).await.unwrap().is_empty());
    assert_eq!(a.release_outbox().await.unwrap(), 2);
    let released = b.unsent_outbox(100).await.unwrap();
    assert_eq!(released.len(), 2);
    b.mark_sent(&released).await.unwrap();

    // `a` dies holding two new rows: `b` takes them once the claim has run out.
    announced(&a, 2).await;
    drop(a);
    assert!(b.unsent_outbox(100).await.unwrap().is_empty());
    db.rows(
        "UPDATE outbox SET claimed_until = 0 WHERE sent_at IS NULL",
        &[],
    )
    .await;
    assert_eq!(b.unsent_outbox(100).await.unwrap().len(), 2);
}

/// The partition holding each of `traces`' events (PostgreSQL's `trace_events` is partitioned
/// by week of trace creation; SQLite's is one table).
async fn partitions_of(db: &TestDb, traces: &[TraceId]) -> Vec<String> {
    let mut names = Vec::new();
    for trace in traces {
        let rows = db
            .rows(
                "SELECT DISTINCT tableoid::regclass::text FROM trace_events WHERE trace_id = $1",
                &[&trace.to_string()],
            )
            .await;
        assert_eq!(
            rows.len(),
            1,
            "trace {trace}: its events in exactly one partition"
        );
        names.push(rows[0][0].as_str().unwrap().to_owned());
    }
    names
}

/// Writes a trace's first two events straight into `trace_events` (seq 1 and 2).
async fn two_events(db: &TestDb, trace: TraceId) {
    db.rows(
        "INSERT INTO trace_events (trace_id, seq, component, status, state, at)
         VALUES ($1, 1, 'CommandApi', 'ACCEPTED', 'PENDING', 0),
                ($1, 2, 'TransactionListener', 'ACCEPTED', 'RUNNING', 0)",
        &[&trace.to_string()],
    )
    .await;
}

/// A UUID v7 text of millisecond `ms`, as `TraceId::new` makes them at that time.
fn trace_at(ms: i64) -> TraceId {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (ms / 1000) as u64,
        (ms % 1000) as u32 * 1_000_000,
    );
    TraceId::from(uuid::Uuid::new_v7(ts))
}

/// A UUID v4 (AppSync's util.autoId() makes those) whose text sorts after every v7 ID of this
/// century, as all but about 1.6 % of them do.
fn unordered_v4() -> TraceId {
    loop {
        let id = uuid::Uuid::new_v4();
        if id.to_string().as_str() >= "04" {
            return TraceId::from(id);
        }
    }
}

/// The partitions a read of one trace's events searches (from its plan, not its rows).
async fn partitions_searched(db: &TestDb, trace: TraceId) -> Vec<String> {
    let plan = db
        .rows(
            "EXPLAIN (COSTS OFF) SELECT * FROM trace_events WHERE trace_id = $1 AND seq > 0",
            &[&trace.to_string()],
        )
        .await;
    plan.iter()
        .filter_map(|line| {
            let line = line[0].as_str()?;
            let at = line.find(" on trace_events_")?;
            Some(line[at + 4..].split_whitespace().next()?.to_owned())
        })
        .collect()
}

/// The partition name of the week holding `ms` (weeks counted from the Unix epoch).
fn week_partition(ms: i64) -> String {
    const WEEK: i64 = 7 * 86_400_000;
    let start = chrono::DateTime::from_timestamp_millis(ms / WEEK * WEEK).unwrap();
    format!("trace_events_{}", start.format("%Y%m%d"))
}

/// PostgreSQL only (SQLite has no partitions): each trace's events go to the partition of the
/// week it was accepted in (most IDs that are not UUID v7 to a partition of their own), and a
/// read of a trace searches that partition only; the week's and the next week's partitions are
/// made when the store opens, older weeks' by `tether_trace_partitions`, once however many
/// processes ask at once; an ID outside every partition goes to the default one and is read
/// like any other.
#[tokio::test]
async fn postgres_trace_events_go_to_the_partition_of_their_week() {
    const WEEK: i64 = 7 * 86_400_000;
    let (store, db) = store(Backend::Postgres).await;
    let now = now_millis();
    let made = db
        .rows(
            "SELECT relname::text FROM pg_class WHERE relname LIKE 'trace\\_events\\_2%' AND relkind = 'r' ORDER BY 1",
            &[],
        )
        .await;
    let made: Vec<_> = made.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(made, [week_partition(now), week_partition(now + WEEK)]);

    let new = store.accept(command("alice", None)).await.unwrap().trace_id;
    assert_eq!(partitions_of(&db, &[new]).await, [week_partition(now)]);
    assert_eq!(partitions_searched(&db, new).await, [week_partition(now)]);

    // Eight processes making last month's partitions at once: made once, no error.
    let month_ago = now - 30 * 86_400_000;
    let ms = month_ago.to_string();
    let args: [&str; 1] = [&ms];
    let calls = (0..8).map(|_| db.rows("SELECT tether_trace_partitions($1::bigint)", &args));
    let made: i64 = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(|rows| rows[0][0].as_i64().unwrap())
        .sum();
    assert_eq!(
        made, 2,
        "that week's partition and the next one's, made once"
    );

    // A trace of last month, one ten years ahead (no partition: the default one), and one whose
    // ID is not v7.
    let (old, far) = (trace_at(month_ago), trace_at(now + 520 * WEEK));
    let v4 = unordered_v4();
    for trace in [old, far, v4] {
        two_events(&db, trace).await;
    }
    assert_eq!(
        partitions_of(&db, &[old, far, v4]).await,
        [
            week_partition(month_ago),
            "trace_events_default".to_owned(),
            "trace_events_unordered".to_owned()
        ]
    );
    // The trace ten years ahead does not stop its week's partition being made (it is then
    // left out, its events stay in the default partition), nor the week after.
    let far_ms = (now + 520 * WEEK).to_string();
    let args: [&str; 1] = [&far_ms];
    let made = db
        .rows("SELECT tether_trace_partitions($1::bigint)", &args)
        .await;
    assert_eq!(made[0][0].as_i64(), Some(1), "the week after only");
    for trace in [old, far, v4] {
        let events = store.trace_events(trace, 0, 10).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            partitions_searched(&db, trace).await,
            partitions_of(&db, &[trace]).await
        );
    }
    let events = store.trace_events(new, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1, "the accepted event of the new trace");
}

/// PostgreSQL only: events written before `trace_events` was partitioned by week (migration 4)
/// and before it was partitioned by trace ID (migration 5) stay readable, each in its week's
/// partition afterwards; new ones go there too, and the next week has its partition.
#[tokio::test]
async fn postgres_events_written_before_each_partitioning_stay_readable() {
    use sqlx::Connection;
    const WEEK: i64 = 7 * 86_400_000;
    let db = TestDb::new(Backend::Postgres, "legacy").await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let up_to = async |conn: &mut sqlx::PgConnection, version| {
        tether::store::migrate::postgres_up_to(conn, version)
            .await
            .unwrap()
    };
    assert_eq!(up_to(&mut conn, 3).await, 3);
    // A trace of now, one whose ID is not v7, and one ten years ahead (a clock that ran ahead).
    let old = TraceId::new();
    let v4 = unordered_v4();
    let ahead = trace_at(now_millis() + 520 * WEEK);
    for trace in [v4, ahead] {
        two_events(&db, trace).await;
    }
    db.rows(
        "INSERT INTO commands (trace_id, command_type, payload, owner, state, last_seq, created_at, updated_at)
         VALUES ($1, 'createOrder', '{}', 'alice', 'PENDING', 2, 0, 0)",
        &[&old.to_string()],
    )
    .await;
    two_events(&db, old).await;
    // Partitioned by week: the events so far stay in the old table (the legacy partition, of
    // every week up to this one) but the one ahead; next week's events go to its partition.
    assert_eq!(up_to(&mut conn, 4).await, 1);
    let weekly = trace_at(now_millis() + WEEK);
    two_events(&db, weekly).await;
    assert_eq!(
        partitions_of(&db, &[old, v4, ahead, weekly]).await,
        [
            "trace_events_legacy",
            "trace_events_legacy",
            "trace_events_default",
            &week_partition(now_millis() + WEEK)
        ]
    );
    conn.close().await.unwrap();

    // Partitioned by trace ID (the store migrates to the last version).
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let store = db.store(hub, 100).await;
    let now = now_millis();
    for trace in [old, v4, ahead, weekly] {
        let events = store.trace_events(trace, 0, 10).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            partitions_searched(&db, trace).await,
            partitions_of(&db, &[trace]).await
        );
    }
    assert_eq!(store.trace(old).await.unwrap().unwrap().owner, "alice");
    let new = store.accept(command("alice", None)).await.unwrap().trace_id;
    assert_eq!(
        partitions_of(&db, &[old, v4, ahead, weekly, new]).await,
        [
            week_partition(now),
            "trace_events_unordered".to_owned(),
            week_partition(now + 520 * WEEK),
            week_partition(now + WEEK),
            week_partition(now),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname LIKE '%by\\_week'")
            .await,
        0,
        "the old partitions are gone"
    );
    let next = trace_at(now + WEEK + 1);
    two_events(&db, next).await;
    assert_eq!(
        partitions_of(&db, &[next]).await,
        [week_partition(now + WEEK)]
    );
}
