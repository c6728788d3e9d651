//! Load benchmark: the real `tether` binary, driven over 127.0.0.1, next to the raw SQLite
//! baseline it is built on.
//!
//! Run with `scripts/bench` (raises the fd limit, then `cargo bench --bench load`), or
//! `scripts/bench --quick` for short phases. Flags: `--quick`, `--write` / `--no-write`
//! (full runs write `BENCHMARKS.md` by default, quick runs do not), `--keep` (keep the
//! temporary directory under `target/bench-tmp/`), `--only subs` (the subscription phase
//! alone), `--pg` (the PostgreSQL phase alone, in `load/pg.rs`: tether's API and worker roles
//! on PostgreSQL next to pgbench and graphile-worker; written to its own section of
//! `BENCHMARKS.md`).
//!
//! What one run measures, in this order:
//!
//! * **Cold start** (f): spawn a fresh server on a new database, poll `GET /health` every 5 ms
//!   until it answers 200; the server's VmRSS right then is its idle RSS.
//! * **Raw insert rate** (a): 32 tasks doing single-row autocommit `INSERT`s into a SQLite
//!   file opened like tether's (WAL, `synchronous=FULL`, `busy_timeout`), once through a
//!   32-connection pool and once through one connection behind a `tokio::sync::Mutex`.
//! * **Accepts** (b): 32 HTTP clients with keep-alive, each looping `createOrder`: accepted/s,
//!   p50/p99 latency, and the ratio to the better raw insert rate.
//! * **Execution** (c): `/health` is sampled every 50 ms from the first accept until
//!   `executor.committed` reaches the number accepted.
//! * **End-to-end latency** (d): 8 clients, each with one WebSocket: mutation, subscribe to
//!   its trace, read the history to catch up, and wait for the `TransactionManager` `SUCCESS`
//!   event; latency is from sending the mutation to first seeing that event.
//! * **Idle subscriptions** (e): on a fresh server, N WebSocket connections each with one
//!   `onTraceEvent` subscription to the same trace; RSS delta / N, then one SigV4-signed
//!   publish and the time until every subscriber has it.
//!
//! Next to the figures, a few diagnostics: the CPU cores the server and the benchmark used
//! during the accepts (from `/proc/<pid>/stat`), the server's own accepted → SUCCESS time
//! (from the events' timestamps) and the mutation round trip within the end-to-end latency,
//! and warnings or errors from the servers' logs.
//!
//! Every loop is bounded by a deadline and a count, and every server child is killed when its
//! guard drops (also on panic). Request failures are counted and reported, never unwrapped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL phase (`--pg`).
#[path = "load/pg.rs"]
mod pg;

const USER_KEY: &str = "alice-key";
/// The IAM key the bench's servers trust; `publishTraceEvent` is signed with it (SigV4).
const IAM_AKID: &str = "AKIDTETHERBENCH";
const IAM_SECRET: &str = "tether-bench-secret";
const PROTOCOL: &str = "graphql-transport-ws";

const CREATE_ORDER: &str =
    "mutation($i: CreateOrderInput!) { createOrder(input: $i) { traceId status acceptedAt } }";
const TRACE_EVENTS: &str =
    "query($t: ID!) { traceEvents(traceId: $t) { seq component status timestamp state } }";
const TRACE_STATE: &str = "query($t: ID!) { trace(traceId: $t) { state } }";
const ON_TRACE_EVENT: &str = "subscription($t: ID!){ onTraceEvent(traceId:$t){ traceId seq component status timestamp state } }";
const PUBLISH: &str = "mutation($e: TraceEventInput!){ publishTraceEvent(input:$e){ traceId seq component status timestamp attempt message detail state } }";

/// The `seq` of the event the subscription phase publishes.
const PUBLISHED_SEQ: i64 = 999;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
    /// `--only subs`: run just the idle-subscription phase (never written to BENCHMARKS.md).
    only_subs: bool,
    /// `--pg`: run just the PostgreSQL phase (`pg.rs`); `--write` records it in its own section.
    pg: bool,
    /// `--sqs`: run just the SQS phase (`pg/sqs.rs`): the DB queue against SQS on the emulator.
    sqs: bool,
    write: bool,
    keep: bool,
    /// Length of the raw-insert and accept phases.
    duration: Duration,
    /// Concurrent tasks / clients of the raw-insert and accept phases.
    concurrency: usize,
    e2e_clients: usize,
    e2e_commands: usize,
    subscriptions: usize,
    /// WebSocket connections being opened at once in the subscription phase.
    open_concurrency: usize,
    cold_starts: usize,
    /// How long the executor may take to catch up after the accept phase.
    drain_deadline: Duration,
    /// PostgreSQL phase: commands accepted before the workers start (and jobs queued for the
    /// graphile-worker peer).
    pg_backlog: usize,
    /// PostgreSQL phase: rows bulk-loaded into `trace_events` before the "loaded" round.
    pg_trace_rows: u64,
}

impl Opts {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let quick = has("--quick");
        for a in &args {
            // `cargo bench` passes `--bench` to every bench binary.
            if ![
                "--quick",
                "--write",
                "--no-write",
                "--keep",
                "--bench",
                "--only",
                "subs",
                "--pg",
                "--sqs",
            ]
            .contains(&a.as_str())
            {
                eprintln!("load: ignoring unknown argument {a:?}");
            }
        }
        let only_subs = args.windows(2).any(|w| w[0] == "--only" && w[1] == "subs");
        Opts {
            quick,
            only_subs,
            pg: has("--pg"),
            sqs: has("--sqs"),
            write: if only_subs {
                false
            } else if quick {
                has("--write")
            } else {
                !has("--no-write")
            },
            keep: has("--keep"),
            duration: Duration::from_secs(if quick { 3 } else { 10 }),
            concurrency: 32,
            e2e_clients: 8,
            e2e_commands: if quick { 50 } else { 200 },
            subscriptions: if quick { 1000 } else { 5000 },
            open_concurrency: 200,
            cold_starts: if quick { 3 } else { 5 },
            drain_deadline: Duration::from_secs(if quick { 120 } else { 300 }),
            pg_backlog: if quick { 10_000 } else { 40_000 },
            pg_trace_rows: if quick { 1_000_000 } else { 10_000_000 },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// Failures by kind; the load loops count them instead of aborting.
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, u64>>);

/// Waits for load tasks that each return their request latencies; a task that died is
/// counted as an error, not a panic of the whole run.
async fn join_latencies(
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    errors: &Errors,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(l) => latencies.extend(l),
            Err(e) => errors.add(format!("task: {e}")),
        }
    }
    latencies
}

impl Errors {
    fn add(&self, kind: impl Into<String>) {
        let mut kind: String = kind.into();
        if kind.len() > 160 {
            let mut cut = 160;
            while !kind.is_char_boundary(cut) {
                cut -= 1;
            }
            kind.truncate(cut);
        }
        *self.lock().entry(kind).or_default() += 1;
    }

