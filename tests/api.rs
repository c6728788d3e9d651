//! The accept path and the read side over real HTTP: validation, idempotency (G1), isolation
//! (G7) and bad input (G8).

mod common;

use common::*;
use serde_json::{Value, json};

fn error_type(body: &Value) -> &str {
    body["errors"][0]["errorType"]
        .as_str()
        .unwrap_or_else(|| panic!("no errorType in {body}"))
}

async fn create_order_answers_with_a_trace_id_that_runs_to_success(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut bus = app.bus.subscribe();
    let body = app
        .gql(ALICE, CREATE_ORDER, json!({ "i": order("c-1") }))
        .await;
    let accepted = &body["data"]["createOrder"];
    assert_eq!(accepted["status"], "ACCEPTED");
    assert!(accepted["acceptedAt"].as_str().unwrap().ends_with('Z'));
    let trace_id = accepted["traceId"].as_str().unwrap();

    let trace = app.wait_state(ALICE, trace_id, &["SUCCEEDED"]).await;
    assert_eq!(trace["commandType"], "createOrder");
    assert_eq!(trace["attempts"], 1);
    let result: Value = serde_json::from_str(trace["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["totalCents"], 900);

    let components: Vec<(&str, &str)> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["component"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        &components[..7],
        &[
            ("CommandApi", "ACCEPTED"),
            ("TransactionListener", "ACCEPTED"),
            ("TransactionManager", "ACCEPTED"),
            ("CommandBuilder", "SUCCESS"),
            ("Command", "SUCCESS"),
            ("EventCollector", "SUCCESS"),
            ("TransactionManager", "SUCCESS"),
        ]
    );
    // The side effect reaches the event bus, with the event ID the collector recorded.
    let published = tokio::time::timeout(std::time::Duration::from_secs(10), bus.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.event_type, "OrderCreated");
    assert_eq!(published.trace_id.to_string(), trace_id);
    let trace = app.wait_state(ALICE, trace_id, &["SUCCEEDED"]).await;
    let collected = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == "EventCollector")
        .unwrap();
    let detail: Value = serde_json::from_str(collected["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        detail["events"][0]["eventId"],
        published.event_id.to_string()
    );
    assert_eq!(orders_of(&app.db, trace_id).await, 1);
    app.stop().await;
}

async fn handler_validation_fails_fast_and_stores_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let bad = json!({ "customerId": "c-1", "items": [{ "sku": "tea", "quantity": 0, "unitPriceCents": 1 }] });
    let body = app.gql(ALICE, CREATE_ORDER, json!({ "i": bad })).await;
    assert_eq!(error_type(&body), "ValidationError");
    assert_eq!(
        body["errors"][0]["errorInfo"]["field"],
        "input.items[0].quantity"
    );
    assert!(body["data"].is_null());
    let empty = json!({ "customerId": "  ", "items": [] });
    let body = app.gql(ALICE, CREATE_ORDER, json!({ "i": empty })).await;
    assert_eq!(error_type(&body), "ValidationError");
    assert_eq!(app.db.count("SELECT count(*) FROM commands").await, 0);
    app.stop().await;
}

async fn aws_scalars_are_validated_on_input(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for (field, value) in [
        ("email", json!("not-an-email")),
        ("deliverBy", json!("2024-02-30")),
        ("metadata", json!("{not json")),
    ] {
        let mut input = order("c-1");
        input[field] = value;
        let body = app.gql(ALICE, CREATE_ORDER, json!({ "i": input })).await;
        assert_eq!(error_type(&body), "ValidationError", "{field}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{body}"
        );
    }
    // Valid values pass, and AWSJSON reaches the command parsed.
    let mut input = order("c-1");
    input["email"] = json!("a.b@example.com");
    input["deliverBy"] = json!("2024-02-29");
    input["metadata"] = json!("{\"gift\": true}");
    let trace_id = app.create_order(ALICE, input).await;
    app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    let rows = app
        .db
        .rows(
            "SELECT payload FROM commands WHERE trace_id = $1",
            &[&trace_id],
        )
        .await;
    let payload: Value = serde_json::from_str(rows[0][0].as_str().unwrap()).unwrap();
    assert_eq!(payload["metadata"], json!({ "gift": true }));
    app.stop().await;
}

async fn same_idempotency_key_same_caller_same_trace(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let vars = json!({ "i": order("c-1"), "k": "order-42" });
    let first =
        app.gql(ALICE, CREATE_ORDER, vars.clone()).await["data"]["createOrder"]["traceId"].clone();
    // Concurrent duplicates land in the same group commit and still get the first trace.
    let dupes =
        futures_util::future::join_all((0..8).map(|_| app.gql(ALICE, CREATE_ORDER, vars.clone())))
            .await;
    for d in dupes {
        assert_eq!(d["data"]["createOrder"]["traceId"], first);
    }
    // Another caller with the same key is another command.
    let bobs =
        app.gql(BOB, CREATE_ORDER, vars.clone()).await["data"]["createOrder"]["traceId"].clone();
    assert_ne!(bobs, first);
    // The same key for a different command is refused, not silently merged.
    let other = app
        .gql(
            ALICE,
            CREATE_ORDER,
            json!({ "i": order("c-2"), "k": "order-42" }),
        )
        .await;
    assert_eq!(error_type(&other), "IdempotencyConflict");
    assert_eq!(app.db.count("SELECT count(*) FROM commands").await, 2);
    app.stop().await;
}

async fn traces_are_private_to_their_owner(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let trace_id = app.create_order(ALICE, order("c-1")).await;
    app.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    // Bob gets exactly what he would get for a trace that does not exist.
    let missing = uuid::Uuid::now_v7().to_string();
    assert!(app.trace(BOB, &trace_id).await.is_null());
    assert!(app.trace(BOB, &missing).await.is_null());
    let q = "query($t: ID!) { traceEvents(traceId: $t) { seq } }";
    let theirs = app.gql(BOB, q, json!({ "t": trace_id })).await;
    let nothing = app.gql(BOB, q, json!({ "t": missing })).await;
    assert_eq!(error_type(&theirs), "NotFound");
    assert_eq!(
        theirs["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace(&trace_id, "X"),
        nothing["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace(&missing, "X")
    );
    // The admin reads everything.
    assert_eq!(app.trace(ADMIN, &trace_id).await["state"], "SUCCEEDED");
    // Bob cannot publish onto Alice's trace either.
    let publish = app
        .gql(BOB, "mutation($e: TraceEventInput!) { publishTraceEvent(input: $e) { seq } }", json!({ "e": {
            "traceId": trace_id, "seq": 99, "component": "X", "status": "SUCCESS", "timestamp": "2026-01-01T00:00:00Z" } }))
        .await;
    assert_eq!(error_type(&publish), "Unauthorized");
    assert_eq!(
        publish["errors"][0]["message"],
        "Not Authorized to access publishTraceEvent on type Mutation"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_no_internals() {
    let app = TestApp::spawn_with(|c| {
        c.max_body_bytes = 4096;
        c.max_batch = 3;
        c.max_payload_bytes = 1024;
    })
    .await;
    let url = app.url();
    let send = |body: String, key: Option<&'static str>| {
        let mut req = app
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    // No key, wrong key.
    let (s, b) = send("{}".into(), None).await;
    assert_eq!((s, error_type(&b)), (401, "UnauthorizedException"));
    let (s, _) = send("{}".into(), Some("wrong")).await;
    assert_eq!(s, 401);
    // Malformed JSON.
    let (s, b) = send("{\"query\": ".into(), Some(ALICE)).await;
    assert_eq!((s, error_type(&b)), (400, "MalformedHttpRequestException"));
    // Oversized body.
    let (s, b) = send(
        format!("{{\"query\": \"{}\"}}", "x".repeat(8000)),
        Some(ALICE),
    )
    .await;
    assert_eq!((s, error_type(&b)), (413, "PayloadTooLargeException"));
    // Oversized command payload (under the body limit).
    let mut big = order("c-1");
    big["note"] = json!("n".repeat(2000));
    let body = app.gql(ALICE, CREATE_ORDER, json!({ "i": big })).await;
    assert_eq!(error_type(&body), "ValidationError");
    // Batch abuse.
    let op = json!({ "query": "{ __typename }" });
    let (s, b) = send(json!([op, op, op, op]).to_string(), Some(ALICE)).await;
    assert_eq!((s, error_type(&b)), (400, "BadRequestException"));
    let (s, b) = send(json!([op, op]).to_string(), Some(ALICE)).await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 2);
    // Unknown field, unknown input field, syntax error.
    for q in [
        "{ nope }",
        "mutation { createOrder(input: {customerId: \"c\", items: [], bogus: 1}) { traceId } }",
        "{ trace(",
    ] {
        let (s, b) = app.post(Some(ALICE), json!({ "query": q })).await;
        assert_eq!((s, error_type(&b)), (200, "ValidationError"), "{q}: {b}");
    }
    // Fault injection is off unless the server asks for it.
    app.stop().await;
    let app = TestApp::spawn_with(|c| c.fault_injection = false).await;
    let body = app
        .gql(
            ALICE,
            CREATE_ORDER,
            json!({ "i": faulty_order(json!({ "failAttempts": 1 })) }),
        )
        .await;
    assert_eq!(error_type(&body), "ValidationError");
    app.stop().await;
}

/// The API keeps parsed operation texts (`--document-cache`); each request is still validated
/// with its own variables.
#[tokio::test]
async fn a_reused_operation_text_is_validated_with_each_requests_variables() {
    let app = TestApp::spawn().await;
    let first = app.create_order(ALICE, order("c-1")).await;
    let mut bad = order("c-1");
    bad["email"] = json!("not-an-email");
    let body = app.gql(ALICE, CREATE_ORDER, json!({ "i": bad })).await;
    assert_eq!(error_type(&body), "ValidationError", "{body}");
    let body = app.gql(ALICE, CREATE_ORDER, json!({})).await;
    assert_eq!(error_type(&body), "ValidationError", "{body}");
    let second = app.create_order(ALICE, order("c-2")).await;
    assert_ne!(first, second);
    assert_eq!(app.db.count("SELECT count(*) FROM commands").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn query_depth_and_complexity_are_limited() {
    let app = TestApp::spawn_with(|c| {
        c.max_depth = 2;
        c.max_complexity = 5;
    })
    .await;
    let trace_id = app.create_order(ALICE, order("c-1")).await;
    let shallow = "query($t: ID!) { trace(traceId: $t) { state } }";
    assert!(app.gql(ALICE, shallow, json!({ "t": trace_id })).await["errors"].is_null());
    let deep = "query($t: ID!) { trace(traceId: $t) { events { seq } } }";
    let body = app.gql(ALICE, deep, json!({ "t": trace_id })).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{body}"
    );
    let wide =
        "query($t: ID!) { trace(traceId: $t) { state attempts series error result createdAt } }";
    let body = app.gql(ALICE, wide, json!({ "t": trace_id })).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn graphiql_and_health_are_served() {
    let app = TestApp::spawn().await;
    let page = app
        .http
        .get(app.url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("GraphiQL"));
    let health = app.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["executor"]["committed"], 0);
    app.stop().await;
}

/// UUIDs and `acceptedAt` stamps replaced, so answers from two servers compare.
fn scrub(v: &Value) -> Value {
    fn text(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            let uuid = b.len() - i >= 36
                && b[i..i + 36].iter().enumerate().all(|(j, c)| match j {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                });
            if uuid {
                out.push_str("<uuid>");
                i += 36;
            } else {
                out.push(b[i] as char);
                i += 1;
            }
        }
        out
    }
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| match k.as_str() {
                    "acceptedAt" => (k.clone(), json!("<t>")),
                    _ => (k.clone(), scrub(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(scrub).collect()),
        Value::String(s) => Value::String(text(s)),
        other => other.clone(),
    }
}

/// The first trace ID in an answer, wherever the caller's aliases put it.
fn first_trace_id(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.values().find_map(first_trace_id),
        Value::String(s) if s.len() == 36 && s.as_bytes()[8] == b'-' => Some(s.clone()),
        _ => None,
    }
}

enum Caller {
    Alice,
    Iam,
}

async fn send(
    app: &TestApp,
    text: &str,
    op: Option<&str>,
    vars: &Value,
    caller: &Caller,
) -> (u16, Value) {
    let mut body = json!({ "query": text, "variables": vars });
    if let Some(op) = op {
        body["operationName"] = json!(op);
    }
    match caller {
        Caller::Alice => app.post(Some(ALICE), body).await,
        Caller::Iam => app.post_signed(body, common::auth::IAM_SECRET).await,
    }
}

/// Command mutations whose text already ran once are answered without the general executor
/// (`schema::direct`). Side by side with a server that has that path switched off, every
/// request gets the same answer and stores the same payload; the requests the direct path
/// cannot be sure of (GraphQL type errors, unknown or missing variables, a caller the field
/// refuses, another operation name) go the general way, and the others do not.
async fn direct_answers_equal_the_general_executors(backend: Backend) {
    let direct = TestApp::spawn_on(backend).await;
    let general = TestApp::spawn_on_with(backend, |c| c.direct_commands = false).await;
    const FULL: &str = "mutation($i: CreateOrderInput!, $k: String) { createOrder(input: $i, idempotencyKey: $k) { traceId status acceptedAt __typename } }";
    const NAMED: &str = "mutation Place { placed: createOrder(input: {customerId: \"c-9\", items: [{sku: \"tea\", quantity: 1, unitPriceCents: 5}], metadata: \"{\\\"a\\\": [1]}\"}) { id: traceId } }";
    const CANCEL: &str = "mutation($i: CancelOrderInput!) { cancelOrder(input: $i) { traceId } }";
    const ALIASED: &str =
        "mutation($i: CreateOrderInput!) { o: createOrder(input: $i) { id: traceId } }";
    let item = json!({ "sku": "tea", "quantity": 2, "unitPriceCents": 150 });
    let full = json!({
        "customerId": "c-1", "items": [item], "email": "a@example.com",
        "deliverBy": "2026-12-31", "note": "ring twice", "metadata": "{\"gift\": true, \"n\": [1, 2]}"
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = full.clone();
        f(&mut v);
        v
    };
    // (text, operation name, variables, caller, answered directly)
    let cases: Vec<(&str, Option<&str>, Value, Caller, bool)> = vec![
        (FULL, None, json!({ "i": full }), Caller::Alice, true),
        (
            ALIASED,
            None,
            json!({ "i": with(&|v| v["items"][0]["quantity"] = json!(0)) }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["items"] = item.clone()) }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["items"][0]["quantity"] = json!(0)) }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["faults"] = json!({ "failAttempts": 1 })) }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": full, "k": "k-1" }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": full, "k": "k-1" }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["note"] = json!("other")), "k": "k-1" }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": full, "k": null }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["note"] = Value::Null) }),
            Caller::Alice,
            true,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["items"][0]["quantity"] = json!("two")) }),
            Caller::Alice,
            false,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["items"][0]["quantity"] = json!(1u64 << 40)) }),
            Caller::Alice,
            false,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["colour"] = json!("red")) }),
            Caller::Alice,
            false,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["email"] = json!("not-an-email")) }),
            Caller::Alice,
            false,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["metadata"] = json!({ "gift": true })) }),
            Caller::Alice,
            false,
        ),
        (
            FULL,
            None,
            json!({ "i": with(&|v| v["customerId"] = Value::Null) }),
            Caller::Alice,
            false,
        ),
        (FULL, None, json!({ "k": "k-2" }), Caller::Alice, false),
        (
            FULL,
            None,
            json!({ "i": full, "z": 1 }),
            Caller::Alice,
            false,
        ),
        (FULL, None, json!({ "i": full }), Caller::Iam, false),
        (NAMED, Some("Place"), json!({}), Caller::Alice, true),
        (NAMED, None, json!({}), Caller::Alice, false),
        (NAMED, Some("Other"), json!({}), Caller::Alice, false),
        (
            CANCEL,
            None,
            json!({ "i": { "orderId": "o-1", "reason": "late" } }),
            Caller::Alice,
            true,
        ),
        (
            TRACE,
            None,
            json!({ "t": "01a24276-ff98-7730-b638-c1d736c300be" }),
            Caller::Alice,
            false,
        ),
    ];
    // Each text runs once the general way first: that is what teaches the direct path.
    for (text, op, vars) in [
        (FULL, None, json!({ "i": full })),
        (NAMED, Some("Place"), json!({})),
        (CANCEL, None, json!({ "i": { "orderId": "o-0" } })),
        (ALIASED, None, json!({ "i": full })),
    ] {
        for app in [&direct, &general] {
            let (status, body) = send(app, text, op, &vars, &Caller::Alice).await;
            assert_eq!(status, 200);
            assert!(body.get("errors").is_none(), "{body}");
        }
    }
    assert_eq!(direct.health().await["directAnswers"], 0);
    let mut answered = 0;
    let mut keyed = Vec::new();
    for (n, (text, op, vars, caller, expect_direct)) in cases.iter().enumerate() {
        let (s1, a) = send(&direct, text, *op, vars, caller).await;
        let (s2, b) = send(&general, text, *op, vars, caller).await;
        assert_eq!((s1, scrub(&a)), (s2, scrub(&b)), "case {n}: {vars}");
        answered += u64::from(*expect_direct);
        assert_eq!(
            direct.health().await["directAnswers"],
            answered,
            "case {n} should {}be answered directly: {a}",
            if *expect_direct { "" } else { "not " }
        );
        assert_eq!(general.health().await["directAnswers"], 0);
        if let (Some(ta), Some(tb)) = (first_trace_id(&a["data"]), first_trace_id(&b["data"])) {
            let sql = "SELECT payload, command_type FROM commands WHERE trace_id = $1";
            let (pa, pb) = (
                direct.db.rows(sql, &[&ta]).await,
                general.db.rows(sql, &[&tb]).await,
            );
            assert_eq!(pa.len(), 1, "case {n}: stored once");
            assert_eq!(pa, pb, "case {n}: the same payload");
            if vars.get("k").is_some_and(|k| k == "k-1") {
                keyed.push(ta);
            }
        }
    }
    // The repeated idempotency key answered the same trace; the changed input was refused.
    assert_eq!(keyed.len(), 2);
    assert_eq!(keyed[0], keyed[1]);
    let count = "SELECT COUNT(*) FROM commands";
    assert_eq!(direct.db.count(count).await, general.db.count(count).await);
    direct.stop().await;
    general.stop().await;
}

#[tokio::test]
async fn embedded_mode_generates_one_key_and_keeps_it() {
    let dir = scratch_dir("embedded");
    let mut config = tether::Config::for_tests(sqlite_url(&dir));
    let first = tether::Application::build(config.clone()).await.unwrap();
    let key = first.generated_key().unwrap().to_owned();
    assert!(key.starts_with("tk_") && key.len() > 40);
    drop(first);
    let second = tether::Application::build(config.clone()).await.unwrap();
    assert_eq!(second.generated_key(), Some(key.as_str()));
    drop(second);
    // Configured keys replace the generated one.
    config.api_keys = tether::config::Secret::new("alice:k");
    let third = tether::Application::build(config).await.unwrap();
    assert_eq!(third.generated_key(), None);
}

contract!(
    create_order_answers_with_a_trace_id_that_runs_to_success,
    handler_validation_fails_fast_and_stores_nothing,
    aws_scalars_are_validated_on_input,
    same_idempotency_key_same_caller_same_trace,
    traces_are_private_to_their_owner,
    direct_answers_equal_the_general_executors,
);
contract_sqs!(
    create_order_answers_with_a_trace_id_that_runs_to_success,
    same_idempotency_key_same_caller_same_trace,
);
