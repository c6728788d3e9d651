//! Many processes on one PostgreSQL: the real binary as API replicas (`serve --role api`) and
//! workers (`tether worker`), real HTTP and WebSocket clients, processes killed with SIGKILL
//! and PostgreSQL crash-restarted while commands run. Afterwards, whatever died:
//!
//! * every submitted command has exactly one trace (its idempotency key) and one terminal
//!   state, reached once;
//! * every successful order exists exactly once; attempts never exceed 4;
//! * every subscriber saw its trace's events in order, without gaps, up to the last one —
//!   with the G5 client recipe (subscribe, read the history after the last seen event,
//!   resubscribe elsewhere when its replica dies).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CREATE_ORDER, WsClient, scratch_dir};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::RwLock;

const KEY: &str = "alice-key";
const EVENTS: &str = "query($t: ID!, $a: Int) { traceEvents(traceId: $t, afterSeq: $a) { seq component status state } }";
const SUBSCRIBE: &str =
    "subscription($t: ID!) { onTraceEvent(traceId: $t) { seq component status state } }";

/// One tether process.
struct Tether {
    child: Child,
    /// The API's address; `None` for a worker.
    addr: Option<SocketAddr>,
}

/// Short timings, so leases, retries and sweeps play out within seconds.
const FAST: &[(&str, &str)] = &[
    ("TETHER_FAULT_INJECTION", "true"),
    ("TETHER_LEASE_MS", "2000"),
    ("TETHER_HEARTBEAT_MS", "400"),
    ("TETHER_SWEEP_MS", "200"),
    ("TETHER_RETRY_BASE_MS", "50"),
    ("TETHER_RETRY_FACTOR", "2"),
    ("TETHER_POLL_MS", "200"),
    ("TETHER_DB_POOL_SIZE", "8"),
];

impl Tether {
    /// Starts `tether <args>` with the short timings of [`FAST`].
    async fn start(args: &[&str], database_url: &str, logs: &std::path::Path) -> Self {
        Self::start_with(args, database_url, logs, FAST, &[]).await
    }

    /// Starts `tether <args>` with the default timings changed by `env`; returns once it is
    /// ready.
    async fn start_with(
        args: &[&str],
        database_url: &str,
        logs: &std::path::Path,
        env: &[(&str, &str)],
        extra: &[(String, String)],
    ) -> Self {
        let log = logs.join(format!("{}-{}.log", args[0], uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("TETHER_API_KEYS", format!("alice:{KEY}"))
            .env("TETHER_ADMIN_API_KEYS", "")
            .envs(env.iter().copied())
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawning tether");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("reading stdout") {
                if line.starts_with("tether worker ready") {
                    return None;
                }
                if let Some(rest) = line.strip_prefix("tether is ready on http://") {
                    let addr = rest.split('/').next().expect("an address");
                    return Some(addr.parse::<SocketAddr>().expect("a socket address"));
                }
            }
            panic!("tether exited before it was ready; see {}", log.display())
        })
        .await
        .unwrap_or_else(|_| panic!("tether not ready within 30 s; see {}", log.display()));
        // Keep draining stdout so a late print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Tether { child, addr: ready }
    }

    /// SIGKILL: no shutdown, no releases, nothing flushed.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("reaping the killed process");
    }
}

impl Tether {
    /// SIGTERM; returns the exit status and how long the process took to stop.
    async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("a running process").to_string();
        let t = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("stopped within 20 s")
            .expect("reaping");
        (status, t.elapsed())
    }
}

/// Where clients go: the API replicas that are still up, first choice first.
type Replicas = Arc<RwLock<Vec<SocketAddr>>>;

