//! The executor's guarantees, each broken on purpose: retries and dead letters (G6), business
//! errors, zombie attempts (G3), at-least-once side effects with stable IDs (G4), graceful
//! shutdown, and the outbox never publishing a rolled-back attempt.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use serde_json::{Value, json};
use tether::domain::OutboxEvent;
use tether::pipeline::{ExecutorConfig, Pipeline, Registry, RetryPolicy};
use tether::ports::{PublishError, Publisher, Store};

fn events(trace: &Value) -> &Vec<Value> {
    trace["events"].as_array().expect("events")
}

fn assert_seqs_strictly_increase(trace: &Value) {
    let seqs: Vec<i64> = events(trace)
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "sequence numbers must be 1..=n without gaps"
    );
}

async fn technical_errors_retry_and_failed_attempts_leave_no_trace_in_the_data(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut bus = app.bus.subscribe();
    let trace_id = app
        .create_order(ALICE, faulty_order(json!({ "failAttempts": 2 })))
        .await;
    let trace = app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    assert_eq!(trace["attempts"], 3);
    assert_seqs_strictly_increase(&trace);
    let retries: Vec<&Value> = events(&trace)
        .iter()
        .filter(|e| e["component"] == "ErrorHandler")
        .collect();
    assert_eq!(retries.len(), 2);
    assert!(
        retries[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("retry 1 of 3"),
        "{}",
        retries[0]
    );
    // The two failed attempts wrote an order and announced OrderCreated; both rolled back.
    assert_eq!(orders_of(&app.db, &trace_id).await, 1);
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM outbox WHERE trace_id = $1", &trace_id)
            .await,
        1
    );
    let published = tokio::time::timeout(Duration::from_secs(10), bus.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            published.event_type.as_str(),
            published.trace_id.to_string()
        ),
        ("OrderCreated", trace_id)
    );
    app.stop().await;
}

