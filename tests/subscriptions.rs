//! Subscriptions over real WebSockets: both protocols, AppSync's `@aws_subscribe` semantics,
//! "history, then live" merged exactly by sequence number (G5), isolation (G7) and the
//! per-connection limits (G8).

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

const NEW: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";

fn is_terminal_success(e: &Value) -> bool {
    e["component"] == "TransactionManager" && e["status"] == "SUCCESS"
}

async fn history_then_live_merges_without_gap_or_duplicate(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    // Attempt 1 is slow and attempt 1 and 2 fail: the trace keeps producing events while the
    // client subscribes and reads the history.
    let trace_id = app
        .create_order(
            ALICE,
            faulty_order(json!({ "delayMs": 200, "failAttempts": 2 })),
        )
        .await;
    let mut ws = WsClient::init(app.addr, NEW, ALICE).await;
    ws.subscribe("1", &trace_id).await;
    app.wait_subscribers(1).await;
    let history = app
        .gql(
            ALICE,
            "query($t: ID!) { traceEvents(traceId: $t) { seq component status } }",
            json!({ "t": trace_id }),
        )
        .await;
    let history = history["data"]["traceEvents"].as_array().unwrap().clone();
    assert!(!history.is_empty());

    let mut live = Vec::new();
    loop {
        let frame = ws.next().await.expect("a frame");
        assert_eq!(frame["type"], "next", "{frame}");
        assert_eq!(frame["id"], "1");
        let event = frame["payload"]["data"]["onTraceEvent"].clone();
        assert_eq!(event["traceId"], trace_id.as_str());
        live.push(event.clone());
        if is_terminal_success(&event) {
            break;
        }
    }
    let live_seqs: Vec<i64> = live.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        live_seqs.windows(2).all(|w| w[0] < w[1]),
        "live events out of order: {live_seqs:?}"
    );
    let mut merged = BTreeMap::new();
    for e in history.iter().chain(live.iter()) {
        let seq = e["seq"].as_i64().unwrap();
        if let Some(previous) = merged.insert(seq, e["component"].clone()) {
            assert_eq!(
                previous, e["component"],
                "seq {seq} means two different events"
            );
        }
    }
    let seqs: Vec<i64> = merged.keys().copied().collect();
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "a gap between history and live"
    );
    let stored = app.trace(ALICE, &trace_id).await;
    let stored_success = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| is_terminal_success(e))
        .unwrap()["seq"]
        .clone();
    assert_eq!(json!(last), stored_success);
    app.stop().await;
}

#[tokio::test]
async fn legacy_protocol_start_data_stop_complete() {
    let app = TestApp::spawn().await;
    let trace_id = app
        .create_order(ALICE, faulty_order(json!({ "delayMs": 300 })))
        .await;
    let mut ws = WsClient::init(app.addr, LEGACY, ALICE).await;
    ws.send(json!({ "id": "a", "type": "start", "payload": { "query": SUBSCRIBE, "variables": { "t": trace_id } } })).await;
    let data = ws.next().await.unwrap();
    assert_eq!(
        (data["type"].as_str(), data["id"].as_str()),
        (Some("data"), Some("a")),
        "{data}"
    );
    assert_eq!(
        data["payload"]["data"]["onTraceEvent"]["traceId"],
        trace_id.as_str()
    );
    ws.send(json!({ "id": "a", "type": "stop" })).await;
    loop {
        let frame = ws.next().await.unwrap();
        if frame["type"] == "complete" {
            assert_eq!(frame["id"], "a");
            break;
        }
        assert_eq!(frame["type"], "data", "{frame}");
    }
    app.wait_subscribers(0).await;
    app.stop().await;
}