async fn gql(http: &reqwest::Client, addr: SocketAddr, query: &str, vars: Value) -> Option<Value> {
    let resp = http
        .post(format!("http://{addr}/graphql"))
        .header("x-api-key", KEY)
        .json(&json!({ "query": query, "variables": vars }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let body: Value = resp.json().await.ok()?;
    body.get("errors").is_none().then_some(body)
}

/// Submits a createOrder, retrying on other replicas (same idempotency key) until one answers.
async fn submit(
    http: &reqwest::Client,
    replicas: &Replicas,
    first: usize,
    input: Value,
    key: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = first;
    loop {
        let addrs = replicas.read().await.clone();
        let addr = addrs[turn % addrs.len()];
        if let Some(body) = gql(http, addr, CREATE_ORDER, json!({ "i": input, "k": key })).await {
            return body["data"]["createOrder"]["traceId"]
                .as_str()
                .expect("a trace id")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no replica accepted {key}");
        turn += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one subscriber saw of its trace.
#[derive(Debug, Default)]
struct Seen {
    /// Live events per subscription, in arrival order. A new subscription starts when its
    /// replica died (a new connection) or when the server refused it (e.g. while the
    /// database was down it could not check the trace's owner).
    live: Vec<Vec<i64>>,
    /// Connections opened: more than one only when a replica died.
    connections: usize,
    /// Subscriptions the server refused with an error.
    refused: Vec<Value>,
    /// Every event, from live frames and history reads.
    all: HashMap<i64, Value>,
    last: i64,
}

impl Seen {
    fn take(&mut self, e: &Value) {
        let seq = e["seq"].as_i64().expect("seq");
        self.last = self.last.max(seq);
        self.all.insert(seq, e.clone());
    }

    /// The last event of a trace that ended: the EventEmitter's report of its final outbox
    /// row (every command in these tests ends with one: OrderCreated or its dead letter).
    fn done(&self) -> bool {
        self.all.get(&self.last).is_some_and(|e| {
            e["component"] == "EventEmitter"
                && ["SUCCEEDED", "DEAD_LETTERED"].contains(&e["state"].as_str().unwrap_or(""))
        })
    }
}

/// Follows a trace until it ended, from `replicas[first]`, moving to another replica when
/// its connection dies. Each subscription is followed by a history read after the last
/// event seen, which closes the window before the subscription took hold (G5's recipe).
async fn follow(http: reqwest::Client, replicas: Replicas, first: usize, trace: String) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut turn = first;
    'connections: while !seen.done() {
        assert!(
            Instant::now() < deadline,
            "trace {trace} did not end: {seen:?}"
        );
        let addrs = replicas.read().await.clone();
        let addr = addrs[turn % addrs.len()];
        turn += 1;
        let Some(mut ws) = WsClient::try_init(addr, "graphql-transport-ws", KEY).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections += 1;
        'subscriptions: for id in 1.. {
            assert!(
                Instant::now() < deadline,
                "trace {trace} did not end: {seen:?}"
            );
            ws.send(json!({ "id": id.to_string(), "type": "subscribe", "payload": { "query": SUBSCRIBE, "variables": { "t": trace } } }))
                .await;
            seen.live.push(Vec::new());
            // The history may fail while the database restarts: ask again.
            let body = loop {
                if let Some(body) =
                    gql(&http, addr, EVENTS, json!({ "t": trace, "a": seen.last })).await
                {
                    break body;
                }
                if !replicas.read().await.contains(&addr) {
                    continue 'connections; // the replica died
                }
                assert!(
                    Instant::now() < deadline,
                    "trace {trace}: the history never answered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            for e in body["data"]["traceEvents"].as_array().expect("events") {
                seen.take(e);
            }
            while !seen.done() {
                let frame = tokio::time::timeout(Duration::from_secs(30), ws.next_frame()).await;
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => continue 'connections, // the replica died
                    Err(_) => panic!("trace {trace}: no event for 30 s: {seen:?}"),
                };
                if frame["type"] == "__close" {
                    continue 'connections;
                }
                if frame["id"] != json!(id.to_string()) {
                    continue; // the end of a refused subscription
                }
                if frame["type"] == "next" && frame["payload"]["errors"].is_null() {
                    let e = &frame["payload"]["data"]["onTraceEvent"];
                    seen.live
                        .last_mut()
                        .expect("a subscription")
                        .push(e["seq"].as_i64().expect("seq"));
                    seen.take(e);
                } else if frame["type"] == "next" || frame["type"] == "error" {
                    seen.refused.push(frame);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'subscriptions;
                } else if frame["type"] == "complete" {
                    continue 'subscriptions;
                }
            }
            break;
        }
    }
    seen
}

/// Live streams are in order and without gaps: each connection's events follow each other
/// by exactly one, except that events also found in the history may be skipped at its
/// start.
fn assert_in_order(trace: &str, seen: &Seen) {
    for live in &seen.live {
        for pair in live.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "trace {trace}: live events out of order or with a gap: {live:?}"
            );
        }
    }
    let all: Vec<i64> = {
        let mut v: Vec<i64> = seen.all.keys().copied().collect();
        v.sort();
        v
    };
    assert_eq!(
        all,
        (1..=seen.last).collect::<Vec<_>>(),
        "trace {trace}: events missing"
    );
}