async fn exhausted_retries_become_one_faithful_dead_letter_that_can_be_replayed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut input = faulty_order(json!({ "failAttempts": 9 }));
    input["note"] = json!("keep me");
    let trace_id = app.create_order(ALICE, input).await;
    let trace = app.wait_state(ALICE, &trace_id, &["DEAD_LETTERED"]).await;
    assert_eq!(trace["attempts"], 4, "3 retries = 4 attempts");
    assert_seqs_strictly_increase(&trace);
    let verdict = events(&trace)
        .iter()
        .rev()
        .find(|e| e["component"] == "ErrorHandler")
        .unwrap();
    assert_eq!(verdict["status"], "ERROR");
    assert!(
        verdict["message"]
            .as_str()
            .unwrap()
            .contains("dead-lettered"),
        "{verdict}"
    );
    assert_eq!(orders_of(&app.db, &trace_id).await, 0);

    let q = "{ deadLetters { items { traceId commandType payload attempts series history lastError replayedAt } nextToken } }";
    let page = app.gql(ALICE, q, json!({})).await;
    let items = page["data"]["deadLetters"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let dl = &items[0];
    assert_eq!(
        (dl["traceId"].as_str(), dl["attempts"].as_i64()),
        (Some(trace_id.as_str()), Some(4))
    );
    let payload: Value = serde_json::from_str(dl["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["note"], "keep me");
    let history: Vec<Value> = serde_json::from_str(dl["history"].as_str().unwrap()).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(dl["lastError"].as_str().unwrap().contains("injected fault"));
    // Bob sees none of Alice's dead letters; the admin sees them all.
    let bobs = app.gql(BOB, q, json!({})).await;
    assert_eq!(bobs["data"]["deadLetters"]["items"], json!([]));
    let admins = app.gql(ADMIN, q, json!({})).await;
    assert_eq!(
        admins["data"]["deadLetters"]["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The dead letter also went out as an event.
    let types = app
        .db
        .rows(
            "SELECT event_type FROM outbox WHERE trace_id = $1",
            &[&trace_id],
        )
        .await;
    assert_eq!(types, [[json!("CommandDeadLettered")]]);

    // Bob cannot replay it; Alice can, once; the new series runs clean.
    let replay = "mutation($t: ID!) { replayDeadLetter(traceId: $t) { traceId status } }";
    let denied = app.gql(BOB, replay, json!({ "t": trace_id })).await;
    assert_eq!(denied["errors"][0]["errorType"], "NotFound");
    let replayed = app.gql(ALICE, replay, json!({ "t": trace_id })).await;
    assert_eq!(
        replayed["data"]["replayDeadLetter"]["traceId"],
        trace_id.as_str()
    );
    let again = app.gql(ALICE, replay, json!({ "t": trace_id })).await;
    assert_eq!(again["errors"][0]["errorType"], "NotDeadLettered");
    let trace = app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    assert_eq!(
        (trace["series"].as_i64(), trace["attempts"].as_i64()),
        (Some(2), Some(1))
    );
    assert_seqs_strictly_increase(&trace);
    assert_eq!(orders_of(&app.db, &trace_id).await, 1);
    let page = app.gql(ALICE, q, json!({})).await;
    assert!(page["data"]["deadLetters"]["items"][0]["replayedAt"].is_string());
    app.stop().await;
}

async fn business_errors_fail_at_once_without_retry(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let cancel = "mutation($i: CancelOrderInput!) { cancelOrder(input: $i) { traceId } }";
    let ship = "mutation($i: ShipOrderInput!) { shipOrder(input: $i) { traceId } }";
    let submit = |q: &'static str, order_id: String| {
        let app = &app;
        async move {
            let body = app
                .gql(ALICE, q, json!({ "i": { "orderId": order_id } }))
                .await;
            body["data"].as_object().unwrap().values().next().unwrap()["traceId"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let unknown = submit(cancel, "ord_missing".into()).await;
    let trace = app.wait_state(ALICE, &unknown, &["FAILED"]).await;
    assert_eq!(trace["attempts"], 1);
    assert!(
        trace["error"].as_str().unwrap().contains("ORDER_NOT_FOUND"),
        "{trace}"
    );
    assert!(
        events(&trace)
            .iter()
            .all(|e| e["message"] != "retry 1 of 3")
    );

    let created = app.create_order(ALICE, order("c-1")).await;
    let result = app.wait_state(ALICE, &created, &["SUCCEEDED"]).await["result"].clone();
    let order_id = serde_json::from_str::<Value>(result.as_str().unwrap()).unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_owned();
    let shipped = submit(ship, order_id.clone()).await;
    app.wait_state(ALICE, &shipped, &["SUCCEEDED"]).await;
    let late = submit(cancel, order_id.clone()).await;
    let trace = app.wait_state(ALICE, &late, &["FAILED"]).await;
    assert!(
        trace["error"]
            .as_str()
            .unwrap()
            .contains("ORDER_ALREADY_SHIPPED"),
        "{trace}"
    );
    assert_eq!(trace["attempts"], 1);
    app.stop().await;
}

async fn a_zombie_attempts_late_commit_is_fenced_off(backend: Backend) {
    // Attempt 1 freezes (heartbeat stopped) past its lease; the sweeper counts it, attempt 2
    // commits; then attempt 1 wakes and tries to commit.
    let app = TestApp::spawn_on_with(backend, |c| {
        c.lease_ms = 300;
        c.heartbeat_ms = 100;
    })
    .await;
    let trace_id = app
        .create_order(ALICE, faulty_order(json!({ "freezeMs": 1500 })))
        .await;
    let trace = app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    assert_eq!(trace["attempts"], 2);
    assert!(
        events(&trace)
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("lost its lease")),
        "{trace}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.health().await["executor"]["fenced"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the zombie never tried to commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(orders_of(&app.db, &trace_id).await, 1);
    let after = app.trace(ALICE, &trace_id).await;
    assert_eq!(after["state"], "SUCCEEDED");
    assert_eq!(
        events(&after)
            .iter()
            .filter(|e| e["component"] == "TransactionManager" && e["status"] == "SUCCESS")
            .count(),
        1
    );
    app.stop().await;
}

async fn graceful_shutdown_releases_in_flight_work_without_counting_it(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, |c| c.shutdown_grace_ms = 2_000).await;
    let trace_id = app
        .create_order(ALICE, faulty_order(json!({ "delayMs": 1_500 })))
        .await;
    app.wait_state(ALICE, &trace_id, &["RUNNING"]).await;
    let db = app.stop().await;
    let config = test_config(&db);
    let app = TestApp::start(db, config).await;
    let trace = app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    // The released attempt is not counted: attempt 1 ran again (delay included) and committed.
    assert_eq!(trace["attempts"], 1);
    assert!(
        events(&trace).iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("released at shutdown")),
        "{trace}"
    );
    assert_eq!(orders_of(&app.db, &trace_id).await, 1);
    app.stop().await;
}

/// A publisher whose acknowledgements get lost: it records the batch, then reports failure
/// for the first `lose` calls, so the emitter must publish the same rows again.
struct LossyPublisher {
    seen: Mutex<Vec<OutboxEvent>>,
    lose: Mutex<usize>,
}

#[async_trait]
impl Publisher for LossyPublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        self.seen.lock().unwrap().extend_from_slice(events);
        let mut lose = self.lose.lock().unwrap();
        if *lose > 0 {
            *lose -= 1;
            return Err(PublishError("acknowledgement lost".into()));
        }
        Ok(())
    }
}

async fn side_effects_are_published_at_least_once_with_stable_ids(backend: Backend) {
    // The library level: a store, a pipeline drained deterministically with run_once, and a
    // publisher that loses acknowledgements.
    let db = TestDb::new(backend, "outbox").await;
    let hub = tether::hub::Hub::new(HashMap::new(), 16, 240_000);
    let store: Arc<dyn Store> = db.store(hub, 100).await;
    let publisher = Arc::new(LossyPublisher {
        seen: Mutex::new(Vec::new()),
        lose: Mutex::new(2),
    });
    let pipeline = Pipeline::new(
        store.clone(),
        publisher.clone(),
        Arc::new(Registry::new(tether::commands::all())),
        ExecutorConfig {
            workers: 4,
            lease_ms: 5_000,
            heartbeat_ms: 1_000,
            sweep_ms: 100,
            poll_ms: 100,
            idle_poll_ms: 100,
            retry: RetryPolicy {
                base: Duration::ZERO,
                ..RetryPolicy::default()
            },
            fault_injection: true,
            idempotency_retention_ms: 86_400_000,
            outbox_retention_ms: None,
            max_payload_bytes: 256 * 1024,
            redispatch_ms: 600_000,
            default_owner: "sqs".into(),
        },
        Arc::new(tokio::sync::Notify::new()),
    );
    let alice = tether::domain::Principal {
        id: "alice".into(),
        admin: false,
    };
    let api = tether::pipeline::command_api::CommandApi::new(
        store.clone(),
        Arc::new(Registry::new(tether::commands::all())),
        Arc::new(tokio::sync::Notify::new()),
        1 << 20,
        true,
    );
    let mut traces = Vec::new();
    for i in 0..5 {
        let input = if i == 0 {
            faulty_order(json!({ "failAttempts": 1 }))
        } else {
            order("c")
        };
        traces.push(
            api.submit(&alice, "createOrder", input, None)
                .await
                .unwrap()
                .trace_id,
        );
    }
    // Attempts run; the first publishes lose their acks; the emitter retries until it sticks.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 20, "the outbox never drained");
        match pipeline.run_once().await {
            Ok(0) if store.unsent_outbox(10).await.unwrap().is_empty() => break,
            _ => continue,
        }
    }
    let rows: Vec<(String, String, Option<i64>)> = db
        .rows("SELECT event_id, payload, sent_at FROM outbox", &[])
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        rows.len(),
        5,
        "one OrderCreated per trace, none for the rolled-back attempt"
    );
    assert!(rows.iter().all(|(_, _, sent)| sent.is_some()));
    let seen = publisher.seen.lock().unwrap();
    let committed: HashMap<String, String> = rows
        .iter()
        .map(|(id, p, _)| (id.clone(), p.clone()))
        .collect();
    let published: HashSet<String> = seen.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        published,
        committed.keys().cloned().collect::<HashSet<_>>(),
        "every committed row, nothing else"
    );
    assert!(
        seen.len() > committed.len(),
        "the lost acknowledgements must have caused re-publishing"
    );
    for copy in seen.iter() {
        let payload: Value = serde_json::from_str(&committed[&copy.event_id.to_string()]).unwrap();
        assert_eq!(
            copy.payload, payload,
            "every copy of an event is the same event"
        );
    }
}

contract!(
    technical_errors_retry_and_failed_attempts_leave_no_trace_in_the_data,
    exhausted_retries_become_one_faithful_dead_letter_that_can_be_replayed,
    business_errors_fail_at_once_without_retry,
    a_zombie_attempts_late_commit_is_fenced_off,
    graceful_shutdown_releases_in_flight_work_without_counting_it,
    side_effects_are_published_at_least_once_with_stable_ids,
);
// The same guarantees with commands travelling through SQS (the library-level publisher test
// drains the table directly, so it has no SQS variant).
contract_sqs!(
    technical_errors_retry_and_failed_attempts_leave_no_trace_in_the_data,
    exhausted_retries_become_one_faithful_dead_letter_that_can_be_replayed,
    business_errors_fail_at_once_without_retry,
    a_zombie_attempts_late_commit_is_fenced_off,
    graceful_shutdown_releases_in_flight_work_without_counting_it,
);
