//! The Store contract, against the SQLite store (the PostgreSQL store joins these in its own
//! issue): group commit, idempotency retention, claims and fencing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use serde_json::json;
use tether::domain::{Component, NewCommand, NewTraceEvent, Status, TraceId, now_millis};
use tether::ports::{Failure, Next, Store, StoreError};
use tether::store::SqliteStore;

async fn store() -> (Arc<dyn Store>, std::path::PathBuf) {
    let dir = scratch_dir("store");
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let store = SqliteStore::open(&sqlite_url(&dir), hub, 10_000)
        .await
        .unwrap();
    (Arc::new(store), dir)
}

fn command(owner: &str, key: Option<&str>) -> NewCommand {
    NewCommand {
        trace_id: TraceId::new(),
        command_type: "createOrder".into(),
        payload: json!({ "customerId": "c" }),
        owner: owner.into(),
        idempotency_key: key.map(str::to_owned),
    }
}

#[tokio::test]
async fn concurrent_accepts_all_land_durably() {
    let (store, dir) = store().await;
    let accepted = futures_util::future::join_all((0..500).map(|_| {
        let store = store.clone();
        async move { store.accept(command("alice", None)).await.unwrap() }
    }))
    .await;
    let mut conn = db(&dir).await;
    let (commands, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM commands), (SELECT count(*) FROM trace_events WHERE component = 'CommandApi')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((commands, events), (500, 500));
    assert!(accepted.iter().all(|a| a.created));
}

#[tokio::test]
async fn a_full_accept_queue_throttles_instead_of_growing() {
    let dir = scratch_dir("store-full");
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&sqlite_url(&dir), hub, 1).await.unwrap());
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

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_retention() {
    let (store, _dir) = store().await;
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

#[tokio::test]
async fn a_lease_is_exclusive_and_a_stale_token_writes_nothing() {
    let (store, _dir) = store().await;
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

#[tokio::test]
async fn attempts_sharing_a_commit_roll_back_alone() {
    let (store, dir) = store().await;
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
    let mut conn = db(&dir).await;
    for (i, (claim, outcome)) in claims.iter().zip(outcomes).enumerate() {
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE trace_id = $1")
            .bind(claim.trace_id.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let state = store.trace(claim.trace_id).await.unwrap().unwrap().state;
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

#[tokio::test]
async fn an_expired_lease_commits_nothing_and_a_renewed_one_is_not_taken_over() {
    let (store, _dir) = store().await;
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
    let takeover = Failure {
        next: Next::Retry { at: 0 },
        lease_expired: true,
        error: "lost".into(),
        events: vec![NewTraceEvent::new(
            Component::ErrorHandler,
            Status::Error,
            "lost",
        )],
    };
    assert!(
        !store.record_failure(&claim, takeover).await.unwrap(),
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