    fn summary(&self) -> String {
        let map = self.lock();
        if map.is_empty() {
            return "none".into();
        }
        map.iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn per_s(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The soft limit on open files of this process (the server inherits it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU time (user + system) a process has used so far, in seconds; `pid` may be `self`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU cores a process kept busy between two `cpu_seconds` readings.
fn cores(before: Option<f64>, after: Option<f64>, wall: Duration) -> Option<f64> {
    Some((after? - before?) / wall.as_secs_f64().max(1e-9))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_client() -> reqwest::Client {
    {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        reqwest::Client::builder()
    }
    .timeout(Duration::from_secs(10))
    .pool_max_idle_per_host(4)
    .build()
    .unwrap_or_default()
}

fn order_input(customer: &str) -> Value {
    json!({"customerId": customer, "items": [{"sku": "tea", "quantity": 2, "unitPriceCents": 450}]})
}

/// One GraphQL request over HTTP: the `data` object, or a short description of the failure.
/// A GraphQL request signed with SigV4 (service `appsync`) by `aws-sigv4`, as a worker sends
/// `publishTraceEvent`.
async fn gql_signed(
    client: &reqwest::Client,
    addr: SocketAddr,
    query: &str,
    variables: Value,
) -> Result<Value, String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let url = format!("http://{addr}/graphql");
    let body = json!({ "query": query, "variables": variables }).to_string();
    let host = addr.to_string();
    let headers = [
        ("content-type", "application/json"),
        ("host", host.as_str()),
    ];
    let identity =
        aws_credential_types::Credentials::new(IAM_AKID, IAM_SECRET, None, None, "bench").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("appsync")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut request = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone());
    for h in instructions.into_parts().0 {
        request = request.header(h.name(), h.value());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("transport: {}", e.without_url()))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("http {status}: unreadable body: {}", e.without_url()))?;
    match body
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        Some(error) => Err(format!("http {status}: {error}")),
        None => body
            .get("data")
            .cloned()
            .ok_or_else(|| format!("http {status}: no data")),
    }
}

async fn gql(
    client: &reqwest::Client,
    addr: SocketAddr,
    key: &str,
    query: &str,
    variables: Value,
) -> Result<Value, String> {
    let response = client
        .post(format!("http://{addr}/graphql"))
        .header("x-api-key", key)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .map_err(|e| format!("transport: {}", e.without_url()))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("http {status}: unreadable body: {}", e.without_url()))?;
    if let Some(error) = body
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        let kind = error
            .get("errorType")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let message = error.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("http {status}: {kind}: {message}"));
    }
    if !status.is_success() {
        return Err(format!("http {status}"));
    }
    body.get("data")
        .cloned()
        .ok_or_else(|| format!("http {status}: no data"))
}

/// What `createOrder` answers.
struct Accepted {
    trace_id: String,
    accepted_at: Option<chrono::DateTime<chrono::FixedOffset>>,
}

async fn create_order(
    client: &reqwest::Client,
    addr: SocketAddr,
    customer: &str,
) -> Result<Accepted, String> {
    let data = gql(
        client,
        addr,
        USER_KEY,
        CREATE_ORDER,
        json!({ "i": order_input(customer) }),
    )
    .await?;
    let trace_id = data
        .pointer("/createOrder/traceId")
        .and_then(Value::as_str)
        .ok_or_else(|| "createOrder: no traceId".to_owned())?;
    Ok(Accepted {
        trace_id: trace_id.to_owned(),
        accepted_at: timestamp(data.pointer("/createOrder/acceptedAt")),
    })
}

/// The accept phases' client: one HTTP/1.1 keep-alive connection driven by hyper directly,
/// with the request body serialised once. The load generator shares the machine's two cores
/// with the server and PostgreSQL (pgbench, its counterpart, is a lean C client), so it should
/// cost as little CPU per request as it can; with reqwest (its pool, URL handling and timers)
/// the client cost more than twice as much CPU per request here.
struct AcceptClient {
    addr: SocketAddr,
    body: hyper::body::Bytes,
    conn: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>>,
}

#[derive(serde::Deserialize)]
struct AcceptAnswer {
    data: Option<AcceptData>,
    errors: Option<Vec<Value>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AcceptData {
    create_order: Option<AcceptedOrder>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AcceptedOrder {
    trace_id: String,
    accepted_at: Option<String>,
}

impl AcceptClient {
    fn new(addr: SocketAddr, customer: &str) -> Self {
        let body = json!({ "query": CREATE_ORDER, "variables": { "i": order_input(customer) } });
        Self {
            addr,
            body: body.to_string().into(),
            conn: None,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("transport: {e}"))?;
        tokio::spawn(conn);
        self.conn = Some(send);
        Ok(())
    }

    async fn create_order(&mut self) -> Result<Accepted, String> {
        use http_body_util::BodyExt;
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.connect().await?;
        }
        let conn = self.conn.as_mut().expect("connected");
        conn.ready().await.map_err(|e| format!("transport: {e}"))?;
        let request = http::Request::post("/graphql")
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-api-key", USER_KEY)
            .body(http_body_util::Full::new(self.body.clone()))
            .map_err(|e| e.to_string())?;
        let response = match tokio::time::timeout(Duration::from_secs(10), async {
            let response = conn.send_request(request).await?;
            let status = response.status();
            Ok::<_, hyper::Error>((status, response.into_body().collect().await?.to_bytes()))
        })
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(format!("transport: {e}"));
            }
            Err(_) => {
                self.conn = None;
                return Err("timed out".into());
            }
        };
        let (status, body) = response;
        let answer: AcceptAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("http {status}: unreadable body: {e}"))?;
        if let Some(error) = answer.errors.as_ref().and_then(|e| e.first()) {
            return Err(format!("http {status}: {error}"));
        }
        let order = answer
            .data
            .and_then(|d| d.create_order)
            .ok_or_else(|| format!("http {status}: createOrder: no traceId"))?;
        Ok(Accepted {
            trace_id: order.trace_id,
            accepted_at: order
                .accepted_at
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(&a).ok()),
        })
    }
}

async fn health(client: &reqwest::Client, addr: SocketAddr) -> Result<Value, String> {
    let response = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .map_err(|e| format!("transport: {}", e.without_url()))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("http {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("bad body: {}", e.without_url()))
}

fn counter(health: &Value, pointer: &str) -> u64 {
    health.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn timestamp(value: Option<&Value>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(value?.as_str()?).ok()
}

fn is_tm_success(event: &Value) -> bool {
    event.get("component").and_then(Value::as_str) == Some("TransactionManager")
        && event.get("status").and_then(Value::as_str) == Some("SUCCESS")
}

// ---------------------------------------------------------------------------------------------
// The server under test

/// Kills the child when dropped, so no server outlives the benchmark (panics included).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    child: ChildGuard,
    addr: SocketAddr,
}

/// Spawns `tether serve` on `addr` with a new database in `dir`; stderr goes to a log file.
/// The receiver yields the address from the stdout ready line.
fn spawn_tether(
    dir: &Path,
    name: &str,
    addr: &str,
) -> anyhow::Result<(ChildGuard, oneshot::Receiver<String>)> {
    let db = dir.join(format!("{name}.db"));
    let args = [
        "serve".to_owned(),
        "--addr".to_owned(),
        addr.to_owned(),
        "--database-url".to_owned(),
        format!("sqlite://{}", db.display()),
    ];
    spawn_tether_with(dir, name, &args, READY_API)
}

/// The stdout line of `tether serve` once it listens (followed by its address).
const READY_API: &str = "tether is ready on http://";

/// The tether binary the benchmark runs: this build's, or `TETHER_BENCH_TETHER_BIN` (another
/// build of tether, to measure two versions side by side in alternating runs).
fn tether_bin() -> std::ffi::OsString {
    std::env::var_os("TETHER_BENCH_TETHER_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tether").into())
}

/// Said in a written report's header when another build than this tree's was measured.
fn tether_bin_note() -> String {
    match std::env::var_os("TETHER_BENCH_TETHER_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => format!(
            " tether was {} (TETHER_BENCH_TETHER_BIN), not this tree's build.",
            bin.to_string_lossy()
        ),
        None => String::new(),
    }
}

/// Spawns the tether binary with `args` and the benchmark's API keys; stderr goes to a log
/// file. The receiver yields what follows `ready` on the first stdout line that contains it.
fn spawn_tether_with(
    dir: &Path,
    name: &str,
    args: &[String],
    ready: &'static str,
) -> anyhow::Result<(ChildGuard, oneshot::Receiver<String>)> {
    let stderr = File::create(dir.join(format!("{name}.stderr.log")))?;
    let mut child = Command::new(tether_bin())
        .args(args)
        .args(["--api-keys", "alice:alice-key"])
        // Publishing trace events is `@aws_iam`: the bench signs it like a worker would.
        .args(["--auth-additional", "AWS_IAM"])
        .args(["--iam-keys", &format!("bench:{IAM_AKID}:{IAM_SECRET}")])
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .context("spawning tether")?;
    let stdout = child.stdout.take();
    let guard = ChildGuard(child);
    let (tx, rx) = oneshot::channel();
    let mut log = File::create(dir.join(format!("{name}.stdout.log")))?;
    if let Some(stdout) = stdout {
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Reads to the end so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split(ready).nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
    }
    Ok((guard, rx))
}