/// The order each submitted command is given, and the state it must end in.
fn plan(i: usize) -> (Value, &'static str) {
    let faults = match i % 6 {
        0 => json!({ "failAttempts": 2, "delayMs": 300 }),
        1 => json!({ "failAttempts": 9 }),
        _ => json!({ "delayMs": 300 + (i % 5) as u64 * 200 }),
    };
    let want = if i % 6 == 1 {
        "DEAD_LETTERED"
    } else {
        "SUCCEEDED"
    };
    let input = json!({
        "customerId": format!("c-{i}"),
        "items": [{ "sku": "tea", "quantity": 1, "unitPriceCents": 100 + i as i64 }],
        "faults": faults,
    });
    (input, want)
}

/// The invariants of the module doc, read from the database.
async fn assert_invariants(url: &str, submitted: &[(String, String, &'static str)]) {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connecting");
    for (key, trace, want) in submitted {
        let (owned, state, attempts): (String, String, i32) = sqlx::query_as(
            "SELECT trace_id, state, attempts FROM commands WHERE owner = 'alice' AND idempotency_key = $1",
        )
        .bind(key)
        .fetch_one(&mut db)
        .await
        .expect("one command per idempotency key");
        assert_eq!(&owned, trace, "{key}: the client was given another trace");
        assert_eq!(state, *want, "trace {trace}");
        assert!(attempts <= 4, "trace {trace}: {attempts} attempts");
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE trace_id = $1")
            .bind(trace)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(
            orders,
            i64::from(*want == "SUCCEEDED"),
            "trace {trace}: orders"
        );
        let starts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM trace_events WHERE trace_id = $1 AND component = 'TransactionManager' AND status = 'ACCEPTED'
                 AND message NOT LIKE '%released%'",
        )
        .bind(trace)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(starts <= 4, "trace {trace}: {starts} attempts started");
        // One terminal state, reached once: after the first terminal event, nothing else.
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM trace_events WHERE trace_id = $1 ORDER BY seq")
                .bind(trace)
                .fetch_all(&mut db)
                .await
                .unwrap();
        let first_end = states
            .iter()
            .position(|s| s == want)
            .expect("a terminal event");
        assert!(
            states[first_end..].iter().all(|s| s == want),
            "trace {trace}: {states:?}"
        );
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE trace_id = $1")
            .bind(trace)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(
            dead,
            i64::from(*want == "DEAD_LETTERED"),
            "trace {trace}: dead letters"
        );
    }
}

/// Waits (bounded) until `sql`, a `count(*)`, reaches `at_least` in the database at `url`.
async fn wait_count(url: &str, sql: &'static str, at_least: i64, what: &str) {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connecting");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap();
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} < {at_least} after 20 s"
        );
        tokio::task::yield_now().await;
    }
}

const RUNNING: &str = "SELECT count(*) FROM commands WHERE state = 'RUNNING'";

/// Two API replicas and two workers on the database at `url`.
struct Cluster {
    api: Vec<Tether>,
    workers: Vec<Tether>,
    replicas: Replicas,
}

impl Cluster {
    /// Two API replicas and two workers; `extra` environment for each (the SQS settings).
    async fn start(url: &str, logs: &std::path::Path, extra: &[(String, String)]) -> Self {
        let mut api = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let args = ["serve", "--role", "api", "--addr", "127.0.0.1:0"];
            api.push(Tether::start_with(&args, url, logs, FAST, extra).await);
            workers.push(Tether::start_with(&["worker"], url, logs, FAST, extra).await);
        }
        let addrs = api
            .iter()
            .map(|t| t.addr.expect("an API address"))
            .collect();
        Cluster {
            api,
            workers,
            replicas: Arc::new(RwLock::new(addrs)),
        }
    }
}

