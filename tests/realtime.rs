//! AppSync's real-time protocol on `/graphql/realtime` (reference/appsync.md §1), spoken by a
//! raw WebSocket client frame by frame: the handshake's three ways of carrying authorization,
//! `connection_ack` with `connectionTimeoutMs`, `ka` on a timer, `start` → `start_ack` before
//! any `data`, `stop` → `complete`, and AppSync's error frames. The npm clients that speak it
//! are driven in `tests/clients.rs`.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the handshake carries the authorization header object.
enum Auth<'a> {
    /// `Sec-WebSocket-Protocol: graphql-ws, header-<base64url>` (current clients).
    Subprotocol(&'a str),
    /// `?header=<base64>&payload=e30=` (older clients).
    QueryString(&'a str),
    /// A plain `x-api-key` header on the upgrade request.
    HttpHeader(&'a str),
    None,
}

fn header_object(addr: std::net::SocketAddr, key: &str) -> Value {
    json!({ "host": addr.to_string(), "x-api-key": key, "x-amz-date": "20261122T000000Z" })
}

struct Rt {
    ws: Socket,
}

impl Rt {
    async fn connect(addr: std::net::SocketAddr, auth: Auth<'_>) -> Self {
        let b64 = |key: &str| header_object(addr, key).to_string();
        let url = match &auth {
            Auth::QueryString(key) => format!(
                "ws://{addr}/graphql/realtime?header={}&payload=e30=",
                base64::engine::general_purpose::STANDARD
                    .encode(b64(key))
                    .replace('=', "%3D")
            ),
            _ => format!("ws://{addr}/graphql/realtime"),
        };
        let mut req = url.into_client_request().unwrap();
        let protocols = match &auth {
            Auth::Subprotocol(key) => format!(
                "graphql-ws, header-{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b64(key))
            ),
            _ => "graphql-ws".to_owned(),
        };
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        if let Auth::HttpHeader(key) = &auth {
            req.headers_mut().insert("x-api-key", key.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        // The server must pick `graphql-ws`, never the `header-…` token.
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("graphql-ws")
        );
        Self { ws }
    }

    /// Connects and completes `connection_init` → `connection_ack`.
    async fn ready(addr: std::net::SocketAddr, key: &str) -> Self {
        let mut rt = Self::connect(addr, Auth::Subprotocol(key)).await;
        rt.send(json!({ "type": "connection_init" })).await;
        let ack = rt.next().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        rt
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// The next frame, `ka` included; a close is `{"type": "__close", "code": …}`.
    async fn raw(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame within 20 s");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(f))) => {
                    return json!({ "type": "__close", "code": f.map(|f| u16::from(f.code)) });
                }
                Some(Ok(_)) => continue,
                _ => return json!({ "type": "__gone" }),
            }
        }
    }

    /// The next frame other than `ka`.
    async fn next(&mut self) -> Value {
        loop {
            let frame = self.raw().await;
            if frame["type"] != "ka" {
                return frame;
            }
        }
    }

    /// A `start` as AppSync clients send it: the request as a JSON string in `data`, and the
    /// authorization header object again in `extensions`.
    async fn start(&mut self, addr: std::net::SocketAddr, id: &str, key: &str, request: Value) {
        self.send(json!({ "id": id, "type": "start", "payload": {
            "data": request.to_string(),
            "extensions": { "authorization": header_object(addr, key) },
        } }))
        .await;
    }
}

fn on_trace(trace_id: &str) -> Value {
    json!({ "query": SUBSCRIBE, "variables": { "t": trace_id } })
}

#[tokio::test]
async fn start_ack_comes_before_data_and_stop_is_answered_with_complete() {
    let app = TestApp::spawn().await;
    let trace_id = app
        .create_order(ALICE, faulty_order(json!({ "delayMs": 300 })))
        .await;
    let mut rt = Rt::connect(app.addr, Auth::Subprotocol(ALICE)).await;
    rt.send(json!({ "type": "connection_init" })).await;
    let ack = rt.raw().await;
    assert_eq!(
        ack,
        json!({ "type": "connection_ack", "payload": { "connectionTimeoutMs": 300000 } })
    );
    rt.start(app.addr, "s-1", ALICE, on_trace(&trace_id)).await;
    assert_eq!(rt.next().await, json!({ "type": "start_ack", "id": "s-1" }));
    // Live events until the manager's SUCCESS: in order, for this trace, in `payload.data`.
    let mut seqs = Vec::new();
    loop {
        let frame = rt.next().await;
        assert_eq!(
            (frame["type"].as_str(), frame["id"].as_str()),
            (Some("data"), Some("s-1")),
            "{frame}"
        );
        let event = &frame["payload"]["data"]["onTraceEvent"];
        assert_eq!(event["traceId"], trace_id.as_str());
        seqs.push(event["seq"].as_i64().unwrap());
        if event["component"] == "TransactionManager" && event["status"] == "SUCCESS" {
            break;
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    rt.send(json!({ "type": "stop", "id": "s-1" })).await;
    loop {
        let frame = rt.next().await;
        if frame["type"] == "complete" {
            assert_eq!(frame["id"], "s-1");
            break;
        }
        assert_eq!(
            frame["type"], "data",
            "only data may still be on its way: {frame}"
        );
    }
    app.wait_subscribers(0).await;
    app.stop().await;
}

#[tokio::test]
async fn the_handshake_takes_the_header_object_from_subprotocol_query_string_or_http_headers() {
    let app = TestApp::spawn().await;
    let trace_id = app.create_order(ALICE, order("c-1")).await;
    for auth in [
        Auth::Subprotocol(ALICE),
        Auth::QueryString(ALICE),
        Auth::HttpHeader(ALICE),
    ] {
        let mut rt = Rt::connect(app.addr, auth).await;
        rt.send(json!({ "type": "connection_init" })).await;
        assert_eq!(rt.next().await["type"], "connection_ack");
        // No authorization in the start: the connection's is used.
        rt.send(json!({ "id": "a", "type": "start", "payload": { "data": on_trace(&trace_id).to_string() } }))
            .await;
        assert_eq!(rt.next().await, json!({ "type": "start_ack", "id": "a" }));
    }
    // A wrong key or none: AppSync's connection_error, then the socket closes.
    for auth in [
        Auth::Subprotocol("wrong"),
        Auth::QueryString("wrong"),
        Auth::HttpHeader("wrong"),
        Auth::None,
    ] {
        let mut rt = Rt::connect(app.addr, auth).await;
        rt.send(json!({ "type": "connection_init" })).await;
        let frame = rt.next().await;
        assert_eq!(frame["type"], "connection_error", "{frame}");
        let error = &frame["payload"]["errors"][0];
        assert_eq!(error["errorType"], "UnauthorizedException");
        assert_eq!(error["errorCode"], 401);
        assert_eq!(rt.next().await["type"], "__close");
    }
    app.wait_subscribers(0).await;
    app.stop().await;
}

#[tokio::test]
async fn start_errors_have_appsync_error_types_and_leak_nothing() {
    let app = TestApp::spawn_with(|c| c.max_subscriptions_per_connection = 2).await;
    let alices = app.create_order(ALICE, order("c-1")).await;
    let bobs = app.create_order(BOB, order("c-2")).await;
    // Both traces are complete (their last event is the emitter's): nothing live interleaves.
    app.wait_published(2).await;
    let mut rt = Rt::ready(app.addr, ALICE).await;

    let error_of = |frame: &Value, id: &str| {
        assert_eq!(
            (frame["type"].as_str(), frame["id"].as_str()),
            (Some("error"), Some(id)),
            "{frame}"
        );
        frame["payload"]["errors"][0].clone()
    };
    // A wrong key in the start's own authorization.
    rt.start(app.addr, "bad-key", "wrong", on_trace(&alices))
        .await;
    let e = error_of(&rt.next().await, "bad-key");
    assert_eq!(e["errorType"], "UnauthorizedException");
    // Queries and mutations belong on HTTP.
    rt.start(
        app.addr,
        "query",
        ALICE,
        json!({ "query": "{ deadLetters { items { traceId } } }" }),
    )
    .await;
    let e = error_of(&rt.next().await, "query");
    assert_eq!(e["errorType"], "UnsupportedOperation");
    // A data string that is not a request at all.
    rt.send(json!({ "id": "junk", "type": "start", "payload": { "data": "{not json" } }))
        .await;
    let e = error_of(&rt.next().await, "junk");
    assert_eq!(e["errorType"], "UnsupportedOperation");
    // Validation: a field TraceEvent does not have.
    rt.start(app.addr, "invalid", ALICE, json!({ "query": "subscription($t: ID!) { onTraceEvent(traceId: $t) { nope } }", "variables": { "t": alices } }))
        .await;
    let e = error_of(&rt.next().await, "invalid");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
    // Someone else's trace: the same answer as a trace that does not exist.
    rt.start(app.addr, "bobs", ALICE, on_trace(&bobs)).await;
    let theirs = error_of(&rt.next().await, "bobs");
    let missing = uuid::Uuid::now_v7().to_string();
    rt.start(app.addr, "missing", ALICE, on_trace(&missing))
        .await;
    let none = error_of(&rt.next().await, "missing");
    assert_eq!(theirs["errorType"], "NotFound");
    assert_eq!(
        theirs["message"].as_str().unwrap().replace(&bobs, "X"),
        none["message"].as_str().unwrap().replace(&missing, "X")
    );
    // Duplicate ids and the per-connection cap.
    rt.start(app.addr, "one", ALICE, on_trace(&alices)).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    rt.start(app.addr, "one", ALICE, on_trace(&alices)).await;
    assert_eq!(
        error_of(&rt.next().await, "one")["errorType"],
        "DuplicatedOperationError"
    );
    rt.start(app.addr, "two", ALICE, on_trace(&alices)).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    rt.start(app.addr, "three", ALICE, on_trace(&alices)).await;
    assert_eq!(
        error_of(&rt.next().await, "three")["errorType"],
        "MaxSubscriptionsReachedError"
    );
    app.wait_subscribers(2).await;
    app.stop().await;
}

#[tokio::test]
async fn keep_alives_follow_the_timer_and_the_connection_ends_at_its_lifetime() {
    let app = TestApp::spawn_with(|c| {
        c.ws_keepalive_ms = 50;
        c.ws_lifetime_ms = 600;
    })
    .await;
    let mut rt = Rt::ready(app.addr, ALICE).await;
    // `ka` right after the ack, then on the timer, until the lifetime closes the socket.
    let mut kas = 0;
    let close = loop {
        let frame = rt.raw().await;
        match frame["type"].as_str() {
            Some("ka") => kas += 1,
            Some("__close") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert!(kas >= 3, "only {kas} keep-alives before the close");
    assert_eq!(close["code"], 1000);
    app.stop().await;
}

#[tokio::test]
async fn graphql_transport_ws_runs_queries_and_mutations_too() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::init(app.addr, "graphql-transport-ws", ALICE).await;
    ws.send(json!({ "id": "m", "type": "subscribe", "payload": {
        "query": CREATE_ORDER, "variables": { "i": order("c-ws") } } }))
        .await;
    let next = ws.next().await.unwrap();
    assert_eq!(next["type"], "next", "{next}");
    let trace_id = next["payload"]["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ws.next().await.unwrap(),
        json!({ "type": "complete", "id": "m" })
    );
    let trace = app.trace(ALICE, &trace_id).await;
    assert_eq!(trace["commandType"], "createOrder");
    app.stop().await;
}

#[tokio::test]
async fn each_start_is_authorised_by_its_own_header_object_and_stops_free_their_slot() {
    let app = TestApp::spawn_with(|c| c.max_subscriptions_per_connection = 1).await;
    let alices = app.create_order(ALICE, order("c-1")).await;
    let bobs = app.create_order(BOB, order("c-2")).await;
    // Both traces are complete (their last event is the emitter's): nothing live interleaves.
    app.wait_published(2).await;
    // Alice's connection; a start that carries Bob's key acts as Bob.
    let mut rt = Rt::ready(app.addr, ALICE).await;
    rt.start(app.addr, "as-bob", BOB, on_trace(&alices)).await;
    let refused = rt.next().await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["payload"]["errors"][0]["errorType"].as_str()
        ),
        (Some("error"), Some("NotFound")),
        "{refused}"
    );
    rt.start(app.addr, "bobs", BOB, on_trace(&bobs)).await;
    assert_eq!(
        rt.next().await,
        json!({ "type": "start_ack", "id": "bobs" })
    );
    rt.send(json!({ "type": "stop", "id": "bobs" })).await;
    assert_eq!(rt.next().await, json!({ "type": "complete", "id": "bobs" }));
    // A start stopped at once, whether still being prepared or already live, gives its slot
    // back (the cap is 1).
    for round in 0..20 {
        let id = format!("quick-{round}");
        rt.start(app.addr, &id, ALICE, on_trace(&alices)).await;
        rt.send(json!({ "type": "stop", "id": id })).await;
        loop {
            let frame = rt.next().await;
            if frame["type"] == "complete" {
                assert_eq!(frame["id"], id.as_str());
                break;
            }
            // Acknowledged before the stop was read (the trace is complete: no data).
            assert_eq!(frame, json!({ "type": "start_ack", "id": id }));
        }
    }
    rt.start(app.addr, "last", ALICE, on_trace(&alices)).await;
    assert_eq!(
        rt.next().await,
        json!({ "type": "start_ack", "id": "last" })
    );
    app.wait_subscribers(1).await;
    // Two root fields in one subscription are refused.
    let two = json!({ "query": "subscription($a: ID!, $b: ID!) { a: onTraceEvent(traceId: $a) { seq } b: onTraceEvent(traceId: $b) { seq } }",
                      "variables": { "a": alices, "b": alices } });
    let mut other = Rt::ready(app.addr, ALICE).await;
    other.start(app.addr, "two", ALICE, two).await;
    let frame = other.next().await;
    assert_eq!(frame["type"], "error", "{frame}");
    app.wait_subscribers(1).await;
    app.stop().await;
}