impl Server {
    async fn start(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let (child, ready) = spawn_tether(dir, name, "127.0.0.1:0")?;
        Self::ready(name, child, ready).await
    }

    /// Waits for the ready line of a spawned `tether serve`.
    async fn ready(
        name: &str,
        child: ChildGuard,
        ready: oneshot::Receiver<String>,
    ) -> anyhow::Result<Self> {
        let addr = timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| anyhow!("{name}: no ready line within 30 s"))?
            .map_err(|_| anyhow!("{name}: exited before it was ready (see {name}.stderr.log)"))?;
        let addr = addr.split('/').next().unwrap_or_default();
        let addr = addr
            .parse()
            .with_context(|| format!("ready line address {addr:?}"))?;
        Ok(Server { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// Whether the process is still running (a crash shows up as an exit status).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.0.try_wait().ok().flatten()
    }
}

// ---------------------------------------------------------------------------------------------
// (f) Cold start

struct ColdStart {
    times: Vec<Duration>,
    rss_kib: Vec<u64>,
    errors: Errors,
}

async fn cold_starts(dir: &Path, runs: usize) -> ColdStart {
    let mut result = ColdStart {
        times: Vec::new(),
        rss_kib: Vec::new(),
        errors: Errors::default(),
    };
    for i in 0..runs {
        match cold_start(dir, i).await {
            Ok((time, rss)) => {
                result.times.push(time);
                result.rss_kib.extend(rss);
            }
            Err(e) => result.errors.add(format!("{e:#}")),
        }
    }
    result.times.sort();
    result.rss_kib.sort();
    result
}

async fn cold_start(dir: &Path, i: usize) -> anyhow::Result<(Duration, Option<u64>)> {
    let port = free_port()?;
    let client = {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        reqwest::Client::builder()
    }
    .timeout(Duration::from_secs(1))
    .build()?;
    let url = format!("http://127.0.0.1:{port}/health");
    let start = Instant::now();
    let (child, _ready) = spawn_tether(dir, &format!("cold-{i}"), &format!("127.0.0.1:{port}"))?;
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == reqwest::StatusCode::OK
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("cold start {i}: /health did not answer 200 within 30 s");
        }
        sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let rss = rss_kib(child.0.id());
    drop(child);
    Ok((elapsed, rss))
}

// ---------------------------------------------------------------------------------------------
// (a) Raw SQLite insert rate

#[derive(Clone, Copy, PartialEq)]
enum RawMode {
    /// A 32-connection pool; writers contend on SQLite's lock with `busy_timeout`.
    Pool,
    /// One connection behind an async mutex, like tether's writer.
    Mutex,
}

struct RawRun {
    inserts: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: Errors,
}

impl RawRun {
    fn rate(&self) -> f64 {
        per_s(self.inserts, self.elapsed)
    }
}

fn raw_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
}

const RAW_TABLE: &str =
    "CREATE TABLE raw (id TEXT PRIMARY KEY, payload TEXT NOT NULL, created_at INTEGER NOT NULL)";
const RAW_INSERT: &str = "INSERT INTO raw (id, payload, created_at) VALUES (?1, ?2, ?3)";

/// Where the inserts go: a pool, or one connection behind a mutex.
#[derive(Clone)]
enum RawTarget {
    Pool(sqlx::SqlitePool),
    Mutex(Arc<tokio::sync::Mutex<SqliteConnection>>),
}

impl RawTarget {
    async fn insert(&self, payload: &str) -> Result<(), sqlx::Error> {
        let query = sqlx::query(RAW_INSERT)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(payload)
            .bind(chrono::Utc::now().timestamp_millis());
        match self {
            RawTarget::Pool(pool) => query.execute(pool).await.map(drop),
            RawTarget::Mutex(conn) => query.execute(&mut *conn.lock().await).await.map(drop),
        }
    }
}