/// Submits `range` of the plan concurrently, each to replica `i % 2`, and follows each on the
/// other replica. Returns (key, trace, wanted state) and the followers.
async fn load(
    http: &reqwest::Client,
    replicas: &Replicas,
    range: std::ops::Range<usize>,
) -> Vec<(String, String, &'static str, tokio::task::JoinHandle<Seen>)> {
    let mut submits = Vec::new();
    for i in range {
        let (http, replicas) = (http.clone(), replicas.clone());
        submits.push(tokio::spawn(async move {
            let (input, want) = plan(i);
            let key = format!("order-{i}");
            let trace = submit(&http, &replicas, i, input, &key).await;
            let follower = tokio::spawn(follow(http, replicas, i + 1, trace.clone()));
            (key, trace, want, follower)
        }));
    }
    let mut out = Vec::new();
    for s in submits {
        out.push(s.await.expect("submit task"));
    }
    out
}

/// Waits for every follower, checks their streams and the database; returns what each saw.
async fn finish(
    url: &str,
    started: Vec<(String, String, &'static str, tokio::task::JoinHandle<Seen>)>,
) -> Vec<(String, Seen)> {
    let mut submitted = Vec::new();
    let mut seen_all = Vec::new();
    for (key, trace, want, follower) in started {
        let seen = follower.await.expect("follower");
        assert_in_order(&trace, &seen);
        submitted.push((key, trace.clone(), want));
        seen_all.push((trace, seen));
    }
    assert_invariants(url, &submitted).await;
    seen_all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_workers_killed_with_sigkill_lose_nothing() {
    killed_with_sigkill(common::Backend::Postgres).await;
}

/// The same with SQS as the command queue: the killed worker had messages in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sqs_replicas_and_workers_killed_with_sigkill_lose_nothing() {
    killed_with_sigkill(common::Backend::Sqs).await;
}

/// Attempts each worker may hold in the SIGKILL test: once more than this many run, both
/// workers hold some, so the one killed is sure to die mid-attempt (with the default 256, one
/// worker could claim the whole first load).
const SLOTS: i64 = 6;

async fn killed_with_sigkill(backend: common::Backend) {
    let db = common::TestDb::new(backend, "cluster").await;
    let mut extra = db.sqs.as_ref().map(|q| q.env()).unwrap_or_default();
    extra.push(("TETHER_WORKERS".into(), SLOTS.to_string()));
    let logs = scratch_dir("cluster-logs");
    let migrate = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["migrate"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("tether migrate");
    assert!(migrate.status.success(), "{migrate:?}");
    let Cluster {
        mut api,
        mut workers,
        replicas,
    } = Cluster::start(&db.url, &logs, &extra).await;
    let http = common::http();

    let mut started = load(&http, &replicas, 0..30).await;

    // kill -9 a worker while attempts are in flight: their leases expire, the other worker's
    // sweeper counts them and they run again.
    wait_count(
        &db.url,
        RUNNING,
        SLOTS + 1,
        "attempts running on both workers",
    )
    .await;
    workers[0].kill9().await;

    // kill -9 an API replica while commands are submitted to it and subscribers follow
    // traces on it: clients retry on the other replica with the same idempotency key, and
    // followers move over.
    let second = {
        let (http, replicas) = (http.clone(), replicas.clone());
        tokio::spawn(async move { load(&http, &replicas, 30..50).await })
    };
    let all = "SELECT count(*) FROM commands";
    wait_count(&db.url, all, 36, "commands of the second load").await;
    api[1].kill9().await;
    replicas.write().await.remove(1);
    started.extend(second.await.expect("second load"));

    let seen = finish(&db.url, started).await;
    let moved = seen.iter().filter(|(_, s)| s.connections > 1).count();
    assert!(
        moved > 0,
        "no follower had to move: the replica died too late to test anything"
    );

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM trace_events WHERE message LIKE '%lost its lease%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        expired > 0,
        "the killed worker held no attempt: the test did not test a crash"
    );
    if backend == common::Backend::Sqs {
        // Every attempt came from an SQS message, none from the table.
        let (from_sqs, from_table): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE message LIKE '%picked up from SQS message%'),
                    count(*) FILTER (WHERE message LIKE '%picked up from the commands table%')
             FROM trace_events",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(from_sqs >= 50, "{from_sqs} attempts from SQS messages");
        assert_eq!(from_table, 0);
    }
}

