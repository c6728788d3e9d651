//! AppSync's authorization modes on every surface: HTTP, the real-time handshake and each
//! `start`. One server runs API_KEY (default), AWS_IAM, OPENID_CONNECT (JWKS from a file) and
//! AMAZON_COGNITO_USER_POOLS (JWKS from a URL) with a schema annotated for them
//! (`common::auth::multi_mode_schema`). SigV4 signatures come from `aws-sigv4`, the AWS
//! SDKs' signer; JWTs from a test identity provider.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine;
use common::auth::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OIDC_ISSUER: &str = "https://id.tether.test";
const COGNITO_ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Tether";
const CLIENT: &str = "tether-web";

struct Setup {
    app: TestApp,
    oidc: Issuer,
    cognito: Issuer,
}

async fn setup() -> Setup {
    let dir = scratch_dir("auth");
    let oidc = Issuer::new(&dir, OIDC_ISSUER, CLIENT);
    let cognito = Issuer::new(&dir, COGNITO_ISSUER, CLIENT);
    let jwks_url = serve_jwks(cognito.jwks()).await;
    let schema = multi_mode_schema(&dir);
    let oidc_jwks = oidc.jwks_path.display().to_string();
    let app = TestApp::spawn_with(|c| {
        c.schema = Some(schema);
        c.auth_additional = "AWS_IAM,OPENID_CONNECT,AMAZON_COGNITO_USER_POOLS".into();
        c.oidc_issuer = Some(OIDC_ISSUER.into());
        c.oidc_client_id = CLIENT.into();
        c.oidc_jwks = Some(oidc_jwks);
        c.cognito_issuer = Some(COGNITO_ISSUER.into());
        c.cognito_client_id = CLIENT.into();
        c.cognito_jwks = Some(jwks_url);
        c.admin_groups = "ops".into();
    })
    .await;
    Setup { app, oidc, cognito }
}

/// POSTs with arbitrary headers.
async fn post(app: &TestApp, headers: &[(String, String)], body: &Value) -> (u16, Value) {
    let mut req = app.http.post(app.url()).body(body.to_string());
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {token}"))]
}

fn raw_jwt(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), token.to_owned())]
}

fn create_body(customer: &str) -> Value {
    json!({ "query": CREATE_ORDER, "variables": { "i": order(customer) } })
}

fn trace_body(trace_id: &str) -> Value {
    json!({ "query": "query($t: ID!) { trace(traceId: $t) { traceId state } }", "variables": { "t": trace_id } })
}

/// A raw AppSync real-time client that takes any authorization header object.
struct Rt {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Rt {
    async fn connect(app: &TestApp, header: &Value) -> Self {
        let mut req = format!("ws://{}/graphql/realtime", app.addr)
            .into_client_request()
            .unwrap();
        let protocols = format!(
            "graphql-ws, header-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string())
        );
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut rt = Self { ws };
        rt.send(json!({ "type": "connection_init" })).await;
        rt
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// The next frame other than `ka`; a close is `{"type": "__close", "code": …}`.
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame within 20 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] != "ka" {
                        return v;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    return json!({ "type": "__close", "code": f.map(|f| u16::from(f.code)) });
                }
                Some(Ok(_)) => continue,
                _ => return json!({ "type": "__gone" }),
            }
        }
    }

    /// `start` for `onTraceEvent(traceId)`, with `authorization` as its own header object.
    async fn start(&mut self, id: &str, trace_id: &str, authorization: Option<Value>) {
        let data = json!({ "query": SUBSCRIBE, "variables": { "t": trace_id } }).to_string();
        let mut payload = json!({ "data": data });
        if let Some(authorization) = authorization {
            payload["extensions"] = json!({ "authorization": authorization });
        }
        self.send(json!({ "id": id, "type": "start", "payload": payload }))
            .await;
    }
}

fn key_object(app: &TestApp, key: &str) -> Value {
    json!({ "host": app.addr.to_string(), "x-api-key": key })
}

fn jwt_object(app: &TestApp, token: &str) -> Value {
    json!({ "host": app.addr.to_string(), "Authorization": token })
}

/// The connect-URL signature AppSync clients send for an IAM handshake.
fn iam_connect_object(app: &TestApp, secret: &str, at: SystemTime) -> Value {
    let url = format!("http://{}/graphql/connect", app.addr);
    sigv4_object(&url, b"{}", secret, at)
}

