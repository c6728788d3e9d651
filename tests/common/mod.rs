//! Test helpers: the real application on port 0 against a fresh database (a SQLite file or a
//! PostgreSQL database), a real HTTP client and a real WebSocket client.
#![allow(dead_code)]

pub mod auth;
pub mod server;
pub mod sqs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tether::{Application, Config};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const ALICE: &str = "alice-key";
pub const BOB: &str = "bob-key";
pub const ADMIN: &str = "ops-key";

pub const CREATE_ORDER: &str = "mutation($i: CreateOrderInput!, $k: String) { createOrder(input: $i, idempotencyKey: $k) { traceId status acceptedAt } }";
pub const TRACE: &str = "query($t: ID!) { trace(traceId: $t) { traceId commandType state attempts series result error \
     events { seq component status timestamp attempt message detail state } } }";
pub const SUBSCRIBE: &str = "subscription($t: ID!) { onTraceEvent(traceId: $t) { traceId seq component status timestamp attempt message state } }";

/// An HTTP client. reqwest's rustls uses the process's crypto provider: aws-lc-rs, as tether.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

/// A fresh directory for one test's database.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("tether.db").display())
}

/// A configuration for tests: alice and bob as users, ops as admin, fault injection on, short
/// timings so retries and leases play out in well under a second.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::for_tests(db.url.clone());
    c.api_keys = tether::config::Secret::new(format!("alice:{ALICE},bob:{BOB}"));
    c.admin_api_keys = tether::config::Secret::new(format!("ops:{ADMIN}"));
    // Workers publish with SigV4, as on AppSync (`publishTraceEvent` is `@aws_iam`).
    c.auth_additional = "AWS_IAM".into();
    c.iam_keys =
        tether::config::Secret::new(format!("worker:{}:{}", auth::IAM_AKID, auth::IAM_SECRET));
    c.fault_injection = true;
    c.retry_base_ms = 20;
    c.retry_factor = 2;
    c.poll_ms = 50;
    c.sweep_ms = 50;
    c.lease_ms = 2_000;
    c.heartbeat_ms = 500;
    if let Some(queues) = &db.sqs {
        queues.configure(&mut c);
    }
    c
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    pub http: reqwest::Client,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub bus: tether::bus::EventBus,
    pub stats: std::sync::Arc<tether::pipeline::Stats>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// On SQLite (the transport tests, which do not depend on the store).
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on_with(Backend::Sqlite, configure).await
    }

    pub async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_on_with(backend, |_| {}).await
    }

    pub async fn spawn_on_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new(backend, "app").await;
        let mut config = test_config(&db);
        configure(&mut config);
        Self::start(db, config).await
    }

    pub async fn start(db: TestDb, config: Config) -> Self {
        let app = Application::build(config).await.expect("building the app");
        let addr = app.local_addr().expect("the test app serves the API");
        let shutdown = app.shutdown_token();
        let bus = app.event_bus().clone();
        let stats = app.stats().clone();
        let handle = tokio::spawn(app.run());
        Self {
            addr,
            db,
            http: http(),
            shutdown,
            bus,
            stats,
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// Shuts the app down gracefully and waits for it; returns its database.
    pub async fn stop(self) -> TestDb {
        self.shutdown.cancel();
        self.handle.await.expect("app task").expect("app run");
        self.db
    }

    /// POSTs a GraphQL request; returns (HTTP status, JSON body).
    pub async fn post(&self, key: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url()).json(&body);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}")),
        )
    }

    /// POSTs a GraphQL request signed with SigV4 by `aws-sigv4`, as an IAM worker would.
    pub async fn post_signed(&self, body: Value, secret: &str) -> (u16, Value) {
        let bytes = body.to_string().into_bytes();
        let headers = auth::sigv4_headers(
            &self.url(),
            &bytes,
            auth::IAM_AKID,
            secret,
            std::time::SystemTime::now(),
        );
        let mut req = self.http.post(self.url()).body(bytes);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}")),
        )
    }

    /// A GraphQL request as the IAM worker.
    pub async fn gql_iam(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self
            .post_signed(
                json!({ "query": query, "variables": variables }),
                auth::IAM_SECRET,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn gql(&self, key: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self
            .post(Some(key), json!({ "query": query, "variables": variables }))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Submits a createOrder; returns the trace ID.
    pub async fn create_order(&self, key: &str, input: Value) -> String {
        let body = self.gql(key, CREATE_ORDER, json!({ "i": input })).await;
        body["data"]["createOrder"]["traceId"]
            .as_str()
            .unwrap_or_else(|| panic!("no trace id: {body}"))
            .to_owned()
    }

    pub async fn trace(&self, key: &str, trace_id: &str) -> Value {
        let body = self.gql(key, TRACE, json!({ "t": trace_id })).await;
        body["data"]["trace"].clone()
    }

    /// Polls until the trace reaches one of `states` (bounded).
    pub async fn wait_state(&self, key: &str, trace_id: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let trace = self.trace(key, trace_id).await;
            if states.iter().any(|s| trace["state"] == *s) {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} never reached {states:?}: {trace}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn order(customer: &str) -> Value {
    json!({ "customerId": customer, "items": [{ "sku": "tea", "quantity": 2, "unitPriceCents": 450 }] })
}

pub fn faulty_order(faults: Value) -> Value {
    let mut o = order("c-faulty");
    o["faults"] = faults;
    o
}

/// How many orders a trace wrote (G3: exactly one for a successful createOrder).
pub async fn orders_of(db: &TestDb, trace_id: &str) -> i64 {
    db.scalar("SELECT count(*) FROM orders WHERE trace_id = $1", trace_id)
        .await
}

/// A `graphql-transport-ws` (or legacy `graphql-ws`) client.
pub struct WsClient {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsClient {
    pub async fn connect(addr: std::net::SocketAddr, protocol: &str) -> Self {
        let mut req = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("ws request");
        req.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol)
        );
        Self { ws }
    }

    /// Connects and completes `connection_init` with the given key.
    pub async fn init(addr: std::net::SocketAddr, protocol: &str, key: &str) -> Self {
        let mut c = Self::connect(addr, protocol).await;
        c.send(json!({ "type": "connection_init", "payload": { "x-api-key": key } }))
            .await;
        let ack = c.next().await.expect("an answer to connection_init");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        c
    }

    /// Like `init`, but `None` when the server cannot be reached or does not acknowledge.
    pub async fn try_init(addr: std::net::SocketAddr, protocol: &str, key: &str) -> Option<Self> {
        let mut req = format!("ws://{addr}/graphql").into_client_request().ok()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().ok()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await.ok()?;
        let mut c = Self { ws };
        let init = json!({ "type": "connection_init", "payload": { "x-api-key": key } });
        c.ws.send(Message::Text(init.to_string().into()))
            .await
            .ok()?;
        let ack = tokio::time::timeout(Duration::from_secs(10), c.next_frame())
            .await
            .ok()??;
        (ack["type"] == "connection_ack").then_some(c)
    }

    /// The next JSON frame (skipping keep-alives), or None when the connection failed.
    /// Unbounded: the caller sets its own timeout.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).ok()?;
                    if v["type"] == "ka" || v["type"] == "ping" || v["type"] == "pong" {
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(_)) => return Some(json!({ "type": "__close" })),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("ws send");
    }

    /// The next JSON frame (skipping keep-alives), or None when the socket closed. Bounded.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("ws frame within 20 s")?;
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    if v["type"] == "ka" || v["type"] == "ping" || v["type"] == "pong" {
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(frame)) => {
                    return Some(
                        json!({ "type": "__close", "code": frame.map(|f| u16::from(f.code)) }),
                    );
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, trace_id: &str) {
        self.send(json!({ "id": id, "type": "subscribe", "payload": { "query": SUBSCRIBE, "variables": { "t": trace_id } } }))
            .await;
    }
}

impl TestApp {
    pub async fn health(&self) -> Value {
        let resp = self
            .http
            .get(format!("http://{}/health", self.addr))
            .send()
            .await
            .expect("health");
        resp.json().await.expect("health JSON")
    }

    /// Waits until the emitter has published `n` outbox events.
    pub async fn wait_published(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health().await["executor"]["published"].as_u64() < Some(n) {
            assert!(Instant::now() < deadline, "never published {n} events");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the hub holds `n` subscribers (a subscribe has no ack in graphql-transport-ws).
    pub async fn wait_subscribers(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health().await["subscribers"].as_u64() != Some(n) {
            assert!(Instant::now() < deadline, "never reached {n} subscribers");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// --- backends ----------------------------------------------------------------------------

/// The stores the contract tests run against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL with the SQS command queue (on the emulator).
    Sqs,
}

/// The PostgreSQL server tests create their databases on: `TETHER_TEST_PG_URL` (set by the
/// README's test command, which finds or starts one), else the machine's on 127.0.0.1:5432.
pub fn pg_admin_url() -> String {
    std::env::var("TETHER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// One test's own database: a fresh SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: PathBuf,
    /// The test's own SQS queues, for `Backend::Sqs`.
    pub sqs: Option<sqs::Queues>,
}

impl TestDb {
    pub async fn new(backend: Backend, name: &str) -> Self {
        let dir = scratch_dir(name);
        let url =
            match backend {
                Backend::Sqlite => sqlite_url(&dir),
                Backend::Postgres | Backend::Sqs => {
                    use sqlx::Connection;
                    let admin = pg_admin_url();
                    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {admin} is not reachable ({e}); run the tests through \
                         scripts/test, which finds or starts one"
                    )
                });
                    let db = format!("tether_t_{}", uuid::Uuid::new_v4().simple());
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                        .execute(&mut conn)
                        .await
                        .expect("creating the test database");
                    let (base, _) = admin.rsplit_once('/').expect("a database in the admin URL");
                    format!("{base}/{db}")
                }
            };
        let sqs = match backend {
            Backend::Sqs => Some(sqs::Queues::create(name).await),
            _ => None,
        };
        TestDb {
            backend,
            url,
            dir,
            sqs,
        }
    }

    /// One `count(*)`-style number, `$1` bound to `arg`.
    pub async fn scalar(&self, sql: &'static str, arg: &str) -> i64 {
        let rows = self.rows(sql, &[arg]).await;
        rows[0][0].as_i64().expect("an integer")
    }

    /// A `count(*)`-style number of a query without arguments.
    pub async fn count(&self, sql: &'static str) -> i64 {
        let rows = self.rows(sql, &[]).await;
        rows[0][0].as_i64().expect("an integer")
    }

    /// Every row of a query, its columns as JSON (integers, floats, text, null); `$N` bound to
    /// the text `args`.
    pub async fn rows(&self, sql: &'static str, args: &[&str]) -> Vec<Vec<Value>> {
        use sqlx::{Connection, Row, ValueRef};
        fn column<'r, R: Row>(row: &'r R, i: usize) -> Value
        where
            usize: sqlx::ColumnIndex<R>,
            i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            if row.try_get_raw(i).map(|v| v.is_null()).unwrap_or(true) {
                return Value::Null;
            }
            if let Ok(v) = row.try_get::<i64, _>(i) {
                return v.into();
            }
            if let Ok(v) = row.try_get::<i32, _>(i) {
                return v.into();
            }
            if let Ok(v) = row.try_get::<f64, _>(i) {
                return v.into();
            }
            row.try_get::<String, _>(i)
                .map(Value::from)
                .unwrap_or_else(|e| panic!("column {i}: {e}"))
        }
        // The same code for both connection types.
        macro_rules! run {
            ($conn:ty) => {{
                let mut conn = <$conn>::connect(&self.url).await.unwrap();
                let mut q = sqlx::query(sql);
                for a in args {
                    q = q.bind(*a);
                }
                let rows = q.fetch_all(&mut conn).await.expect("query");
                rows.iter()
                    .map(|r| (0..r.columns().len()).map(|i| column(r, i)).collect())
                    .collect()
            }};
        }
        match self.backend {
            Backend::Sqlite => run!(sqlx::SqliteConnection),
            Backend::Postgres | Backend::Sqs => run!(sqlx::PgConnection),
        }
    }

    /// Opens the store the application would open for this database.
    pub async fn store(
        &self,
        hub: std::sync::Arc<dyn tether::ports::TraceSink>,
        accept_queue: usize,
    ) -> std::sync::Arc<dyn tether::ports::Store> {
        match self.backend {
            Backend::Sqlite => std::sync::Arc::new(
                tether::store::SqliteStore::open(&self.url, hub, accept_queue)
                    .await
                    .unwrap(),
            ),
            Backend::Postgres | Backend::Sqs => std::sync::Arc::new(
                tether::store::PgStore::open(
                    &self.url,
                    hub,
                    Default::default(),
                    accept_queue,
                    8,
                    self.backend == Backend::Sqs,
                )
                .await
                .unwrap(),
            ),
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` on PostgreSQL with the SQS command queue,
/// as `sqs::name` (next to `contract!`'s `sqlite::` and `postgres::`).
#[macro_export]
macro_rules! contract_sqs {
    (multi_thread; $($name:ident),* $(,)?) => {
        mod sqs {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqs).await } )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqs {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Sqs).await } )*
        }
    };
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! contract {
    (multi_thread; $($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
    };
}