/// A private PostgreSQL cluster this test may crash-restart (`scripts/pg-private`).
struct PrivatePg {
    url: String,
    dir: String,
}

impl PrivatePg {
    async fn start() -> Self {
        let parent = scratch_dir("pg");
        let out = Command::new("bash")
            .args([
                "scripts/pg-private",
                "start",
                parent.to_str().expect("a path"),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .await
            .expect("scripts/pg-private start");
        assert!(
            out.status.success(),
            "starting a private PostgreSQL: {out:?}"
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let (url, dir) = stdout.trim().split_once(' ').expect("URL DIR");
        PrivatePg {
            url: url.to_owned(),
            dir: dir.to_owned(),
        }
    }

    async fn ctl(&self, what: &str) {
        assert_ne!(what, "stop", "stopping happens on drop");
        let out = Command::new("bash")
            .args(["scripts/pg-private", what, &self.dir])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .await
            .expect("scripts/pg-private");
        assert!(out.status.success(), "pg-private {what}: {out:?}");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args(["scripts/pg-private", "stop", &self.dir])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_restart_loses_no_event_for_live_subscribers() {
    let pg = PrivatePg::start().await;
    let logs = scratch_dir("cluster-logs");
    let cluster = Cluster::start(&pg.url, &logs, &[]).await;
    let replicas = cluster.replicas.clone();
    let http = common::http();

    let mut started = load(&http, &replicas, 0..24).await;
    wait_count(&pg.url, RUNNING, 4, "attempts running in parallel").await;
    // Crash PostgreSQL while attempts run and subscribers wait: connections drop, LISTEN
    // connections reconnect with backoff and catch up, failed attempts retry.
    pg.ctl("restart").await;
    started.extend(load(&http, &replicas, 24..36).await);
    let seen = finish(&pg.url, started).await;

    // No replica died, so every follower kept its first connection, and that connection's
    // live stream ran to the end: what the listener missed while PostgreSQL was down, the
    // catch-up read delivered.
    for (trace, seen) in &seen {
        assert_eq!(seen.connections, 1, "trace {trace}: {seen:?}");
        let live = seen.live.last().expect("a subscription");
        if let Some(&last_live) = live.last() {
            assert_eq!(
                last_live, seen.last,
                "trace {trace}: the live stream stopped early: {seen:?}"
            );
        }
    }
    let live = seen
        .iter()
        .filter(|(_, s)| s.live.last().is_some_and(|l| l.len() > 1))
        .count();
    assert!(
        live > seen.len() / 2,
        "most followers should have seen their trace live"
    );
    let refused: Vec<&Value> = seen.iter().flat_map(|(_, s)| &s.refused).collect();
    eprintln!(
        "subscriptions refused while PostgreSQL was down: {}",
        refused.len()
    );
    for r in &refused {
        let text = r.to_string();
        assert!(
            !text.contains("sqlx") && !text.contains("pool"),
            "internals in an error: {text}"
        );
    }
    drop(cluster);
}

/// The accept committer keeps one connection open. After a crash-restart of PostgreSQL under an
/// idle API, that connection is dead; it is checked before the next batch and replaced, so the
/// first command after the restart is accepted at once (no retry here), not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_api_accepts_at_once_after_a_postgres_crash_restart() {
    let pg = PrivatePg::start().await;
    let logs = scratch_dir("cluster-logs");
    let api = Tether::start(
        &["serve", "--role", "api", "--addr", "127.0.0.1:0"],
        &pg.url,
        &logs,
    )
    .await;
    let addr = api.addr.expect("an API address");
    let http = common::http();
    let order = |k: &str| {
        json!({
            "i": { "customerId": "c-idle", "items": [{ "sku": "tea", "quantity": 1, "unitPriceCents": 100 }] },
            "k": k,
        })
    };
    assert!(
        gql(&http, addr, CREATE_ORDER, order("before"))
            .await
            .is_some(),
        "accepted before the restart"
    );
    let idle_since = Instant::now();
    pg.ctl("restart").await;
    // The precondition, not a wait for something to happen: the API has been idle for longer
    // than its connection may go unchecked (`IDLE_CHECK` in src/store/postgres/mod.rs).
    let idle_check = Duration::from_millis(200);
    if let Some(rest) = idle_check.checked_sub(idle_since.elapsed()) {
        tokio::time::sleep(rest + Duration::from_millis(50)).await;
    }
    let after = gql(&http, addr, CREATE_ORDER, order("after")).await;
    let trace = after
        .as_ref()
        .and_then(|b| b["data"]["createOrder"]["traceId"].as_str())
        .expect("the first command after the restart is accepted");
    let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let (state,): (String,) = sqlx::query_as("SELECT state FROM commands WHERE trace_id = $1")
        .bind(trace)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(state, "PENDING", "stored, waiting for a worker");
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_each_role_gracefully_and_a_released_attempt_does_not_count() {
    let db = common::TestDb::new(common::Backend::Postgres, "cluster").await;
    let logs = scratch_dir("cluster-logs");
    let mut api = Tether::start(
        &["serve", "--role", "api", "--addr", "127.0.0.1:0"],
        &db.url,
        &logs,
    )
    .await;
    let mut worker = Tether::start(&["worker"], &db.url, &logs).await;
    let replicas: Replicas = Arc::new(RwLock::new(vec![api.addr.expect("an API address")]));
    let http = common::http();
    let input = json!({
        "customerId": "c-slow",
        "items": [{ "sku": "tea", "quantity": 1, "unitPriceCents": 100 }],
        // Every first attempt waits 3 s (a released attempt is the first one again).
        "faults": { "delayMs": 3_000 },
    });
    let trace = submit(&http, &replicas, 0, input, "slow").await;
    wait_count(&db.url, RUNNING, 1, "the attempt running").await;

    // The worker stops at once: its attempt is waiting, so it gives the lease back instead
    // of finishing it.
    let (status, took) = worker.terminate().await;
    assert!(status.success(), "worker exit: {status}");
    assert!(
        took < Duration::from_secs(2),
        "the worker took {took:?} to stop"
    );
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM commands WHERE trace_id = $1")
            .bind(&trace)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("RETRYING", 0),
        "released, not counted"
    );

    // A new worker takes it over; the delay applies to the first attempt only.
    let _next = Tether::start(&["worker"], &db.url, &logs).await;
    let seen = follow(http.clone(), replicas.clone(), 0, trace.clone()).await;
    assert_in_order(&trace, &seen);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM commands WHERE trace_id = $1")
        .bind(&trace)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the released attempt did not count");

    let (status, took) = api.terminate().await;
    assert!(status.success(), "API exit: {status}");
    assert!(
        took < Duration::from_secs(10),
        "the API took {took:?} to stop"
    );
}

/// A worker whose side-effect queue is unreachable holds the outbox rows it could not
/// publish; when it stops gracefully it gives them up, so the next worker relays them at once
/// instead of after the 10 s hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_leaves_the_outbox_rows_it_could_not_publish_to_others() {
    let db = common::TestDb::new(common::Backend::Postgres, "cluster").await;
    let logs = scratch_dir("cluster-logs");
    let mut api = Tether::start(
        &["serve", "--role", "api", "--addr", "127.0.0.1:0"],
        &db.url,
        &logs,
    )
    .await;
    let nowhere: Vec<(String, String)> = [
        (
            "TETHER_SQS_EVENT_QUEUE_URL",
            "http://127.0.0.1:1/000000000000/nowhere",
        ),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let mut worker = Tether::start_with(&["worker"], &db.url, &logs, FAST, &nowhere).await;
    let replicas: Replicas = Arc::new(RwLock::new(vec![api.addr.expect("an API address")]));
    let http = common::http();
    submit(&http, &replicas, 0, common::order("c-held"), "held").await;
    let held = "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND claimed_by IS NOT NULL";
    wait_count(&db.url, held, 1, "an outbox row held by the worker").await;

    let (status, _) = worker.terminate().await;
    assert!(status.success(), "worker exit: {status}");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (unsent, still_held): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(claimed_by) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((unsent, still_held), (1, 0), "unsent and no longer held");

    let started = Instant::now();
    let _next = Tether::start(&["worker"], &db.url, &logs).await;
    let sent = "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL";
    wait_count(&db.url, sent, 1, "the row relayed by the next worker").await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "relayed only after {:?}: the hold was not given up",
        started.elapsed()
    );
    let (status, _) = api.terminate().await;
    assert!(status.success(), "API exit: {status}");
}

/// "No busy polling when idle": with default timings, an idle worker and an idle API replica
/// run a handful of transactions over several seconds (the sweeper's every 5 s), because
/// LISTEN wakes them instead of polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_processes_do_not_poll_the_database() {
    let db = common::TestDb::new(common::Backend::Postgres, "idle").await;
    let logs = scratch_dir("cluster-logs");
    let name = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let _api = Tether::start_with(
        &["serve", "--role", "api", "--addr", "127.0.0.1:0"],
        &db.url,
        &logs,
        &[],
        &[],
    )
    .await;
    let _worker = Tether::start_with(&["worker"], &db.url, &logs, &[], &[]).await;
    let commits = || async {
        let mut admin = sqlx::PgConnection::connect(&common::pg_admin_url())
            .await
            .unwrap();
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut admin)
            .await
            .ok();
        let n: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        n
    };
    // Let start-up settle (migrations, the first claim, the emitter's first look; slower when
    // the rest of the suite loads the machine), then watch an idle window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits().await;
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let during = commits().await - before;
    eprintln!("transactions in {window:?} of idleness: {during}");
    // With the idle poll at 1 s (TETHER_IDLE_POLL_MS=1000) this reads ~27: claim, next_due and
    // the outbox every second. Idle, it is the sweeper (every 5 s) and connection upkeep.
    assert!(
        during <= 9,
        "{during} transactions in {window:?} of idleness: the executor is polling"
    );
}

/// A writer killed between its commit and its announcement (notices are sent after the
/// commit, outside the transaction) leaves events that no notice names. Here such an event is
/// written straight into the database, announced to nobody: the API replica's periodic check
/// of the traces its subscribers follow delivers it anyway, live and in order (G5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_notice_was_lost_still_reaches_live_subscribers() {
    let db = common::TestDb::new(common::Backend::Postgres, "cluster").await;
    let logs = scratch_dir("cluster-logs");
    let args = ["serve", "--role", "api", "--addr", "127.0.0.1:0"];
    let api = Tether::start(&args, &db.url, &logs).await;
    let addr = api.addr.expect("an API address");
    let replicas: Replicas = Arc::new(RwLock::new(vec![addr]));
    let http = common::http();
    let (input, _) = plan(2);
    let trace = submit(&http, &replicas, 0, input, "lost-notice").await;