async fn raw_inserts(
    path: &Path,
    mode: RawMode,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<RawRun> {
    let options = raw_options(path);
    let mut setup = SqliteConnection::connect_with(&options).await?;
    sqlx::query(RAW_TABLE).execute(&mut setup).await?;
    let target = match mode {
        RawMode::Pool => {
            setup.close().await?;
            let pool = SqlitePoolOptions::new()
                .max_connections(concurrency as u32)
                .min_connections(concurrency as u32)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?;
            RawTarget::Pool(pool)
        }
        RawMode::Mutex => RawTarget::Mutex(Arc::new(tokio::sync::Mutex::new(setup))),
    };
    let payload = json!({ "input": order_input("c-raw") }).to_string();
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            let payload = payload.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match target.insert(&payload).await {
                        Ok(()) => latencies.push(t0.elapsed()),
                        Err(e) => errors.add(e.to_string()),
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = join_latencies(tasks, &errors).await;
    let elapsed = start.elapsed();
    if let RawTarget::Pool(pool) = target {
        pool.close().await;
    }
    latencies.sort();
    let errors = Arc::try_unwrap(errors).unwrap_or_default();
    Ok(RawRun {
        inserts: latencies.len() as u64,
        elapsed,
        latencies,
        errors,
    })
}

// ---------------------------------------------------------------------------------------------
// (b) Accepts and (c) execution

struct AcceptRun {
    accepted: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: Errors,
    /// CPU cores the server and this process kept busy during the phase.
    server_cores: Option<f64>,
    bench_cores: Option<f64>,
    /// The trace IDs answered, in no particular order.
    trace_ids: Vec<String>,
}

async fn run_accepts(addr: SocketAddr, concurrency: usize, duration: Duration) -> AcceptRun {
    run_accepts_bounded(addr, concurrency, duration, None).await
}

/// Like `run_accepts`, but with at most `budget` requests in all (when given).
async fn run_accepts_bounded(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    budget: Option<u64>,
) -> AcceptRun {
    let errors = Arc::new(Errors::default());
    let tickets = Arc::new(std::sync::atomic::AtomicI64::new(
        budget.map_or(i64::MAX, |b| b as i64),
    ));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let errors = errors.clone();
            let tickets = tickets.clone();
            tokio::spawn(async move {
                // One client per task: one keep-alive connection each.
                let mut client = AcceptClient::new(addr, &format!("c-{c}"));
                let mut latencies = Vec::new();
                let mut ids = Vec::new();
                while Instant::now() < deadline && tickets.fetch_sub(1, Ordering::Relaxed) > 0 {
                    let t0 = Instant::now();
                    match client.create_order().await {
                        Ok(a) => {
                            latencies.push(t0.elapsed());
                            ids.push(a.trace_id);
                        }
                        Err(e) => {
                            errors.add(e);
                            // Do not spin if the server is gone.
                            sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (latencies, ids)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut trace_ids = Vec::new();
    for task in tasks {
        match task.await {
            Ok((l, ids)) => {
                latencies.extend(l);
                trace_ids.extend(ids);
            }
            Err(e) => errors.add(format!("task: {e}")),
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    AcceptRun {
        accepted: latencies.len() as u64,
        elapsed,
        latencies,
        errors: Arc::try_unwrap(errors).unwrap_or_default(),
        server_cores: None,
        bench_cores: None,
        trace_ids,
    }
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    committed: u64,
}

/// Samples `executor.committed` every 50 ms until stopped (or 15 minutes, whichever first).
fn spawn_sampler(
    addr: SocketAddr,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = http_client();
        let hard_stop = Instant::now() + Duration::from_secs(900);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
            tick.tick().await;
            match health(&client, addr).await {
                Ok(h) => {
                    let sample = Sample {
                        at: Instant::now(),
                        committed: counter(&h, "/executor/committed"),
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }
                Err(e) => errors.add(format!("/health: {e}")),
            }
        }
    })
}

struct Drain {
    /// From the first accept until `committed` reached the number accepted (None: it did not
    /// within the deadline).
    drain_time: Option<Duration>,
    committed: u64,
    /// Commands executed per second while the accept load was running.
    rate_during_accepts: f64,
    /// Commands executed per second after the accept load stopped (no competing accepts).
    rate_after_accepts: Option<f64>,
    /// Commands executed per second over the time the executor was busy.
    busy_rate: Option<f64>,
    /// CPU cores the server kept busy after the accepts stopped (the executor alone).
    drain_server_cores: Option<f64>,
    /// Health counters after the drain.
    executor: Value,
    sample_errors: Errors,
}

async fn accepts_and_drain(server: &Server, opts: &Opts) -> anyhow::Result<(AcceptRun, Drain)> {
    let addr = server.addr;
    let client = http_client();
    let before = health(&client, addr)
        .await
        .map_err(|e| anyhow!("/health: {e}"))?;
    let base = counter(&before, "/executor/committed");
    let samples = Arc::new(Mutex::new(vec![]));
    let stop = Arc::new(AtomicBool::new(false));
    let sample_errors = Arc::new(Errors::default());
    let mut sampler = spawn_sampler(addr, samples.clone(), stop.clone(), sample_errors.clone());

    let pid = server.pid().to_string();
    let (server_cpu, bench_cpu) = (cpu_seconds(&pid), cpu_seconds("self"));
    let start = Instant::now();
    let mut run = run_accepts(addr, opts.concurrency, opts.duration).await;
    let accept_end = Instant::now();
    let server_cpu_end = cpu_seconds(&pid);
    run.server_cores = cores(server_cpu, server_cpu_end, accept_end - start);
    run.bench_cores = cores(bench_cpu, cpu_seconds("self"), accept_end - start);
    let target = base + run.accepted;

    let snapshot = || samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deadline = accept_end + opts.drain_deadline;
    loop {
        let last = snapshot().last().copied();
        if last.is_some_and(|s| s.committed >= target) || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let drain_server_cores = cores(server_cpu_end, cpu_seconds(&pid), accept_end.elapsed());
    stop.store(true, Ordering::Relaxed);
    if timeout(Duration::from_secs(15), &mut sampler)
        .await
        .is_err()
    {
        sampler.abort();
    }
    let samples = snapshot();

    let done = samples.iter().find(|s| s.committed >= target).copied();
    let at_accept_end = samples
        .iter()
        .rev()
        .find(|s| s.at <= accept_end)
        .map_or(base, |s| s.committed);
    // The executor is busy from the last sample that showed no progress yet.
    let busy_from = samples
        .iter()
        .take_while(|s| s.committed == base)
        .last()
        .map_or(start, |s| s.at);
    let after = health(&client, addr).await.unwrap_or(Value::Null);
    let drain = Drain {
        drain_time: done.map(|d| d.at - start),
        committed: after
            .pointer("/executor/committed")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| samples.last().map_or(base, |s| s.committed))
            - base,
        rate_during_accepts: per_s(at_accept_end - base, accept_end - start),
        rate_after_accepts: done.map(|d| per_s(target - at_accept_end, d.at - accept_end)),
        busy_rate: done.map(|d| per_s(run.accepted, d.at - busy_from)),
        drain_server_cores,
        executor: after.get("executor").cloned().unwrap_or(Value::Null),
        sample_errors: Arc::try_unwrap(sample_errors).unwrap_or_default(),
    };
    Ok((run, drain))
}

// ---------------------------------------------------------------------------------------------
// WebSocket client (graphql-transport-ws)

/// Opens a WebSocket and completes `connection_init` / `connection_ack`.
async fn ws_connect(addr: SocketAddr, key: &str) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .map_err(|e| format!("ws request: {e}"))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    // Small buffers: the subscription phase holds thousands of these in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| "ws connect: timeout".to_owned())?
    .map_err(|e| format!("ws connect: {e}"))?;
    let init = json!({ "type": "connection_init", "payload": { "x-api-key": key } });
    ws.send(Message::text(init.to_string()))
        .await
        .map_err(|e| format!("ws send init: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, ws.next()).await {
            Err(_) => return Err("ws: no connection_ack within 20 s".into()),
            Ok(None) => return Err("ws: closed before connection_ack".into()),
            Ok(Some(Err(e))) => return Err(format!("ws read: {e}")),
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                match frame.get("type").and_then(Value::as_str) {
                    Some("connection_ack") => return Ok(ws),
                    Some("ping") => {
                        let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                    _ => return Err(format!("ws: expected connection_ack, got {text}")),
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(format!("ws: closed before connection_ack: {frame:?}"));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn subscribe_frame(id: &str, trace_id: &str) -> Message {
    Message::text(
        json!({
            "id": id,
            "type": "subscribe",
            "payload": { "query": ON_TRACE_EVENT, "variables": { "t": trace_id } },
        })
        .to_string(),
    )
}

/// A frame from the server, as the benchmark cares about it.
enum Frame {
    /// A `next` for subscription `id` carrying one trace event.
    Event {
        id: String,
        event: Value,
    },
    /// An `error` for subscription `id`.
    Error {
        id: String,
        payload: Value,
    },
    Ping,
    Other,
}

fn parse_frame(text: &str) -> Frame {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Frame::Other;
    };
    let id = frame
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match frame.get("type").and_then(Value::as_str) {
        Some("next") => match frame.pointer("/payload/data/onTraceEvent") {
            Some(event) if event.is_object() => Frame::Event {
                id,
                event: event.clone(),
            },
            _ => Frame::Error {
                id,
                payload: frame.get("payload").cloned().unwrap_or_default(),
            },
        },
        Some("error") => Frame::Error {
            id,
            payload: frame.get("payload").cloned().unwrap_or_default(),
        },
        Some("ping") => Frame::Ping,
        _ => Frame::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// (d) End-to-end latency

#[derive(Default)]
struct E2eRun {
    latencies: Vec<Duration>,
    /// `acceptedAt` → the SUCCESS event's `timestamp`, both from the server's clock (ms).
    server_side: Vec<Duration>,
    /// Mutation sent → its response read.
    mutation_rtt: Vec<Duration>,
    /// Where the SUCCESS was first seen.
    live: u64,
    history: u64,
    /// Seen only by re-reading the history after a second without it arriving live.
    repoll: u64,
    gap_fill: u64,
    errors: Errors,
}

async fn run_e2e(addr: SocketAddr, clients: usize, commands: usize) -> E2eRun {
    let errors = Arc::new(Errors::default());
    let per_client = commands.div_ceil(clients);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let errors = errors.clone();
            tokio::spawn(async move { e2e_client(addr, c, per_client, &errors).await })
        })
        .collect();
    let mut run = E2eRun::default();
    for task in tasks {
        match task.await {
            Ok(Ok(r)) => {
                run.latencies.extend(r.latencies);
                run.server_side.extend(r.server_side);
                run.mutation_rtt.extend(r.mutation_rtt);
                run.live += r.live;
                run.history += r.history;
                run.repoll += r.repoll;
                run.gap_fill += r.gap_fill;
            }
            Ok(Err(e)) => errors.add(e),
            Err(e) => errors.add(format!("task: {e}")),
        }
    }
    run.latencies.sort();
    run.server_side.sort();
    run.mutation_rtt.sort();
    run.errors = Arc::try_unwrap(errors).unwrap_or_default();
    run
}

#[derive(Clone, Copy, PartialEq)]
enum SeenBy {
    Live,
    History,
    /// Read from the history after a live event showed a gap in the sequence numbers: the
    /// event was committed after the first history read but before the subscription was
    /// registered on the server (graphql-transport-ws has no acknowledgement for `subscribe`).
    GapFill,
    Repoll,
}

/// The `TransactionManager` `SUCCESS` event in a `traceEvents` answer.
fn tm_success(data: &Value) -> Option<&Value> {
    data.get("traceEvents")?
        .as_array()?
        .iter()
        .find(|e| is_tm_success(e))
}

/// What one end-to-end command is waiting for: the first sight of its SUCCESS event.
struct Waiting<'a> {
    id: &'a str,
    seen: Option<(Instant, SeenBy)>,
    /// The event's own (server clock) timestamp.
    success_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    rejected: bool,
    /// Highest sequence number known, from the history or live.
    last_seq: i64,
    /// A live event skipped sequence numbers: read the history again.
    gap: bool,
}

impl<'a> Waiting<'a> {
    fn new(id: &'a str) -> Self {
        Waiting {
            id,
            seen: None,
            success_at: None,
            rejected: false,
            last_seq: 0,
            gap: false,
        }
    }

    /// Keeps the earliest sighting.
    fn note(&mut self, at: Instant, by: SeenBy, event: &Value) {
        self.success_at = self.success_at.or(timestamp(event.get("timestamp")));
        if self.seen.is_none_or(|(t, _)| at < t) {
            self.seen = Some((at, by));
        }
    }

    /// Reads a history answer: notes the SUCCESS event and the highest sequence number.
    fn history(&mut self, data: &Value, by: SeenBy) {
        let seqs = data
            .get("traceEvents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("seq").and_then(Value::as_i64));
        self.last_seq = seqs.fold(self.last_seq, i64::max);
        if let Some(event) = tm_success(data) {
            self.note(Instant::now(), by, event);
        }
    }

    /// Takes one frame; true if the server asked for a pong.
    fn take(&mut self, at: Instant, frame: Frame, errors: &Errors) -> bool {
        match frame {
            Frame::Event { id, event } if id == self.id => {
                let seq = event.get("seq").and_then(Value::as_i64).unwrap_or(0);
                if seq > self.last_seq + 1 {
                    self.gap = true;
                }
                self.last_seq = self.last_seq.max(seq);
                if is_tm_success(&event) {
                    self.note(at, SeenBy::Live, &event);
                }
            }
            Frame::Error { id, payload } if id == self.id => {
                errors.add(format!("subscription error: {payload}"));
                self.rejected = true;
            }
            Frame::Ping => return true,
            _ => {}
        }
        false
    }
}

async fn e2e_client(
    addr: SocketAddr,
    c: usize,
    commands: usize,
    errors: &Errors,
) -> Result<E2eRun, String> {
    let client = http_client();
    let ws = ws_connect(addr, USER_KEY).await?;
    let (mut sink, mut stream) = ws.split();
    // The reader stamps every frame on arrival, so the time the event was first seen does not
    // depend on what this task was doing then.
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<(Instant, Frame)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(text) = msg
                && frames_tx
                    .send((Instant::now(), parse_frame(text.as_str())))
                    .is_err()
            {
                break;
            }
        }
    });
    let mut run = E2eRun::default();
    let customer = format!("e2e-{c}");
    for n in 0..commands {
        let id = n.to_string();
        let sent = Instant::now();
        let accepted = match create_order(&client, addr, &customer).await {
            Ok(a) => a,
            Err(e) => {
                errors.add(e);
                continue;
            }
        };
        run.mutation_rtt.push(sent.elapsed());
        let trace_id = &accepted.trace_id;
        if let Err(e) = sink.send(subscribe_frame(&id, trace_id)).await {
            errors.add(format!("ws send subscribe: {e}"));
            break;
        }
        let mut wait = Waiting::new(&id);
        // Catch up on whatever happened before the subscription started.
        match gql(
            &client,
            addr,
            USER_KEY,
            TRACE_EVENTS,
            json!({ "t": trace_id }),
        )
        .await
        {
            Ok(data) => wait.history(&data, SeenBy::History),
            Err(e) => errors.add(format!("traceEvents: {e}")),
        }
        // Then live events: those already stamped, and new ones until the SUCCESS shows up.
        let deadline = sent + Duration::from_secs(15);
        let mut next_repoll = Instant::now() + Duration::from_secs(1);
        loop {
            while let Ok((at, frame)) = frames.try_recv() {
                if wait.take(at, frame, errors) {
                    let _ = sink.send(Message::text(r#"{"type":"pong"}"#)).await;
                }
            }
            if wait.seen.is_some() || wait.rejected {
                break;
            }
            if std::mem::take(&mut wait.gap) {
                match gql(
                    &client,
                    addr,
                    USER_KEY,
                    TRACE_EVENTS,
                    json!({ "t": trace_id }),
                )
                .await
                {
                    Ok(data) => wait.history(&data, SeenBy::GapFill),
                    Err(e) => errors.add(format!("traceEvents: {e}")),
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                errors.add("e2e: no SUCCESS within 15 s");
                break;
            }
            if now >= next_repoll {
                next_repoll = now + Duration::from_millis(250);
                if let Ok(data) = gql(
                    &client,
                    addr,
                    USER_KEY,
                    TRACE_EVENTS,
                    json!({ "t": trace_id }),
                )
                .await
                    && let Some(event) = tm_success(&data)
                {
                    // Loop once more: a live frame may have arrived before this answer.
                    wait.note(Instant::now(), SeenBy::Repoll, event);
                    continue;
                }
            }
            let until = tokio::time::Instant::from_std(next_repoll.min(deadline));
            if let Ok(Some((at, frame))) = tokio::time::timeout_at(until, frames.recv()).await
                && wait.take(at, frame, errors)
            {
                let _ = sink.send(Message::text(r#"{"type":"pong"}"#)).await;
            }
        }
        if let Some((at, by)) = wait.seen {
            run.latencies.push(at - sent);
            if let (Some(done), Some(accepted)) = (wait.success_at, accepted.accepted_at)
                && let Ok(d) = (done - accepted).to_std()
            {
                run.server_side.push(d);
            }
            match by {
                SeenBy::Live => run.live += 1,
                SeenBy::History => run.history += 1,
                SeenBy::GapFill => run.gap_fill += 1,
                SeenBy::Repoll => run.repoll += 1,
            }
        }
        let complete = json!({ "id": id, "type": "complete" }).to_string();
        if let Err(e) = sink.send(Message::text(complete)).await {
            errors.add(format!("ws send complete: {e}"));
            break;
        }
    }
    let _ = timeout(Duration::from_secs(2), sink.close()).await;
    reader.abort();
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// (e) Idle subscriptions

struct SubsRun {
    requested: usize,
    subscribed: u64,
    registered: u64,
    open_time: Duration,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    received: u64,
    /// Publish sent → each subscriber's receipt, sorted.
    delivery: Vec<Duration>,
    publish_errors: Errors,
    errors: Errors,
}

impl SubsRun {
    fn per_subscription_kib(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.registered > 0).then(|| (after as f64 - before as f64) / self.registered as f64)
    }
}

enum SubEvent {
    Subscribed,
    Failed(String),
    Received(Instant),
    Lost(String),
}

/// One idle subscriber: connect, subscribe, then wait for the published event until `stop`.
async fn idle_subscriber(
    addr: SocketAddr,
    trace_id: Arc<str>,
    gate: Arc<Semaphore>,
    events: mpsc::UnboundedSender<SubEvent>,
    stop: CancellationToken,
) {
    let permit = tokio::select! {
        p = gate.acquire_owned() => p,
        _ = stop.cancelled() => return,
    };
    let mut ws = match ws_connect(addr, USER_KEY).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = events.send(SubEvent::Failed(e));
            return;
        }
    };
    if let Err(e) = ws.send(subscribe_frame("1", &trace_id)).await {
        let _ = events.send(SubEvent::Failed(format!("ws send subscribe: {e}")));
        return;
    }
    drop(permit);
    let _ = events.send(SubEvent::Subscribed);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => match parse_frame(text.as_str()) {
                Frame::Event { event, .. }
                    if event.get("seq").and_then(Value::as_i64) == Some(PUBLISHED_SEQ) =>
                {
                    let _ = events.send(SubEvent::Received(Instant::now()));
                }
                Frame::Error { payload, .. } => {
                    let _ = events.send(SubEvent::Lost(format!("subscription error: {payload}")));
                }
                Frame::Ping => {
                    let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                }
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                let _ = events.send(SubEvent::Lost(format!("closed by server: {frame:?}")));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = events.send(SubEvent::Lost(format!("ws read: {e}")));
                return;
            }
            None => {
                let _ = events.send(SubEvent::Lost("ws closed".into()));
                return;
            }
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Polls `/health` until `subscribers` reaches `want`; returns the last count seen.
async fn wait_subscribers(
    client: &reqwest::Client,
    addr: SocketAddr,
    want: u64,
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    let mut last = 0;
    while Instant::now() < deadline {
        if let Ok(h) = health(client, addr).await {
            last = counter(&h, "/subscribers");
            if last == want {
                break;
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn wait_trace_succeeded(client: &reqwest::Client, addr: SocketAddr, trace_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(data) = gql(
            client,
            addr,
            USER_KEY,
            TRACE_STATE,
            json!({ "t": trace_id }),
        )
        .await
            && data.pointer("/trace/state").and_then(Value::as_str) == Some("SUCCEEDED")
        {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn run_subscriptions(server: &Server, opts: &Opts) -> anyhow::Result<SubsRun> {
    let addr = server.addr;
    let n = opts.subscriptions;
    let client = http_client();
    let trace_id: Arc<str> = create_order(&client, addr, "c-subs")
        .await
        .map_err(|e| anyhow!("creating the trace: {e}"))?
        .trace_id
        .into();
    // Let the command finish so its own events do not arrive during the measurement.
    wait_trace_succeeded(&client, addr, &trace_id).await;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();

    // Warm-up: a few subscribers come and go, so one-time allocations are not counted.
    let warm = 20;
    let gate = Arc::new(Semaphore::new(opts.open_concurrency));
    let warm_stop = CancellationToken::new();
    let warm_tasks: Vec<_> = (0..warm)
        .map(|_| {
            tokio::spawn(idle_subscriber(
                addr,
                trace_id.clone(),
                gate.clone(),
                events_tx.clone(),
                warm_stop.clone(),
            ))
        })
        .collect();
    wait_subscribers(&client, addr, warm, Duration::from_secs(20)).await;
    warm_stop.cancel();
    for t in warm_tasks {
        let _ = timeout(Duration::from_secs(5), t).await;
    }
    while events.try_recv().is_ok() {}
    let leftover = wait_subscribers(&client, addr, 0, Duration::from_secs(10)).await;
    sleep(Duration::from_millis(500)).await;
    let rss_before_kib = server.rss_kib();

    let errors = Errors::default();
    if leftover != 0 {
        errors.add(format!(
            "{leftover} warm-up subscribers still registered after their sockets closed"
        ));
    }
    let open_start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(idle_subscriber(
                addr,
                trace_id.clone(),
                gate.clone(),
                events_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(events_tx);

    let mut subscribed = 0u64;
    let mut failed = 0u64;
    let mut received = Vec::new();
    let open_deadline = Instant::now() + Duration::from_secs(180);
    while (subscribed + failed) < n as u64 {
        let left = open_deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(SubEvent::Subscribed)) => subscribed += 1,
            Ok(Some(SubEvent::Failed(e))) => {
                failed += 1;
                errors.add(e);
            }
            Ok(Some(SubEvent::Lost(e))) => errors.add(e),
            Ok(Some(SubEvent::Received(at))) => received.push(at),
            Ok(None) => break,
            Err(_) => {
                errors.add(format!(
                    "opening: only {} of {n} finished within 180 s",
                    subscribed + failed
                ));
                break;
            }
        }
    }
    let registered = wait_subscribers(
        &client,
        addr,
        leftover + subscribed,
        Duration::from_secs(60),
    )
    .await
    .saturating_sub(leftover);
    let open_time = open_start.elapsed();
    if registered != subscribed {
        errors.add(format!(
            "/health shows {registered} subscribers for {subscribed} subscribed connections"
        ));
    }
    sleep(Duration::from_secs(1)).await;
    let rss_after_kib = server.rss_kib();

    // One IAM-signed publish; every subscriber should get it.
    let publish_errors = Errors::default();
    let event = json!({
        "traceId": &*trace_id, "seq": PUBLISHED_SEQ, "component": "Bench", "status": "SUCCESS",
        "timestamp": "2026-01-01T00:00:00.000Z", "state": "SUCCEEDED",
    });
    let published_at = Instant::now();
    if let Err(e) = gql_signed(&client, addr, PUBLISH, json!({ "e": event })).await {
        publish_errors.add(format!("publishTraceEvent: {e}"));
    }
    let receive_deadline = Instant::now() + Duration::from_secs(60);
    while (received.len() as u64) < subscribed {
        let left = receive_deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(SubEvent::Received(at))) => received.push(at),
            Ok(Some(SubEvent::Lost(e) | SubEvent::Failed(e))) => errors.add(e),
            Ok(Some(SubEvent::Subscribed)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut delivery: Vec<Duration> = received
        .iter()
        .map(|at| at.saturating_duration_since(published_at))
        .collect();
    delivery.sort();

    stop.cancel();
    let close_deadline = Instant::now() + Duration::from_secs(30);
    for t in tasks {
        let left = close_deadline.saturating_duration_since(Instant::now());
        if timeout(left, t).await.is_err() {
            break;
        }
    }
    Ok(SubsRun {
        requested: n,
        subscribed,
        registered,
        open_time,
        rss_before_kib,
        rss_after_kib,
        received: received.len() as u64,
        delivery,
        publish_errors,
        errors,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    opts_note: String,
    cold: ColdStart,
    raw_pool: Option<RawRun>,
    raw_mutex: Option<RawRun>,
    accepts: Option<(AcceptRun, Drain)>,
    e2e: Option<E2eRun>,
    subs: Option<SubsRun>,
    /// Setup failures of whole phases.
    failures: Vec<String>,
    /// Notable lines from the servers' logs.
    server_log: Vec<String>,
    crashed: Vec<String>,
}

struct Row {
    figure: String,
    value: String,
    target: String,
}

fn row(figure: &str, value: impl Into<String>, target: &str) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: target.into(),
    }
}

impl Report {
    fn best_raw(&self) -> Option<(&'static str, f64)> {
        let pool = self.raw_pool.as_ref().map(|r| ("pool", r.rate()));
        let mutex = self.raw_mutex.as_ref().map(|r| ("mutex", r.rate()));
        match (pool, mutex) {
            (Some(p), Some(m)) => Some(if p.1 >= m.1 { p } else { m }),
            (p, m) => p.or(m),
        }
    }

    fn rows(&self, opts: &Opts) -> Vec<Row> {
        let mut rows = Vec::new();
        let c = opts.concurrency;
        for (name, raw) in [
            ("pool of 32 connections", &self.raw_pool),
            ("1 connection + mutex", &self.raw_mutex),
        ] {
            let figure = format!("(a) raw SQLite inserts/s, {name}, {c} tasks");
            rows.push(match raw {
                Some(r) => row(
                    &figure,
                    format!(
                        "{:.0}/s ({} in {:.1} s; p50 {}, p99 {}; errors: {})",
                        r.rate(),
                        r.inserts,
                        r.elapsed.as_secs_f64(),
                        ms(percentile(&r.latencies, 50.0)),
                        ms(percentile(&r.latencies, 99.0)),
                        r.errors.summary()
                    ),
                    "baseline",
                ),
                None => row(&figure, "not measured", "baseline"),
            });
        }
        let best = self.best_raw();
        if let Some((which, rate)) = best {
            rows.push(row(
                "(a) raw baseline used for the ratio",
                format!("{rate:.0}/s (the better of the two: {which})"),
                "",
            ));
        }
        if let Some((run, drain)) = &self.accepts {
            let rate = per_s(run.accepted, run.elapsed);
            rows.push(row(
                &format!("(b) accepted commands/s, {c} HTTP clients"),
                format!(
                    "{rate:.0}/s ({} in {:.1} s; errors: {})",
                    run.accepted,
                    run.elapsed.as_secs_f64(),
                    run.errors.summary()
                ),
                "",
            ));
            rows.push(row(
                "(b) accept latency p50 / p99",
                format!(
                    "{} / {}",
                    ms(percentile(&run.latencies, 50.0)),
                    ms(percentile(&run.latencies, 99.0))
                ),
                "",
            ));
            let fmt_cores = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{c:.2}"));
            rows.push(row(
                "(b) CPU cores busy during accepts: server / bench client",
                format!(
                    "{} / {}",
                    fmt_cores(run.server_cores),
                    fmt_cores(run.bench_cores)
                ),
                "",
            ));
            if let Some((_, raw)) = best {
                rows.push(row(
                    "(b) ratio accepted/s ÷ best raw inserts/s",
                    format!("{:.2}", if raw > 0.0 { rate / raw } else { 0.0 }),
                    "≥ 1.0",
                ));
            }
            rows.push(row(
                "(c) executed commands/s (accepted ÷ drain time from first accept)",
                match drain.drain_time {
                    Some(t) => format!(
                        "{:.0}/s (drain {:.2} s)",
                        per_s(run.accepted, t),
                        t.as_secs_f64()
                    ),
                    None => format!(
                        "did not drain within {} s: {} of {} committed",
                        opts.drain_deadline.as_secs(),
                        drain.committed,
                        run.accepted
                    ),
                },
                "",
            ));
            rows.push(row(
                "(c) executor rate while busy",
                drain
                    .busy_rate
                    .map_or("n/a".into(), |r| format!("{r:.0}/s")),
                "",
            ));
            rows.push(row(
                "(c) executor rate during accepts / after accepts stopped",
                format!(
                    "{:.0}/s / {}",
                    drain.rate_during_accepts,
                    drain
                        .rate_after_accepts
                        .map_or("n/a".into(), |r| format!("{r:.0}/s"))
                ),
                "",
            ));
            rows.push(row(
                "(c) server CPU cores busy after accepts stopped (executor alone)",
                fmt_cores(drain.drain_server_cores),
                "",
            ));
            rows.push(row(
                "(c) executor counters after the drain",
                format!(
                    "{} (/health errors: {})",
                    drain.executor,
                    drain.sample_errors.summary()
                ),
                "",
            ));
        }
        if let Some(e2e) = &self.e2e {
            rows.push(row(
                &format!(
                    "(d) end-to-end latency p50 / p99, {} clients, {} commands",
                    opts.e2e_clients,
                    e2e.latencies.len()
                ),
                format!(
                    "{} / {} (max {}; first seen live {}, in history {}, by gap fill {}, by re-poll {}; errors: {})",
                    ms(percentile(&e2e.latencies, 50.0)),
                    ms(percentile(&e2e.latencies, 99.0)),
                    ms(percentile(&e2e.latencies, 100.0)),
                    e2e.live,
                    e2e.history,
                    e2e.gap_fill,
                    e2e.repoll,
                    e2e.errors.summary()
                ),
                "",
            ));
            rows.push(row(
                "(d) of which on the server: acceptedAt → SUCCESS timestamp, p50 / p99",
                format!(
                    "{} / {} (server clock, ms precision)",
                    ms(percentile(&e2e.server_side, 50.0)),
                    ms(percentile(&e2e.server_side, 99.0))
                ),
                "",
            ));
            rows.push(row(
                "(d) of which the createOrder round trip, p50 / p99",
                format!(
                    "{} / {}",
                    ms(percentile(&e2e.mutation_rtt, 50.0)),
                    ms(percentile(&e2e.mutation_rtt, 99.0))
                ),
                "",
            ));
        }
        if let Some(s) = &self.subs {
            rows.push(row(
                "(e) idle subscriptions registered",
                format!(
                    "{} of {} (subscribed {}; opened in {:.1} s; errors: {})",
                    s.registered,
                    s.requested,
                    s.subscribed,
                    s.open_time.as_secs_f64(),
                    s.errors.summary()
                ),
                "",
            ));
            rows.push(row(
                "(e) server RSS before / after",
                format!(
                    "{} / {}",
                    s.rss_before_kib
                        .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                    s.rss_after_kib
                        .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                ),
                "",
            ));
            rows.push(row(
                "(e) RSS per subscription",
                s.per_subscription_kib()
                    .map_or("n/a".into(), |k| format!("{k:.1} KiB")),
                "≤ 16 KiB",
            ));
            rows.push(row(
                "(e) one publish: subscribers that received it",
                format!(
                    "{} of {} (publish errors: {})",
                    s.received,
                    s.subscribed,
                    s.publish_errors.summary()
                ),
                "all",
            ));
            rows.push(row(
                "(e) one publish: time until p50 / last subscriber had it",
                format!(
                    "{} / {}",
                    ms(percentile(&s.delivery, 50.0)),
                    ms(percentile(&s.delivery, 100.0))
                ),
                "",
            ));
        }
        let cold = &self.cold;
        rows.push(row(
            &format!(
                "(f) cold start to first /health 200 ({} runs)",
                cold.times.len()
            ),
            if cold.times.is_empty() {
                format!("not measured ({})", cold.errors.summary())
            } else {
                format!(
                    "median {} (min {}, max {}; errors: {})",
                    ms(percentile(&cold.times, 50.0)),
                    ms(percentile(&cold.times, 0.0)),
                    ms(percentile(&cold.times, 100.0)),
                    cold.errors.summary()
                )
            },
            "",
        ));
        let median_rss = cold
            .rss_kib
            .get(cold.rss_kib.len().saturating_sub(1) / 2)
            .map_or("n/a".into(), |k| format!("{:.1} MiB", *k as f64 / 1024.0));
        rows.push(row(
            "(f) idle RSS right after start (median)",
            median_rss,
            "",
        ));
        rows
    }

    fn text_table(&self, opts: &Opts) -> String {
        let rows = self.rows(opts);
        let width = rows
            .iter()
            .map(|r| r.figure.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for r in rows {
            let pad = width - r.figure.chars().count();
            let target = if r.target.is_empty() {
                String::new()
            } else {
                format!("   [target: {}]", r.target)
            };
            let _ = writeln!(
                out,
                "{}{}  {}{}",
                r.figure,
                " ".repeat(pad),
                r.value,
                target
            );
        }
        out
    }

    fn markdown(&self, opts: &Opts, date: &str, hash: &str, dirty: bool) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## Results ({date}, {hash})\n");
        let _ = writeln!(
            md,
            "Command: `scripts/bench{}` (`ulimit -n 65536`, then `cargo bench --bench load{}`). {}\n",
            if opts.quick { " --quick" } else { "" },
            if opts.quick { " -- --quick" } else { "" },
            self.opts_note
        );
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            md,
            "Machine: {cpus} vCPU, shared and noisy; the benchmark client and the server share \
             those CPUs and talk over 127.0.0.1, so figures move by tens of percent between runs. \
             Open-file limit: {}.{}{}\n",
            open_files_limit().map_or("unknown".into(), |n| n.to_string()),
            if dirty {
                " The working tree had uncommitted changes at the time."
            } else {
                ""
            },
            tether_bin_note()
        );
        let _ = writeln!(md, "| Figure | Value | Target |\n|---|---|---|");
        for r in self.rows(opts) {
            let cell = |s: &str| s.replace('|', "\\|");
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(&r.figure),
                cell(&r.value),
                cell(&r.target)
            );
        }
        if !self.failures.is_empty() || !self.crashed.is_empty() || !self.server_log.is_empty() {
            let _ = writeln!(md, "\nProblems seen during the run:\n");
            for f in self.failures.iter().chain(&self.crashed) {
                let _ = writeln!(md, "- {f}");
            }
            for l in &self.server_log {
                let _ = writeln!(md, "- server log: `{}`", l.replace('`', "'"));
            }
        }
        let secs = opts.duration.as_secs();
        let c = opts.concurrency;
        let _ = writeln!(md, "\nHow each figure was measured:\n");
        for line in [
            format!(
                "- (a) raw inserts: a new SQLite file opened like tether's store (WAL, \
                 `synchronous=FULL`, `busy_timeout` 10 s); {c} tasks each loop single-row \
                 autocommit `INSERT`s (uuid key, the order JSON, a timestamp) for {secs} s, \
                 (i) through a sqlx pool of {c} connections, (ii) through one connection \
                 behind a `tokio::sync::Mutex`. The ratio uses the better of the two."
            ),
            format!(
                "- (b) accepts: {c} tasks, each with its own keep-alive HTTP/1.1 connection (hyper, the body serialised once), loop \
                 `createOrder` for {secs} s against a fresh server; a request counts when it \
                 returns a `traceId`. Rate = accepted ÷ time until the last request returned; \
                 latency = request sent → response body read. CPU cores = user + system time \
                 from `/proc/<pid>/stat` over the phase ÷ its wall time."
            ),
            "- (c) execution: `/health` sampled every 50 ms from the first accept; drain time = \
             first sample with `executor.committed` ≥ accepted, measured from the first accept. \
             \"While busy\" divides by the time from the last sample without progress; \
             \"during/after\" split the count at the end of the accept phase."
                .into(),
            format!(
                "- (d) end-to-end: after the drain, {} clients each with one WebSocket; per \
                 command: send `createOrder` (HTTP), subscribe to its trace, read \
                 `traceEvents` to catch up, and wait for the `TransactionManager` `SUCCESS` \
                 event from the history or live (frames are timestamped on arrival by a reader \
                 task). Latency = mutation sent → that event first seen. A live event whose \
                 sequence number skips ahead means the history was read before the server \
                 registered the subscription: the history is read again (counted as gap \
                 fill; this is the G5 recipe a client follows). If the event has not shown \
                 up after 1 s, the history is re-read every 250 ms (counted as re-poll). \
                 Also shown: the server's own time from `acceptedAt` to the event's \
                 `timestamp` (server clock, ms precision) and the `createOrder` round trip.",
                opts.e2e_clients
            ),
            format!(
                "- (e) subscriptions: a fresh server; one trace created by alice; 20 warm-up \
                 subscribers open and close; VmRSS read; {} WebSocket connections opened \
                 ({} at a time), each `connection_init` → `connection_ack` → one \
                 `onTraceEvent` subscription; registration confirmed by `/health` \
                 `subscribers`; VmRSS read 1 s later. Per subscription = RSS delta ÷ \
                 registered (each includes its own connection). Then one \
                 `publishTraceEvent` signed with SigV4; delivery time = publish sent → \
                 frame read by each subscriber task.",
                opts.subscriptions, opts.open_concurrency
            ),
            format!(
                "- (f) cold start: {} times, a free port is picked, the server spawned on a \
                 new database, and `GET /health` polled every 5 ms from just before the spawn \
                 until it answers 200; VmRSS read right then.",
                opts.cold_starts
            ),
        ] {
            let _ = writeln!(md, "{line}");
        }
        md
    }
}

/// Replaces the section of `BENCHMARKS.md` whose heading starts with `heading` (e.g.
/// `## Results (`) up to the next `## ` heading, or appends one; the rest of the file stays.
fn write_benchmarks_md(path: &Path, heading: &str, section: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = existing.lines().collect();
    let start = lines.iter().position(|l| l.starts_with(heading));
    let mut out = String::new();
    match start {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map_or(lines.len(), |i| start + 1 + i);
            for l in &lines[..start] {
                let _ = writeln!(out, "{l}");
            }
            out.push_str(section);
            if end < lines.len() {
                out.push('\n');
                for l in &lines[end..] {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        None if existing.trim().is_empty() => {
            out.push_str("# Benchmarks\n\n");
            out.push_str(section);
        }
        None => {
            out.push_str(existing.trim_end());
            out.push_str("\n\n");
            out.push_str(section);
        }
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The text of a log line without its colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Warnings, errors and panics from the servers' logs (at most `max` lines).
fn scan_logs(dir: &Path, max: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if !path.to_string_lossy().ends_with(".log") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for line in text.lines().map(strip_ansi) {
            let noteworthy =
                line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked");
            if noteworthy {
                let entry = counts.entry(format!("{name}: {line}")).or_default();
                *entry += 1;
            }
        }
    }
    for (line, n) in counts {
        if found.len() >= max {
            found.push("… (more in the logs)".into());
            break;
        }
        let line: String = line.chars().take(300).collect();
        found.push(if n > 1 {
            format!("{line} (×{n})")
        } else {
            line
        });
    }
    found
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = Opts::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir = root
        .join("target")
        .join("bench-tmp")
        .join(format!("{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("load: working in {}", dir.display());

    let mut failures = Vec::new();
    if let Some(limit) = open_files_limit() {
        // Each process (this one and the server) holds one descriptor per subscriber.
        let need = opts.subscriptions as u64 + 512;
        if limit < need {
            let fit = limit.saturating_sub(512) as usize;
            failures.push(format!(
                "open-file limit {limit} is too low for {} subscriptions (run through \
                 scripts/bench, which raises it); measured {fit} instead",
                opts.subscriptions
            ));
            opts.subscriptions = fit;
        }
    }
    let opts_note = format!(
        "Mode: {}: {} s phases, {} tasks/clients, {} end-to-end commands, {} subscriptions.",
        if opts.quick { "quick" } else { "full" },
        opts.duration.as_secs(),
        opts.concurrency,
        opts.e2e_commands,
        opts.subscriptions
    );
    eprintln!("load: {opts_note}");

    if opts.pg {
        return pg::main(&root, &dir, &opts).await;
    }
    if opts.sqs {
        return pg::sqs::main(&root, &dir, &opts).await;
    }

    let mut crashed = Vec::new();
    let (cold, raw_pool, raw_mutex, accepts, e2e) = if opts.only_subs {
        let cold = ColdStart {
            times: Vec::new(),
            rss_kib: Vec::new(),
            errors: Errors::default(),
        };
        (cold, None, None, None, None)
    } else {
        eprintln!("load: (f) cold start …");
        let cold = cold_starts(&dir, opts.cold_starts).await;

        eprintln!("load: (a) raw SQLite inserts, pool …");
        let raw_pool = raw_inserts(
            &dir.join("raw-pool.db"),
            RawMode::Pool,
            opts.concurrency,
            opts.duration,
        )
        .await
        .map_err(|e| failures.push(format!("raw inserts (pool): {e:#}")))
        .ok();
        eprintln!("load: (a) raw SQLite inserts, one connection + mutex …");
        let raw_mutex = raw_inserts(
            &dir.join("raw-mutex.db"),
            RawMode::Mutex,
            opts.concurrency,
            opts.duration,
        )
        .await
        .map_err(|e| failures.push(format!("raw inserts (mutex): {e:#}")))
        .ok();

        let (accepts, e2e) = match Server::start(&dir, "load").await {
            Ok(mut server) => {
                eprintln!("load: (b, c) accepts and drain on {} …", server.addr);
                let accepts = accepts_and_drain(&server, &opts)
                    .await
                    .map_err(|e| failures.push(format!("accepts: {e:#}")))
                    .ok();
                eprintln!("load: (d) end-to-end latency …");
                let e2e = run_e2e(server.addr, opts.e2e_clients, opts.e2e_commands).await;
                if let Some(status) = server.exited() {
                    crashed.push(format!("the load server exited during the run: {status}"));
                }
                (accepts, Some(e2e))
            }
            Err(e) => {
                failures.push(format!("starting the load server: {e:#}"));
                (None, None)
            }
        };
        (cold, raw_pool, raw_mutex, accepts, e2e)
    };

    let subs = match Server::start(&dir, "subs").await {
        Ok(mut server) => {
            eprintln!(
                "load: (e) {} idle subscriptions on {} …",
                opts.subscriptions, server.addr
            );
            let subs = run_subscriptions(&server, &opts)
                .await
                .map_err(|e| failures.push(format!("subscriptions: {e:#}")))
                .ok();
            if let Some(status) = server.exited() {
                crashed.push(format!(
                    "the subscription server exited during the run: {status}"
                ));
            }
            subs
        }
        Err(e) => {
            failures.push(format!("starting the subscription server: {e:#}"));
            None
        }
    };

    let report = Report {
        opts_note,
        cold,
        raw_pool,
        raw_mutex,
        accepts,
        e2e,
        subs,
        failures,
        server_log: scan_logs(&dir, 20),
        crashed,
    };

    println!("\n{}", report.text_table(&opts));
    for f in report.failures.iter().chain(&report.crashed) {
        println!("problem: {f}");
    }
    for l in &report.server_log {
        println!("server log: {l}");
    }

    if opts.write {
        let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let hash =
            git(&root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        let section = report.markdown(&opts, &date, &hash, dirty);
        let path = root.join("BENCHMARKS.md");
        write_benchmarks_md(&path, "## Results (", &section)?;
        println!("wrote {}", path.display());
    }
    if opts.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