#[tokio::test]
async fn payload_is_the_publishers_selection_projected_for_the_subscriber() {
    let app = TestApp::spawn().await;
    let trace_id = app.create_order(ALICE, order("c-1")).await;
    app.wait_published(1).await; // the trace's last event (EventEmitter) is in, nothing is coming
    let mut ws = WsClient::init(app.addr, NEW, ALICE).await;
    let wants = "subscription($t: ID!) { onTraceEvent(traceId: $t) { traceId seq message } }";
    ws.send(json!({ "id": "s", "type": "subscribe", "payload": { "query": wants, "variables": { "t": trace_id } } })).await;
    let wants_component = "subscription($t: ID!) { onTraceEvent(traceId: $t) { seq component } }";
    ws.send(json!({ "id": "c", "type": "subscribe", "payload": { "query": wants_component, "variables": { "t": trace_id } } }))
        .await;
    app.wait_subscribers(2).await;
    // The publisher selects traceId, seq and message only.
    let publish =
        "mutation($e: TraceEventInput!) { publishTraceEvent(input: $e) { traceId seq message } }";
    let event = json!({ "traceId": trace_id, "seq": 100, "component": "Worker", "status": "SUCCESS",
                        "timestamp": "2026-01-01T00:00:00.000Z", "message": "hello" });
    let body = app.gql_iam(publish, json!({ "e": event })).await;
    assert_eq!(body["data"]["publishTraceEvent"]["message"], "hello");
    let mut got = BTreeMap::new();
    // The two subscriptions answer in any order; "c" completes after its error.
    while got.len() < 2 {
        let frame = ws.next().await.unwrap();
        let id = frame["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{frame}"))
            .to_owned();
        if frame["type"] == "next" {
            got.insert(id, frame["payload"].clone());
        }
    }
    assert_eq!(
        got["s"]["data"]["onTraceEvent"],
        json!({ "traceId": trace_id, "seq": 100, "message": "hello" })
    );
    // `component` is non-null but the publisher did not select it: an error, as on AppSync.
    let error = got["c"]["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {}", got["c"]));
    assert!(
        error.contains("Cannot return null for non-nullable type: 'component'"),
        "{error}"
    );
    // A publish that omits the filtered field reaches no one.
    let body = app
        .gql_iam(
            "mutation($e: TraceEventInput!) { publishTraceEvent(input: $e) { seq } }",
            json!({ "e": event }),
        )
        .await;
    assert_eq!(body["data"]["publishTraceEvent"]["seq"], 100);
    let delivered_before = app.health().await["delivered"].clone();
    assert_eq!(delivered_before, 2);
    app.stop().await;
}

#[tokio::test]
async fn subscribers_see_only_their_own_traces() {
    let app = TestApp::spawn().await;
    let alices = app.create_order(ALICE, order("c-1")).await;
    let mut ws = WsClient::init(app.addr, NEW, BOB).await;
    ws.subscribe("1", &alices).await;
    // The same answer as for a trace that does not exist: an `error` frame, which ends the
    // subscription (graphql-transport-ws has no `complete` after it).
    let missing = uuid::Uuid::now_v7().to_string();
    ws.subscribe("2", &missing).await;
    let mut answers = BTreeMap::new();
    for _ in 0..2 {
        let frame = ws.next().await.unwrap();
        assert_eq!(frame["type"], "error", "{frame}");
        let id = frame["id"].as_str().unwrap().to_owned();
        let error = &frame["payload"][0];
        assert_eq!(error["extensions"]["errorType"], "NotFound", "{frame}");
        let message = error["message"]
            .as_str()
            .unwrap()
            .replace(&alices, "X")
            .replace(&missing, "X");
        answers.insert(id, message);
    }
    assert_eq!(answers["1"], answers["2"]);
    app.wait_subscribers(0).await;
    // No key at all: the connection is refused.
    let mut anonymous = WsClient::connect(app.addr, NEW).await;
    anonymous
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    let frame = anonymous.next().await.unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_u64()),
        (Some("__close"), Some(4403)),
        "{frame}"
    );
    app.stop().await;
}

#[tokio::test]
async fn per_connection_limits_hold() {
    let app = TestApp::spawn_with(|c| {
        c.max_subscriptions_per_connection = 2;
        c.connection_init_timeout_ms = 200;
    })
    .await;
    let trace_id = app.create_order(ALICE, order("c-1")).await;
    app.wait_published(1).await;
    let mut ws = WsClient::init(app.addr, NEW, ALICE).await;
    ws.subscribe("1", &trace_id).await;
    ws.subscribe("2", &trace_id).await;
    ws.subscribe("3", &trace_id).await;
    let frame = ws.next().await.unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["id"].as_str()),
        (Some("error"), Some("3")),
        "{frame}"
    );
    assert_eq!(
        frame["payload"][0]["extensions"]["errorType"],
        "MaxSubscriptionsReachedError"
    );
    app.wait_subscribers(2).await;
    // Completing one frees a slot.
    ws.send(json!({ "id": "1", "type": "complete" })).await;
    app.wait_subscribers(1).await;
    ws.subscribe("4", &trace_id).await;
    app.wait_subscribers(2).await;
    // A client that never sends connection_init is closed with 4408.
    let mut idle = WsClient::connect(app.addr, NEW).await;
    let frame = idle.next().await.unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_u64()),
        (Some("__close"), Some(4408)),
        "{frame}"
    );
    app.stop().await;
}

contract!(history_then_live_merges_without_gap_or_duplicate);