    let mut ws = WsClient::try_init(addr, "graphql-transport-ws", KEY)
        .await
        .expect("a WebSocket");
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": SUBSCRIBE, "variables": { "t": trace } } }))
        .await;
    // No worker runs: the command stays pending with its one ACCEPTED event. Now what a
    // claim leaves behind, committed without its NOTIFY.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("UPDATE commands SET last_seq = 2 WHERE trace_id = $1")
        .bind(&trace)
        .execute(&mut *tx)
        .await
        .expect("bump");
    sqlx::query(
        "INSERT INTO trace_events (trace_id, seq, component, status, attempt, message, state, at)
         VALUES ($1, 2, 'TransactionListener', 'ACCEPTED', 1, 'picked up; never announced',
             'RUNNING', 0)",
    )
    .bind(&trace)
    .execute(&mut *tx)
    .await
    .expect("insert");
    tx.commit().await.expect("commit");

    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !live.contains(&2) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next_frame())
            .await
            .unwrap_or_else(|_| panic!("the unannounced event never arrived; live: {live:?}"))
            .expect("the connection stays open");
        if frame["type"] == "next" {
            live.push(
                frame["payload"]["data"]["onTraceEvent"]["seq"]
                    .as_i64()
                    .expect("seq"),
            );
        }
    }
    // The stream may start with the ACCEPTED event (a trace the replica had not delivered
    // yet is delivered from its start), never out of order or twice.
    assert!(live == [2] || live == [1, 2], "live: {live:?}");
    drop(api);
}