/// The signature over one `start`: `POST /graphql` with the `data` string as the body.
fn iam_start_object(app: &TestApp, trace_id: &str, secret: &str, at: SystemTime) -> Value {
    let data = json!({ "query": SUBSCRIBE, "variables": { "t": trace_id } }).to_string();
    sigv4_object(&app.url(), data.as_bytes(), secret, at)
}

fn publish_body(trace_id: &str, seq: i64) -> Value {
    json!({ "query": "mutation($e: TraceEventInput!) { publishTraceEvent(input: $e) { traceId seq component status timestamp attempt message state } }",
            "variables": { "e": { "traceId": trace_id, "seq": seq, "component": "RemoteWorker",
                "status": "SUCCESS", "timestamp": "2026-11-22T00:00:00.000Z", "message": "from IAM" } } })
}

#[tokio::test]
async fn jwt_callers_own_their_traces_and_directives_decide_what_each_mode_reaches() {
    let Setup { app, oidc, cognito } = setup().await;
    // OIDC, Bearer: accepted, owned by the token's subject.
    let (status, body) = post(&app, &bearer(&oidc.token("ann", 300)), &create_body("c-1")).await;
    assert_eq!(status, 200, "{body}");
    let trace_id = body["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = post(
        &app,
        &raw_jwt(&oidc.token("ann", 300)),
        &trace_body(&trace_id),
    )
    .await;
    assert_eq!(
        body["data"]["trace"]["traceId"],
        trace_id.as_str(),
        "{body}"
    );
    // Lists are checked per field, not per item.
    let events = json!({ "query": "query($t: ID!) { traceEvents(traceId: $t) { seq status } }",
                         "variables": { "t": trace_id } });
    let (_, body) = post(&app, &raw_jwt(&oidc.token("ann", 300)), &events).await;
    assert_eq!(
        body["data"]["traceEvents"][0]["status"], "ACCEPTED",
        "{body}"
    );
    // Another subject of the same issuer, an API key, a Cognito user: not theirs, and the
    // answer is the one for a trace that does not exist (G7).
    let missing = uuid::Uuid::now_v7().to_string();
    let (_, absent) = post(
        &app,
        &raw_jwt(&oidc.token("bo", 300)),
        &trace_body(&missing),
    )
    .await;
    for headers in [
        raw_jwt(&oidc.token("bo", 300)),
        vec![("x-api-key".into(), ALICE.into())],
        raw_jwt(&cognito.token("ann", 300)),
    ] {
        let (status, body) = post(&app, &headers, &trace_body(&trace_id)).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["trace"], Value::Null, "{headers:?} {body}");
        assert_eq!(body, absent);
    }

    // deadLetters: `@aws_cognito_user_pools(cognito_groups: ["ops"])` on the field replaces
    // the type's modes: only Cognito users in `ops` reach it.
    let dead = json!({ "query": "{ deadLetters { items { traceId } } }" });
    let mut ops_claims = cognito.claims("olga", 300);
    ops_claims["cognito:groups"] = json!(["ops"]);
    let (status, body) = post(&app, &raw_jwt(&cognito.sign(&ops_claims)), &dead).await;
    assert_eq!(status, 200);
    assert!(body["data"]["deadLetters"]["items"].is_array(), "{body}");
    let mut user_claims = cognito.claims("uma", 300);
    user_claims["cognito:groups"] = json!(["users"]);
    for headers in [
        raw_jwt(&cognito.sign(&user_claims)),
        raw_jwt(&oidc.token("ann", 300)),
        vec![("x-api-key".into(), ADMIN.into())],
    ] {
        let (status, body) = post(&app, &headers, &dead).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"], Value::Null, "{body}");
        assert_eq!(body["errors"][0]["errorType"], "Unauthorized");
        assert_eq!(
            body["errors"][0]["message"],
            "Not Authorized to access deadLetters on type Query"
        );
    }

    // IAM reaches what names @aws_iam (publishTraceEvent, TraceEvent) and nothing else: Query
    // names other modes, so the default does not apply either.
    let (status, body) = app.post_signed(trace_body(&trace_id), IAM_SECRET).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["message"], "Not Authorized to access trace on type Query",
        "{body}"
    );
    let (_, body) = app
        .post_signed(publish_body(&trace_id, 500), IAM_SECRET)
        .await;
    assert_eq!(body["data"]["publishTraceEvent"]["seq"], 500, "{body}");
    // An API key may not publish: the field names @aws_iam only.
    let (_, body) = post(
        &app,
        &[("x-api-key".into(), ADMIN.into())],
        &publish_body(&trace_id, 501),
    )
    .await;
    assert_eq!(
        body["errors"][0]["message"],
        "Not Authorized to access publishTraceEvent on type Mutation"
    );

    // Subscriptions: OIDC may follow its own trace; Cognito may not subscribe at all (the
    // Subscription type names API key, OIDC and IAM only).
    let mut rt = Rt::connect(&app, &jwt_object(&app, &oidc.token("ann", 300))).await;
    assert_eq!(rt.next().await["type"], "connection_ack");
    rt.start("own", &trace_id, None).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    let cognito_object = jwt_object(&app, &cognito.sign(&ops_claims));
    rt.start("cog", &trace_id, Some(cognito_object)).await;
    let refused = rt.next().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "cog");
    assert_eq!(
        refused["payload"]["errors"][0]["message"],
        "Not Authorized to access onTraceEvent on type Subscription"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_bad_credential_is_refused_on_every_surface_and_nothing_is_accepted() {
    let Setup { app, oidc, cognito } = setup().await;
    let dir = scratch_dir("auth-forger");
    // Same issuer and kid name is not enough: a key tether does not hold.
    let forger = Issuer::new(&dir, OIDC_ISSUER, CLIENT);
    let mut wrong_aud = oidc.claims("ann", 300);
    wrong_aud["aud"] = json!("someone-else");
    wrong_aud["client_id"] = json!("someone-else");
    let mut wrong_iss = oidc.claims("ann", 300);
    wrong_iss["iss"] = json!("https://evil.example");
    let mut alg_none = oidc.token("ann", 300);
    {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({ "alg": "none", "typ": "JWT" }).to_string());
        let rest = alg_none.split_once('.').unwrap().1.to_owned();
        alg_none = format!("{header}.{rest}");
    }
    let jwts: Vec<(&str, String, &str)> = vec![
        (
            "forged",
            forger.token("ann", 300),
            "You are not authorized to make this call.",
        ),
        ("expired", oidc.token("ann", -5), "Token has expired."),
        (
            "wrong audience",
            oidc.sign(&wrong_aud),
            "You are not authorized to make this call.",
        ),
        (
            "wrong issuer",
            oidc.sign(&wrong_iss),
            "You are not authorized to make this call.",
        ),
        (
            "alg none",
            alg_none,
            "You are not authorized to make this call.",
        ),
        (
            "cognito expired",
            cognito.token("ann", -5),
            "Token has expired.",
        ),
        (
            "garbage",
            "eyJ.not.a-token".into(),
            "You are not authorized to make this call.",
        ),
    ];
    let stale = SystemTime::now() - Duration::from_secs(10 * 60);
    let future = SystemTime::now() + Duration::from_secs(10 * 60);
    let allowed_messages = [
        "You are not authorized to make this call.",
        "Token has expired.",
    ];

    // 1. HTTP: 401 UnauthorizedException, one of two fixed messages.
    let body = create_body("c-neg");
    let mut cases: Vec<(String, Vec<(String, String)>)> = jwts
        .iter()
        .map(|(name, token, _)| (name.to_string(), raw_jwt(token)))
        .collect();
    cases.push((
        "wrong api key".into(),
        vec![("x-api-key".into(), "nope".into())],
    ));
    cases.push(("no credentials".into(), vec![]));
    let bytes = body.to_string();
    let url = app.url();
    let signed =
        |secret: &str, at: SystemTime, what: &[u8]| sigv4_headers(&url, what, IAM_AKID, secret, at);
    cases.push((
        "sigv4 wrong secret".into(),
        signed("not-the-secret", SystemTime::now(), bytes.as_bytes()),
    ));
    cases.push((
        "sigv4 stale date".into(),
        signed(IAM_SECRET, stale, bytes.as_bytes()),
    ));
    cases.push((
        "sigv4 future date".into(),
        signed(IAM_SECRET, future, bytes.as_bytes()),
    ));
    cases.push((
        "sigv4 other body".into(),
        signed(IAM_SECRET, SystemTime::now(), b"{}"),
    ));
    cases.push((
        "sigv4 unknown key".into(),
        sigv4_headers(
            &url,
            bytes.as_bytes(),
            "AKIDUNKNOWN",
            IAM_SECRET,
            SystemTime::now(),
        ),
    ));
    for (name, headers) in &cases {
        let (status, reply) = post(&app, headers, &body).await;
        assert_eq!(status, 401, "{name}: {reply}");
        assert_eq!(
            reply["errors"][0]["errorType"], "UnauthorizedException",
            "{name}"
        );
        let message = reply["errors"][0]["message"].as_str().unwrap();
        assert!(allowed_messages.contains(&message), "{name}: {message}");
        assert_eq!(
            reply.as_object().unwrap().len(),
            1,
            "{name}: only `errors`: {reply}"
        );
    }
    for (name, token, message) in &jwts {
        let (_, reply) = post(&app, &raw_jwt(token), &body).await;
        assert_eq!(reply["errors"][0]["message"], *message, "{name}");
    }

    // 2. The real-time handshake: connection_error UnauthorizedException, then the close.
    let mut handshakes: Vec<(String, Value)> = jwts
        .iter()
        .map(|(name, token, _)| (name.to_string(), jwt_object(&app, token)))
        .collect();
    handshakes.push(("wrong api key".into(), key_object(&app, "nope")));
    handshakes.push((
        "sigv4 wrong secret".into(),
        iam_connect_object(&app, "not-the-secret", SystemTime::now()),
    ));
    handshakes.push((
        "sigv4 stale date".into(),
        iam_connect_object(&app, IAM_SECRET, stale),
    ));
    // Signed for the wrong URL (the GraphQL path instead of …/connect).
    handshakes.push((
        "sigv4 wrong url".into(),
        sigv4_object(&app.url(), b"{}", IAM_SECRET, SystemTime::now()),
    ));
    for (name, header) in &handshakes {
        let mut rt = Rt::connect(&app, header).await;
        let frame = rt.next().await;
        assert_eq!(frame["type"], "connection_error", "{name}: {frame}");
        let error = &frame["payload"]["errors"][0];
        assert_eq!(error["errorType"], "UnauthorizedException", "{name}");
        assert!(
            allowed_messages.contains(&error["message"].as_str().unwrap()),
            "{name}"
        );
        assert_eq!(rt.next().await["type"], "__close", "{name}");
    }

    // 3. `start` with its own bad authorization on a good connection: an error for that id.
    let trace_id = app.create_order(ALICE, order("c-own")).await;
    let mut rt = Rt::connect(&app, &key_object(&app, ALICE)).await;
    assert_eq!(rt.next().await["type"], "connection_ack");
    let mut starts: Vec<(String, Value)> = handshakes
        .iter()
        .filter(|(name, _)| !name.starts_with("sigv4"))
        .cloned()
        .collect();
    starts.push((
        "sigv4 wrong secret".into(),
        iam_start_object(&app, &trace_id, "not-the-secret", SystemTime::now()),
    ));
    starts.push((
        "sigv4 stale date".into(),
        iam_start_object(&app, &trace_id, IAM_SECRET, stale),
    ));
    // The connect signature is not a start signature.
    starts.push((
        "sigv4 connect signature".into(),
        iam_connect_object(&app, IAM_SECRET, SystemTime::now()),
    ));
    for (i, (name, authorization)) in starts.iter().enumerate() {
        let id = format!("s{i}");
        rt.start(&id, &trace_id, Some(authorization.clone())).await;
        let frame = rt.next().await;
        assert_eq!(frame["type"], "error", "{name}: {frame}");
        assert_eq!(frame["id"], id.as_str());
        let error = &frame["payload"]["errors"][0];
        assert_eq!(error["errorType"], "UnauthorizedException", "{name}");
        assert!(
            allowed_messages.contains(&error["message"].as_str().unwrap()),
            "{name}"
        );
    }
    // The connection still works for its own caller.
    rt.start("mine", &trace_id, None).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    assert_eq!(app.health().await["subscribers"], 1);

    // None of it was accepted: the one order is Alice's.
    assert_eq!(app.db.count("SELECT COUNT(*) FROM commands").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_iam_worker_signs_publish_trace_event_and_subscribers_receive_it() {
    let Setup { app, .. } = setup().await;
    let trace_id = app.create_order(ALICE, order("c-iam")).await;
    app.wait_published(1).await;
    // Alice follows with an API key; an IAM principal follows over a SigV4 handshake and a
    // SigV4-signed start (IAM callers are admins: any trace).
    let mut alice = Rt::connect(&app, &key_object(&app, ALICE)).await;
    assert_eq!(alice.next().await["type"], "connection_ack");
    alice.start("a", &trace_id, None).await;
    assert_eq!(alice.next().await["type"], "start_ack");
    let mut worker = Rt::connect(
        &app,
        &iam_connect_object(&app, IAM_SECRET, SystemTime::now()),
    )
    .await;
    let ack = worker.next().await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let start_auth = iam_start_object(&app, &trace_id, IAM_SECRET, SystemTime::now());
    worker.start("w", &trace_id, Some(start_auth)).await;
    let frame = worker.next().await;
    assert_eq!(frame["type"], "start_ack", "{frame}");
    app.wait_subscribers(2).await;
    // The handshake's signature covers only `…/connect` and `{}`: a start on that connection
    // must sign its own request.
    worker.start("unsigned", &trace_id, None).await;
    let frame = worker.next().await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["id"], "unsigned");
    assert_eq!(
        frame["payload"]["errors"][0]["errorType"],
        "UnauthorizedException"
    );

    let (status, body) = app
        .post_signed(publish_body(&trace_id, 900), IAM_SECRET)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["publishTraceEvent"]["seq"], 900, "{body}");
    for rt in [&mut alice, &mut worker] {
        let data = rt.next().await;
        assert_eq!(data["type"], "data", "{data}");
        let event = &data["payload"]["data"]["onTraceEvent"];
        assert_eq!(event["seq"], 900);
        assert_eq!(event["component"], "RemoteWorker");
        assert_eq!(event["message"], "from IAM");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_subscription_ends_when_its_token_expires() {
    let Setup { app, oidc, .. } = setup().await;
    let (_, body) = post(
        &app,
        &raw_jwt(&oidc.token("ann", 300)),
        &create_body("c-exp"),
    )
    .await;
    let trace_id = body["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_published(1).await;
    // The connection's token is good for long; the start carries one that expires in 2 s.
    let mut rt = Rt::connect(&app, &jwt_object(&app, &oidc.token("ann", 300))).await;
    assert_eq!(rt.next().await["type"], "connection_ack");
    let short = jwt_object(&app, &oidc.token("ann", 2));
    rt.start("short", &trace_id, Some(short)).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    rt.start("long", &trace_id, None).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    app.wait_subscribers(2).await;
    app.post_signed(publish_body(&trace_id, 700), IAM_SECRET)
        .await;
    let mut before = Vec::new();
    for _ in 0..2 {
        let frame = rt.next().await;
        assert_eq!(frame["type"], "data", "{frame}");
        before.push(frame["id"].as_str().unwrap().to_owned());
    }
    before.sort();
    assert_eq!(before, ["long", "short"]);
    // At its `exp`, the short one is ended and told why; the hub lets it go.
    let frame = rt.next().await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["id"], "short");
    assert_eq!(
        frame["payload"]["errors"][0]["errorType"],
        "UnauthorizedException"
    );
    assert_eq!(
        frame["payload"]["errors"][0]["message"],
        "Token has expired."
    );
    app.wait_subscribers(1).await;
    // The next event reaches only the long one.
    app.post_signed(publish_body(&trace_id, 701), IAM_SECRET)
        .await;
    let frame = rt.next().await;
    assert_eq!(frame["type"], "data");
    assert_eq!(frame["id"], "long");
    assert_eq!(frame["payload"]["data"]["onTraceEvent"]["seq"], 701);
    app.stop().await;
}

#[tokio::test]
async fn hostile_subscription_documents_are_refused_and_the_server_stays_up() {
    let Setup { app, .. } = setup().await;
    let trace_id = app.create_order(ALICE, order("c-hostile")).await;
    let mut rt = Rt::connect(&app, &key_object(&app, ALICE)).await;
    assert_eq!(rt.next().await["type"], "connection_ack");
    // A fragment cycle, and a chain of fragments that each spread the next twice (2^40).
    let cyclic = "subscription($t: ID!) { onTraceEvent(traceId: $t) { ...A } } \
                  fragment A on TraceEvent { seq ...B } fragment B on TraceEvent { ...A }";
    let mut wide = String::from("subscription($t: ID!) { onTraceEvent(traceId: $t) { ...F0 } }");
    for i in 0..40 {
        wide.push_str(&format!(
            " fragment F{i} on TraceEvent {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    wide.push_str(" fragment F40 on TraceEvent { seq }");
    for (id, query) in [("cyclic", cyclic), ("wide", wide.as_str())] {
        let data = json!({ "query": query, "variables": { "t": trace_id } }).to_string();
        rt.send(json!({ "id": id, "type": "start", "payload": { "data": data } }))
            .await;
        let frame = rt.next().await;
        assert_eq!(frame["type"], "error", "{id}: {frame}");
        assert_eq!(frame["id"], id);
    }
    // Still serving, on the same connection.
    rt.start("fine", &trace_id, None).await;
    assert_eq!(rt.next().await["type"], "start_ack");
    app.stop().await;
}
