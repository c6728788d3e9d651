//! The PostgreSQL phase of the load benchmark: `scripts/bench --pg [--quick] [--write]`.
//!
//! Everything runs against one PostgreSQL server (the one `scripts/lib/postgres.sh` finds), each
//! round in a database of its own (`tether_bench_<pid>_<round>`, dropped at the end of the round),
//! with tether's roles as separate processes: `tether serve --role api` for the API and
//! `tether worker` for the executors. In this order:
//!
//! 1. **Accepts and pgbench**: accepts (32 HTTP clients, as in the SQLite phase) and pgbench's
//!    single-row `INSERT` TPS at the same concurrency on the same server, in the order accepts,
//!    pgbench, pgbench, accepts (each a half phase), so a drift of the machine's speed during
//!    the round weighs on both alike.
//! 2. **Executors**: a backlog of N commands accepted with no worker running, then 1 `tether
//!    worker` started and timed until every command is terminal and every outbox row relayed;
//!    the same with 2 workers on a new database; then, with an API and the faster worker count,
//!    the end-to-end latency while a paced load offers about half the executed rate.
//! 3. **graphile-worker** (`scripts/bench-pg/graphile-peer.mjs`, pinned by its lock file): N jobs
//!    that each do one `INSERT` queued with one bulk `add_jobs` call, then a runner with
//!    concurrency 16 (tether's `--workers` default) timed the same way until the job table is
//!    empty: default options, the documented batching options, and 2 processes.
//! 4. **Empty and loaded tables**: two databases, one with `trace_events` bulk-loaded with M rows
//!    (one `INSERT … SELECT … FROM generate_series`, then `ANALYZE`, `VACUUM`, `CHECKPOINT`, each
//!    timed), an API on each; accepts in the order empty, loaded, loaded, empty (half phases),
//!    then trace queries the same way (32 clients alternating `trace(traceId) { … events }` and
//!    `traceEvents(traceId)` on the traces that database accepted).
//!
//! CPU use is read from `/proc/<pid>/stat` (tether, node, this process), from every `postgres`
//! process (split into the backends of the round's database, by their process title, those of
//! its LISTEN connections, and the rest), from our reaped children (pgbench) and from
//! `/proc/stat` for the whole machine; what the backends wait for from `pg_stat_activity`.
//! Transactions and WAL come from `pg_stat_database` and `pg_stat_wal` (the WAL figures are
//! server-wide: anything else running on the server shows up in them).

use std::collections::HashMap;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};

use super::*;

#[path = "pg/sqs.rs"]
pub(super) mod sqs;

/// What the benchmark asks of a trace, alternately.
const TRACE_WITH_EVENTS: &str = "query($t: ID!) { trace(traceId: $t) { state attempts events { seq component status timestamp state } } }";

/// graphile-worker's jobs in flight per process.
const CONCURRENCY_PER_PROCESS: usize = 16;
/// tether's attempts in flight per worker process (its `--workers` default).
const TETHER_IN_FLIGHT: usize = 256;

const READY_WORKER: &str = "tether worker ready";

// ---------------------------------------------------------------------------------------------
// Environment

struct Env {
    /// A URL whose user may create databases (its database part is replaced per round).
    admin_url: String,
    origin: String,
    pgbench: Option<PathBuf>,
    /// `scripts/bench-pg` with its `node_modules` installed, or why not.
    peer: Result<PathBuf, String>,
    /// Database names start with this (`tether_bench_<pid>`).
    prefix: String,
}

impl Env {
    fn from_env(root: &Path) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let admin_url = var("TETHER_BENCH_PG_URL")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let origin = var("TETHER_BENCH_PG_ORIGIN").unwrap_or_else(|| "TETHER_BENCH_PG_URL".into());
        let pgbench = var("TETHER_BENCH_PGBENCH").map(PathBuf::from).or_else(|| {
            let found = Command::new("sh")
                .args(["-c", "command -v pgbench"])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        });
        let peer_dir = root.join("scripts").join("bench-pg");
        let peer = match var("TETHER_BENCH_PEER_ERROR") {
            Some(e) => Err(e),
            None if peer_dir
                .join("node_modules")
                .join("graphile-worker")
                .is_dir() =>
            {
                Ok(peer_dir)
            }
            None => Err(format!(
                "{}/node_modules is missing (scripts/bench --pg runs npm ci there)",
                peer_dir.display()
            )),
        };
        Env {
            admin_url,
            origin,
            pgbench,
            peer,
            prefix: format!("tether_bench_{}", std::process::id()),
        }
    }

    /// The URL of database `db` on the same server.
    fn url(&self, db: &str) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.admin_url.as_str(), None),
        };
        let host_from = base.find("://").map_or(0, |i| i + 3);
        let root = match base[host_from..].find('/') {
            Some(i) => &base[..host_from + i],
            None => base,
        };
        match query {
            Some(q) => format!("{root}/{db}?{q}"),
            None => format!("{root}/{db}"),
        }
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| format!("connecting to {} ({})", self.admin_url, self.origin))
    }

    async fn create_db(&self, round: &str) -> anyhow::Result<String> {
        let name = format!("{}_{round}", self.prefix);
        let mut conn = self.admin().await?;
        // Two statements: a multi-statement string would be one transaction block.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
            // Time WAL writes and fsyncs in this database's backends (pg_stat_wal).
            format!("ALTER DATABASE \"{name}\" SET track_wal_io_timing = on"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        let _ = conn.close().await;
        Ok(name)
    }

    async fn drop_db(&self, name: &str) {
        if let Ok(mut conn) = self.admin().await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }
}

async fn pool(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}

async fn count(pool: &PgPool, sql: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
}

// ---------------------------------------------------------------------------------------------
// Processes

/// `tether migrate` on `url`.
async fn migrate(url: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(tether_bin())
        .args(["migrate", "--database-url", url])
        .env_remove("RUST_LOG")
        .output()
        .await
        .context("running tether migrate")?;
    if !out.status.success() {
        bail!(
            "tether migrate: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `tether serve --role api` on a free port.
async fn start_api(dir: &Path, name: &str, url: &str, extra: &[String]) -> anyhow::Result<Server> {
    let mut args: Vec<String> = [
        "serve",
        "--role",
        "api",
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        url,
    ]
    .map(String::from)
    .into();
    args.extend_from_slice(extra);
    let (child, ready) = spawn_tether_with(dir, name, &args, READY_API)?;
    Server::ready(name, child, ready).await
}

/// `tether worker`; does not wait for it to be ready (the drain timing starts at the spawn).
fn spawn_worker(
    dir: &Path,
    name: &str,
    url: &str,
    extra: &[String],
) -> anyhow::Result<(ChildGuard, oneshot::Receiver<String>)> {
    let mut args: Vec<String> = ["worker", "--database-url", url].map(String::from).into();
    args.extend(["--workers".into(), TETHER_IN_FLIGHT.to_string()]);
    args.extend_from_slice(extra);
    spawn_tether_with(dir, name, &args, READY_WORKER)
}

/// Runs a short command to the end; its stdout, or an error with its stderr.
async fn run_to_end(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what}: {}: {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// `node graphile-peer.mjs run URL 16 MODE`, logs in `dir`.
fn spawn_graphile(
    dir: &Path,
    peer: &Path,
    name: &str,
    url: &str,
    mode: &str,
) -> anyhow::Result<ChildGuard> {
    let stderr = File::create(dir.join(format!("{name}.stderr.log")))?;
    let stdout = File::create(dir.join(format!("{name}.stdout.log")))?;
    let child = Command::new("node")
        .arg(peer.join("graphile-peer.mjs"))
        .args(["run", url, &CONCURRENCY_PER_PROCESS.to_string(), mode])
        .current_dir(peer)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .context("spawning node graphile-peer.mjs")?;
    Ok(ChildGuard(child))
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

fn proc_comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

/// The `postgres` processes and their CPU seconds so far.
fn postgres_cpu() -> HashMap<u32, f64> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if proc_comm(pid).as_deref() == Some("postgres")
            && let Some(cpu) = cpu_seconds(&pid.to_string())
        {
            out.insert(pid, cpu);
        }
    }
    out
}

/// Busy and total jiffies of the whole machine.
fn machine_jiffies() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    let total: f64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// CPU seconds of this process's reaped children (pgbench).
fn children_cpu() -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let cutime: f64 = rest.get(13)?.parse().ok()?;
    let cstime: f64 = rest.get(14)?.parse().ok()?;
    Some((cutime + cstime) / ticks)
}

/// The last CPU reading and title of every `postgres` process seen, refreshed every 200 ms so
/// backends that exit before the phase ends (pgbench's) still count.
type PgSeen = Arc<Mutex<HashMap<u32, (f64, String)>>>;

fn scan_postgres(seen: &PgSeen) {
    let now = postgres_cpu();
    let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
    for (pid, cpu) in now {
        // A backend's title names its database (and changes with what it does).
        let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let title = match map.get(&pid) {
            Some((_, old)) if title.is_empty() => old.clone(),
            _ => title,
        };
        map.insert(pid, (cpu, title));
    }
}

/// CPU use over a phase, by group.
struct CpuProbe {
    at: Instant,
    seen: PgSeen,
    tracker: tokio::task::JoinHandle<()>,
    /// Labelled processes (tether, node), by pid.
    labels: Vec<(u32, String)>,
    procs: HashMap<u32, f64>,
    postgres: HashMap<u32, f64>,
    bench: Option<f64>,
    children: Option<f64>,
    children_label: Option<String>,
    machine: Option<(f64, f64)>,
    /// Postgres backends whose title names this database are "of the bench database".
    db: String,
}

struct CpuSplit {
    /// (group, cores), in a fixed order.
    groups: Vec<(String, f64)>,
    machine: Option<f64>,
}

impl CpuProbe {
    fn start(labels: &[(u32, &str)], db: &str, children_label: Option<&str>) -> Self {
        let labels: Vec<(u32, String)> = labels.iter().map(|(p, l)| (*p, l.to_string())).collect();
        let procs = labels
            .iter()
            .filter_map(|(p, _)| Some((*p, cpu_seconds(&p.to_string())?)))
            .collect();
        let seen: PgSeen = Arc::default();
        let tracker = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    sleep(Duration::from_millis(200)).await;
                    let seen = seen.clone();
                    let _ = tokio::task::spawn_blocking(move || scan_postgres(&seen)).await;
                }
            })
        };
        CpuProbe {
            at: Instant::now(),
            seen,
            tracker,
            procs,
            postgres: postgres_cpu(),
            bench: cpu_seconds("self"),
            children: children_cpu(),
            children_label: children_label.map(str::to_owned),
            machine: machine_jiffies(),
            labels,
            db: db.to_owned(),
        }
    }

    /// `listeners`: the backends of LISTEN connections, counted apart.
    fn finish(&self, listeners: &[u32]) -> CpuSplit {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let mut groups: Vec<(String, f64)> = Vec::new();
        let mut add = |label: &str, seconds: f64| match groups.iter_mut().find(|g| g.0 == label) {
            Some(g) => g.1 += seconds / wall,
            None => groups.push((label.to_owned(), seconds / wall)),
        };
        for (pid, label) in &self.labels {
            if let Some(now) = cpu_seconds(&pid.to_string()) {
                add(label, now - self.procs.get(pid).copied().unwrap_or(0.0));
            }
        }
        self.tracker.abort();
        scan_postgres(&self.seen);
        let needle = format!(" {} ", self.db);
        let (mut ours, mut listening, mut rest) = (0.0, 0.0, 0.0);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (pid, (now, title)) in seen {
            let delta = now - self.postgres.get(&pid).copied().unwrap_or(0.0);
            if listeners.contains(&pid) {
                listening += delta;
            } else if title.contains(&needle) {
                ours += delta;
            } else {
                rest += delta;
            }
        }
        add("postgres (this database's backends)", ours);
        if !listeners.is_empty() {
            add("postgres (LISTEN connections' backends)", listening);
        }
        add("postgres (other processes)", rest);
        if let (Some(label), Some(before), Some(after)) =
            (&self.children_label, self.children, children_cpu())
        {
            add(label, after - before);
        }
        if let (Some(before), Some(after)) = (self.bench, cpu_seconds("self")) {
            add("bench client", after - before);
        }
        let machine = match (self.machine, machine_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                Some((b1 - b0) / (t1 - t0) * cpus)
            }
            _ => None,
        };
        CpuSplit { groups, machine }
    }
}

impl CpuSplit {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|(g, c)| format!("{g} {c:.2}"))
            .collect();
        if let Some(m) = self.machine {
            let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
            parts.push(format!("whole machine {m:.2} of {cpus}"));
        }
        parts.join(", ")
    }
}

/// The backends of the LISTEN connections of database `db` (tether's feed, graphile's runner).
async fn listen_pids(env: &Env, db: &str) -> Vec<u32> {
    let Ok(mut conn) = env.admin().await else {
        return Vec::new();
    };
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(db)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    pids.into_iter().map(|p| p as u32).collect()
}

// ---------------------------------------------------------------------------------------------
// What the backends wait for

/// Samples `pg_stat_activity` every 100 ms for the client backends of one database that are
/// not idle: on CPU, or waiting (for a lock, the WAL, the client inside a transaction, …).
struct WaitSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Waits>,
}

#[derive(Default)]
struct Waits {
    counts: BTreeMap<String, u64>,
    samples: u64,
}

impl WaitSampler {
    async fn start(env: &Env, db: &str) -> Option<Self> {
        let mut conn = env.admin().await.ok()?;
        let stop = CancellationToken::new();
        let db = db.to_owned();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut waits = Waits::default();
                while !stop.is_cancelled() {
                    let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
                        "SELECT CASE WHEN wait_event IS NULL THEN 'on CPU'
                                     ELSE wait_event_type || ':' || wait_event END
                                || CASE WHEN state LIKE 'idle in transaction%'
                                        THEN ' (idle in transaction)' ELSE '' END,
                                count(*)
                         FROM pg_stat_activity
                         WHERE datname = $1 AND state <> 'idle' AND backend_type = 'client backend'
                             AND pid <> pg_backend_pid()
                         GROUP BY 1",
                    )
                    .bind(&db)
                    .fetch_all(&mut conn)
                    .await;
                    if let Ok(rows) = rows {
                        waits.samples += 1;
                        for (what, n) in rows {
                            *waits.counts.entry(what).or_default() += n as u64;
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = sleep(Duration::from_millis(100)) => {}
                    }
                }
                let _ = conn.close().await;
                waits
            })
        };
        Some(WaitSampler { stop, task })
    }

    async fn finish(self) -> Waits {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

impl Waits {
    fn describe(&self) -> String {
        let total: u64 = self.counts.values().sum();
        if self.samples == 0 || total == 0 {
            return "backends: n/a".into();
        }
        let mut by: Vec<(&String, &u64)> = self.counts.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = by
            .iter()
            .take(5)
            .map(|(w, n)| format!("{w} {:.0} %", **n as f64 * 100.0 / total as f64))
            .collect();
        format!(
            "backends not idle {:.1} on average: {}",
            total as f64 / self.samples as f64,
            top.join(", ")
        )
    }
}

async fn waits_of(sampler: Option<WaitSampler>) -> Waits {
    match sampler {
        Some(s) => s.finish().await,
        None => Waits::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Database statistics

#[derive(Clone, Copy, Default)]
struct DbStats {
    xact_commit: i64,
    xact_rollback: i64,
    tup_inserted: i64,
    tup_updated: i64,
    tup_deleted: i64,
    wal_records: i64,
    wal_bytes: i64,
    wal_sync: i64,
    /// Milliseconds spent in WAL fsyncs by backends that time them (the round's databases
    /// have `track_wal_io_timing` on).
    wal_sync_ms: f64,
}

async fn db_stats(env: &Env, db: &str) -> Option<DbStats> {
    let mut conn = env.admin().await.ok()?;
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, f64) = sqlx::query_as(
        "SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted,
             w.wal_records, w.wal_bytes::bigint, w.wal_sync, w.wal_sync_time
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1",
    )
    .bind(db)
    .fetch_one(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    Some(DbStats {
        xact_commit: row.0,
        xact_rollback: row.1,
        tup_inserted: row.2,
        tup_updated: row.3,
        tup_deleted: row.4,
        wal_records: row.5,
        wal_bytes: row.6,
        wal_sync: row.7,
        wal_sync_ms: row.8,
    })
}

/// Statistics once the processes that wrote have gone: an idle backend may hold its counters
/// for up to 10 s, an exiting one reports them, so callers stop their clients first.
async fn settled_stats(env: &Env, db: &str) -> Option<DbStats> {
    sleep(Duration::from_millis(600)).await;
    db_stats(env, db).await
}

/// Per command or job over a phase of `wall` (the WAL figures are server-wide).
fn per_unit(
    before: Option<DbStats>,
    after: Option<DbStats>,
    units: u64,
    wall: Option<Duration>,
) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return "n/a".into();
    };
    let n = units.max(1) as f64;
    let syncs = (a.wal_sync - b.wal_sync) as f64;
    let sync_ms = a.wal_sync_ms - b.wal_sync_ms;
    let fsync = if sync_ms > 0.0 {
        format!(
            "; {:.2} ms in WAL fsync per item, {:.2} ms per fsync, an fsync in progress {:.0} % of \
             the time",
            sync_ms / n,
            sync_ms / syncs.max(1.0),
            wall.map_or(0.0, |w| sync_ms / 10.0 / w.as_secs_f64().max(1e-9))
        )
    } else {
        String::new()
    };
    format!(
        "{:.1} commits, {:.2} rollbacks, {:.1} rows inserted / {:.1} updated / {:.1} deleted, \
         {:.1} WAL records, {:.0} WAL bytes, {:.3} WAL fsyncs{fsync}",
        (a.xact_commit - b.xact_commit) as f64 / n,
        (a.xact_rollback - b.xact_rollback) as f64 / n,
        (a.tup_inserted - b.tup_inserted) as f64 / n,
        (a.tup_updated - b.tup_updated) as f64 / n,
        (a.tup_deleted - b.tup_deleted) as f64 / n,
        (a.wal_records - b.wal_records) as f64 / n,
        (a.wal_bytes - b.wal_bytes) as f64 / n,
        (a.wal_sync - b.wal_sync) as f64 / n,
    )
}

// ---------------------------------------------------------------------------------------------
// Phases

struct QueryRun {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: Errors,
}

impl QueryRun {
    fn rate(&self) -> f64 {
        per_s(self.requests, self.elapsed)
    }
}

/// `concurrency` clients, each looping over random traces of `ids`, alternating
/// `trace(traceId) { … events { … } }` and `traceEvents(traceId)`; an answer counts when the
/// trace was found.
async fn run_trace_queries(
    addr: SocketAddr,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> QueryRun {
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let errors = errors.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let client = http_client();
                let mut latencies = Vec::new();
                let mut n = c;
                while Instant::now() < deadline && !ids.is_empty() {
                    let id = &ids[fastrand::usize(..ids.len())];
                    n += 1;
                    let with_events = n % 2 == 0;
                    let query = if with_events {
                        TRACE_WITH_EVENTS
                    } else {
                        TRACE_EVENTS
                    };
                    let t0 = Instant::now();
                    match gql(&client, addr, USER_KEY, query, json!({ "t": id })).await {
                        Ok(data) => {
                            let found = if with_events {
                                data.pointer("/trace/events")
                                    .and_then(Value::as_array)
                                    .is_some_and(|e| !e.is_empty())
                            } else {
                                data.get("traceEvents")
                                    .and_then(Value::as_array)
                                    .is_some_and(|e| !e.is_empty())
                            };
                            if found {
                                latencies.push(t0.elapsed());
                            } else {
                                errors.add("trace not found or without events");
                            }
                        }
                        Err(e) => {
                            errors.add(e);
                            sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = join_latencies(tasks, &errors).await;
    let elapsed = start.elapsed();
    latencies.sort();
    QueryRun {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        errors: Arc::try_unwrap(errors).unwrap_or_default(),
    }
}

/// A measured phase with the CPU and backend waits during it (merged over its halves when it
/// ran in two).
struct Measured<T> {
    run: T,
    cpu: CpuSplit,
    waits: Waits,
}

/// One side of round 4: accepts and trace queries on one database.
struct RwRound {
    accepts: Measured<AcceptRun>,
    queries: Measured<QueryRun>,
    /// Commands in the database at the end, and `trace_events` rows.
    rows_note: String,
}

fn merge_errors(into: &Errors, from: Errors) {
    let from = from.0.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut map = into.lock();
    for (k, n) in from {
        *map.entry(k).or_default() += n;
    }
}

/// Two halves of equal length: the mean of each group.
fn merge_cpu(a: CpuSplit, b: CpuSplit) -> CpuSplit {
    let mut groups = a.groups.clone();
    for (label, cores) in &b.groups {
        match groups.iter_mut().find(|g| &g.0 == label) {
            Some(g) => g.1 += cores,
            None => groups.push((label.clone(), *cores)),
        }
    }
    for g in &mut groups {
        g.1 /= 2.0;
    }
    let machine = match (a.machine, b.machine) {
        (Some(x), Some(y)) => Some((x + y) / 2.0),
        (x, y) => x.or(y),
    };
    CpuSplit { groups, machine }
}

fn merge_waits(mut a: Waits, b: Waits) -> Waits {
    a.samples += b.samples;
    for (k, n) in b.counts {
        *a.counts.entry(k).or_default() += n;
    }
    a
}

fn merge_accepts(a: Measured<AcceptRun>, b: Measured<AcceptRun>) -> Measured<AcceptRun> {
    let mut run = a.run;
    run.accepted += b.run.accepted;
    run.elapsed += b.run.elapsed;
    run.latencies.extend(b.run.latencies);
    run.latencies.sort();
    run.trace_ids.extend(b.run.trace_ids);
    merge_errors(&run.errors, b.run.errors);
    Measured {
        run,
        cpu: merge_cpu(a.cpu, b.cpu),
        waits: merge_waits(a.waits, b.waits),
    }
}

fn merge_queries(a: Measured<QueryRun>, b: Measured<QueryRun>) -> Measured<QueryRun> {
    let mut run = a.run;
    run.requests += b.run.requests;
    run.elapsed += b.run.elapsed;
    run.latencies.extend(b.run.latencies);
    run.latencies.sort();
    merge_errors(&run.errors, b.run.errors);
    Measured {
        run,
        cpu: merge_cpu(a.cpu, b.cpu),
        waits: merge_waits(a.waits, b.waits),
    }
}

fn merge_pgbench(a: PgbenchRun, b: PgbenchRun) -> PgbenchRun {
    PgbenchRun {
        tps: (a.tps + b.tps) / 2.0,
        transactions: a.transactions.zip(b.transactions).map(|(x, y)| x + y),
        failed: a.failed.zip(b.failed).map(|(x, y)| x + y),
        latency_avg_ms: a
            .latency_avg_ms
            .zip(b.latency_avg_ms)
            .map(|(x, y)| (x + y) / 2.0),
        secs: a.secs + b.secs,
        cpu: merge_cpu(a.cpu, b.cpu),
        waits: merge_waits(a.waits, b.waits),
    }
}

/// Each of the two halves of an A B B A comparison (whole seconds, for pgbench).
fn half(opts: &Opts) -> Duration {
    Duration::from_secs((opts.duration.as_secs() / 2).max(2))
}

struct PgbenchRun {
    tps: f64,
    transactions: Option<u64>,
    failed: Option<u64>,
    latency_avg_ms: Option<f64>,
    secs: u64,
    cpu: CpuSplit,
    waits: Waits,
}

struct BulkLoad {
    rows: u64,
    insert: Duration,
    analyze: Duration,
    vacuum: Duration,
    checkpoint: Duration,
    table_bytes: i64,
    index_bytes: i64,
}

/// A timed drain: tether workers or graphile-worker runners emptying a backlog queued beforehand.
struct DrainRun {
    processes: usize,
    backlog: u64,
    /// From the spawn of the first process until the last sample with work left was followed
    /// by one with none.
    from_spawn: Option<Duration>,
    /// From the last sample without progress (start-up excluded) to done.
    busy: Option<Duration>,
    cpu: Option<CpuSplit>,
    waits: Waits,
    per_item: String,
    /// What the database held afterwards.
    check: String,
    errors: Errors,
}

impl DrainRun {
    fn busy_rate(&self) -> Option<f64> {
        self.busy.map(|b| per_s(self.backlog, b))
    }

    fn describe(&self, unit: &str) -> String {
        match (self.busy_rate(), self.from_spawn) {
            (Some(rate), Some(total)) => format!(
                "{rate:.0} {unit}/s while busy ({} in {:.2} s; {:.0}/s counting start-up, {:.2} s from spawn; errors: {})",
                self.backlog,
                self.busy.unwrap_or_default().as_secs_f64(),
                per_s(self.backlog, total),
                total.as_secs_f64(),
                self.errors.summary()
            ),
            _ => format!(
                "did not drain: {} (errors: {})",
                self.check,
                self.errors.summary()
            ),
        }
    }
}

/// When to ask `remaining` next. The count costs the database a few milliseconds, on the
/// CPUs the drain runs on, so it is asked often only where the timing is decided: every
/// 25 ms until the work starts going down and once less than 0.3 s of work is left (going by
/// the rate so far), and in between at half the time the rest should take, at most every
/// 0.5 s. Both peers' drains are timed this way.
fn next_sample(samples: &[(Instant, i64)]) -> Duration {
    const FINE: Duration = Duration::from_millis(25);
    let (Some(&(t0, n0)), Some(&(t1, n1))) = (samples.first(), samples.last()) else {
        return FINE;
    };
    let elapsed = (t1 - t0).as_secs_f64();
    if n1 >= n0 || elapsed <= 0.0 {
        return FINE;
    }
    let rate = (n0 - n1) as f64 / elapsed;
    let left = Duration::from_secs_f64(n1 as f64 / rate);
    if left < Duration::from_millis(300) {
        FINE
    } else {
        (left / 2).clamp(FINE, Duration::from_millis(500))
    }
}

/// Asks `remaining` (see [`next_sample`] for how often) until it is 0; `(samples, done_at)`.
async fn sample_until_empty(
    monitor: &PgPool,
    remaining: &'static str,
    deadline: Instant,
    children: &mut [ChildGuard],
    errors: &Errors,
) -> (Vec<(Instant, i64)>, Option<Instant>) {
    let mut samples: Vec<(Instant, i64)> = Vec::new();
    // Since the work started going down (the samples before it).
    let mut moving: Option<usize> = None;
    loop {
        match count(monitor, remaining).await {
            Ok(n) => {
                let now = Instant::now();
                if moving.is_none() && samples.last().is_some_and(|&(_, last)| n < last) {
                    moving = Some(samples.len() - 1);
                }
                samples.push((now, n));
                if n == 0 {
                    return (samples, Some(now));
                }
            }
            Err(e) => errors.add(format!("monitor query: {e}")),
        }
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.0.try_wait() {
                errors.add(format!("an executor process exited: {status}"));
                return (samples, None);
            }
        }
        if Instant::now() > deadline {
            errors.add("did not drain before the deadline");
            return (samples, None);
        }
        let wait = moving.map_or(Duration::from_millis(25), |from| {
            next_sample(&samples[from..])
        });
        tokio::time::sleep(wait).await;
    }
}

fn drain_times(
    samples: &[(Instant, i64)],
    backlog: u64,
    spawned: Instant,
    done: Option<Instant>,
) -> (Option<Duration>, Option<Duration>) {
    let Some(done) = done else {
        return (None, None);
    };
    let busy_from = samples
        .iter()
        .take_while(|(_, n)| *n >= backlog as i64)
        .last()
        .map_or(spawned, |(t, _)| *t);
    (Some(done - spawned), Some(done - busy_from))
}

/// Work left for tether: commands not yet terminal, outbox rows not yet relayed.
const TETHER_REMAINING: &str =
    "SELECT (SELECT count(*) FROM commands WHERE state IN ('PENDING', 'RETRYING'))
     + (SELECT count(*) FROM commands WHERE state = 'RUNNING')
     + (SELECT count(*) FROM outbox WHERE sent_at IS NULL)";

const GRAPHILE_REMAINING: &str = "SELECT count(*) FROM graphile_worker._private_jobs";

/// One round of tether executors: a new database, an API, a backlog of `n` commands (then the
/// API stops), then `workers` worker processes timed until it is drained.
async fn tether_drain(
    env: &Env,
    dir: &Path,
    db: &str,
    workers: usize,
    n: u64,
    opts: &Opts,
    extra: &[String],
) -> anyhow::Result<DrainRun> {
    let url = env.url(db);
    migrate(&url).await?;
    let api = start_api(dir, &format!("{db}-api"), &url, extra).await?;
    let backlog = run_accepts_bounded(
        api.addr,
        opts.concurrency,
        Duration::from_secs(600),
        Some(n),
    )
    .await;
    let errors = Errors::default();
    if backlog.errors.summary() != "none" {
        errors.add(format!("backlog accepts: {}", backlog.errors.summary()));
    }
    let n = backlog.accepted;
    // The API is not needed for the drain; stopping it also flushes its backends' statistics.
    drop(api);
    let monitor = pool(&url, 1).await?;
    let before = settled_stats(env, db).await;

    let spawned = Instant::now();
    let mut children = Vec::new();
    for i in 0..workers {
        let (child, _ready) = spawn_worker(dir, &format!("{db}-worker-{i}"), &url, extra)?;
        children.push(child);
    }
    let labels: Vec<(u32, &str)> = children
        .iter()
        .map(|c| (c.0.id(), "tether worker(s)"))
        .collect();
    let probe = CpuProbe::start(&labels, db, None);
    let waits = WaitSampler::start(env, db).await;
    let (samples, done) = sample_until_empty(
        &monitor,
        TETHER_REMAINING,
        spawned + opts.drain_deadline,
        &mut children,
        &errors,
    )
    .await;
    let listeners = listen_pids(env, db).await;
    let cpu = probe.finish(&listeners);
    let waits = waits_of(waits).await;
    let (from_spawn, busy) = drain_times(&samples, n, spawned, done);
    drop(children);
    let after = settled_stats(env, db).await;

    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM commands GROUP BY state ORDER BY state")
            .fetch_all(&monitor)
            .await
            .unwrap_or_default();
    let orders = count(&monitor, "SELECT count(*) FROM orders").await.ok();
    let relayed = count(
        &monitor,
        "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL",
    )
    .await
    .ok();
    let events = count(&monitor, "SELECT count(*) FROM trace_events")
        .await
        .ok();
    let check = format!(
        "commands {}; orders {}; outbox rows relayed {}; trace_events {}",
        states
            .iter()
            .map(|(s, c)| format!("{s} {c}"))
            .collect::<Vec<_>>()
            .join(", "),
        orders.map_or("?".into(), |o| o.to_string()),
        relayed.map_or("?".into(), |o| o.to_string()),
        events.map_or("?".into(), |o| o.to_string()),
    );
    monitor.close().await;
    Ok(DrainRun {
        processes: workers,
        backlog: n,
        from_spawn,
        busy,
        cpu: Some(cpu),
        waits,
        per_item: per_unit(before, after, n, from_spawn),
        check,
        errors,
    })
}

/// An API and `workers` workers on `db`, for the end-to-end phase once they are ready.
async fn start_cluster(
    dir: &Path,
    env: &Env,
    db: &str,
    workers: usize,
    extra: &[String],
) -> anyhow::Result<(Server, Vec<ChildGuard>)> {
    let url = env.url(db);
    let api = start_api(dir, &format!("{db}-e2e-api"), &url, extra).await?;
    let mut children = Vec::new();
    for i in 0..workers {
        let (child, ready) = spawn_worker(dir, &format!("{db}-e2e-worker-{i}"), &url, extra)?;
        timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| anyhow!("worker {i}: not ready within 30 s"))?
            .map_err(|_| anyhow!("worker {i} exited before it was ready"))?;
        children.push(child);
    }
    Ok((api, children))
}

/// graphile-worker on a new database: `n` jobs queued by `setup`, then `processes` runners.
#[allow(clippy::too_many_arguments)]
async fn graphile_drain(
    env: &Env,
    dir: &Path,
    peer: &Path,
    round: &str,
    processes: usize,
    mode: &str,
    n: u64,
    opts: &Opts,
) -> anyhow::Result<DrainRun> {
    let db = env.create_db(round).await?;
    let result = graphile_drain_in(env, dir, peer, &db, processes, mode, n, opts).await;
    env.drop_db(&db).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn graphile_drain_in(
    env: &Env,
    dir: &Path,
    peer: &Path,
    db: &str,
    processes: usize,
    mode: &str,
    n: u64,
    opts: &Opts,
) -> anyhow::Result<DrainRun> {
    let url = env.url(db);
    let mut setup = tokio::process::Command::new("node");
    setup
        .arg(peer.join("graphile-peer.mjs"))
        .args(["setup", &url, &n.to_string()])
        .current_dir(peer);
    let out = run_to_end(setup, "graphile-peer.mjs setup").await?;
    let queued: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let n = queued.get("enqueued").and_then(Value::as_u64).unwrap_or(0);
    if n == 0 {
        bail!("graphile-peer.mjs setup queued nothing: {out}");
    }
    let monitor = pool(&url, 1).await?;
    let before = settled_stats(env, db).await;
    let errors = Errors::default();
    let spawned = Instant::now();
    let mut children = Vec::new();
    for i in 0..processes {
        children.push(spawn_graphile(
            dir,
            peer,
            &format!("{db}-{mode}-{i}"),
            &url,
            mode,
        )?);
    }
    let labels: Vec<(u32, &str)> = children
        .iter()
        .map(|c| (c.0.id(), "graphile-worker (node)"))
        .collect();
    let probe = CpuProbe::start(&labels, db, None);
    let waits = WaitSampler::start(env, db).await;
    let (samples, done) = sample_until_empty(
        &monitor,
        GRAPHILE_REMAINING,
        spawned + opts.drain_deadline,
        &mut children,
        &errors,
    )
    .await;
    let listeners = listen_pids(env, db).await;
    let cpu = probe.finish(&listeners);
    let waits = waits_of(waits).await;
    let (from_spawn, busy) = drain_times(&samples, n, spawned, done);
    drop(children);
    let after = settled_stats(env, db).await;
    let rows = count(&monitor, "SELECT count(*) FROM bench_orders")
        .await
        .ok();
    monitor.close().await;
    // The job table's first sample may already be below n if the runner started before it;
    // the rate is then slightly overstated, never understated.
    Ok(DrainRun {
        processes,
        backlog: n,
        from_spawn,
        busy,
        cpu: Some(cpu),
        waits,
        per_item: per_unit(before, after, n, from_spawn),
        check: format!(
            "rows inserted by the jobs {}; jobs queued in {:.2} s",
            rows.map_or("?".into(), |r| r.to_string()),
            queued
                .get("enqueue_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        ),
        errors,
    })
}

/// End-to-end latency while a paced load offers `rate` commands/s.
struct E2eUnderLoad {
    e2e: E2eRun,
    target_rate: f64,
    achieved_rate: f64,
    background_errors: Errors,
    workers: usize,
    /// Largest backlog seen while the e2e clients ran, and what was left right after.
    max_backlog: i64,
    backlog_after: i64,
}

async fn e2e_under_load(
    api: &Server,
    url: &str,
    rate: f64,
    workers: usize,
    opts: &Opts,
) -> anyhow::Result<E2eUnderLoad> {
    let addr = api.addr;
    let monitor = pool(url, 1).await?;
    let stop = CancellationToken::new();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let background_errors = Arc::new(Errors::default());
    // Enough pacers that each one's period is well above a createOrder round trip.
    let pacers = opts.concurrency;
    let period = Duration::from_secs_f64(pacers as f64 / rate.max(1.0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..pacers)
        .map(|p| {
            let (stop, accepted, errors) =
                (stop.clone(), accepted.clone(), background_errors.clone());
            tokio::spawn(async move {
                let client = http_client();
                let customer = format!("bg-{p}");
                // Spread the pacers over one period.
                sleep(period.mul_f64(p as f64 / pacers as f64)).await;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    match create_order(&client, addr, &customer).await {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.add(e),
                    }
                }
            })
        })
        .collect();
    // Let the load settle, then measure, sampling the backlog meanwhile.
    sleep(Duration::from_secs(1)).await;
    let sampling = CancellationToken::new();
    let sampler = {
        let (monitor, sampling) = (monitor.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while !sampling.is_cancelled() {
                if let Ok(n) = count(&monitor, TETHER_REMAINING).await {
                    max = max.max(n);
                }
                tokio::select! {
                    _ = sampling.cancelled() => break,
                    _ = sleep(Duration::from_millis(200)) => {}
                }
            }
            max
        })
    };
    let e2e = run_e2e(addr, opts.e2e_clients, opts.e2e_commands).await;
    sampling.cancel();
    let max_backlog = sampler.await.unwrap_or(-1);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let achieved_rate = per_s(accepted.load(Ordering::Relaxed), start.elapsed());
    let backlog_after = count(&monitor, TETHER_REMAINING).await.unwrap_or(-1);
    monitor.close().await;
    Ok(E2eUnderLoad {
        e2e,
        target_rate: rate,
        achieved_rate,
        background_errors: Arc::try_unwrap(background_errors).unwrap_or_default(),
        workers,
        max_backlog,
        backlog_after,
    })
}

/// pgbench's database and script: a table shaped like a small `commands` row (text key, type,
/// JSON payload, owner, state, time) and one single-row `INSERT`.
async fn pgbench_setup(env: &Env, dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    if env.pgbench.is_none() {
        bail!("pgbench not found (set TETHER_BENCH_PGBENCH)");
    }
    let db = env.create_db("pgbench").await?;
    let mut conn = PgConnection::connect(&env.url(&db)).await?;
    sqlx::raw_sql(
        "CREATE TABLE cmd (
             trace_id     TEXT PRIMARY KEY,
             command_type TEXT NOT NULL,
             payload      TEXT NOT NULL,
             owner        TEXT NOT NULL,
             state        TEXT NOT NULL,
             created_at   BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    let payload = json!({ "input": order_input("c-1") }).to_string();
    let script = dir.join("pgbench-insert.sql");
    std::fs::write(
        &script,
        format!(
            "INSERT INTO cmd (trace_id, command_type, payload, owner, state, created_at) \
             VALUES (gen_random_uuid()::text, 'createOrder', '{payload}', 'alice', 'PENDING', \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint);\n"
        ),
    )?;
    Ok((db, script))
}

async fn pgbench_run(
    env: &Env,
    dir: &Path,
    db: &str,
    script: &Path,
    secs: u64,
    opts: &Opts,
) -> anyhow::Result<PgbenchRun> {
    let Some(bin) = &env.pgbench else {
        bail!("pgbench not found (set TETHER_BENCH_PGBENCH)");
    };
    let probe = CpuProbe::start(&[], db, Some("pgbench"));
    let waits = WaitSampler::start(env, db).await;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "-n",
        "-M",
        "prepared",
        "-c",
        &opts.concurrency.to_string(),
        "-j",
        "2",
        "-T",
        &secs.to_string(),
        "-f",
    ])
    .arg(script)
    .arg(env.url(db));
    let out = run_to_end(cmd, "pgbench").await?;
    let cpu = probe.finish(&[]);
    let waits = waits_of(waits).await;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pgbench.out"))?;
    let _ = log.write_all(out.as_bytes());
    let field = |prefix: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let tps = field("tps = ")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no tps in pgbench's output: {out}"))?;
    Ok(PgbenchRun {
        tps,
        transactions: field("number of transactions actually processed:")
            .and_then(|v| v.parse().ok()),
        failed: field("number of failed transactions:")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        latency_avg_ms: field("latency average = ")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        secs,
        cpu,
        waits,
    })
}

/// The events of a succeeded `createOrder` trace as tether writes them (seq 1–8), for the bulk
/// load; messages and details that name the order or its outbox event are filled in per trace.
const SYNTHETIC_EVENTS: &str = "(VALUES
    (1, 'CommandApi', 'ACCEPTED', NULL::int, 'createOrder accepted', 'PENDING'),
    (2, 'TransactionListener', 'ACCEPTED', 1, 'createOrder picked up from the commands table', 'RUNNING'),
    (3, 'TransactionManager', 'ACCEPTED', 1, 'attempt 1 started (lease 30000 ms)', 'RUNNING'),
    (4, 'CommandBuilder', 'SUCCESS', 1, 'createOrder built from its payload', 'SUCCEEDED'),
    (5, 'Command', 'SUCCESS', 1, 'createOrder done', 'SUCCEEDED'),
    (6, 'EventCollector', 'SUCCESS', 1, '1 event(s) collected for the outbox', 'SUCCEEDED'),
    (7, 'TransactionManager', 'SUCCESS', 1, 'attempt 1 committed', 'SUCCEEDED'),
    (8, 'EventEmitter', 'SUCCESS', NULL::int, NULL, 'SUCCEEDED'))
    AS e(seq, component, status, attempt, message, state)";

/// How long ago the bulk-loaded history was written: 30 days, unless
/// `TETHER_BENCH_PG_HISTORY_MINUTES` says otherwise (60 puts it in this week's partition, next to
/// the accepts measured).
fn history_age_minutes() -> i64 {
    std::env::var("TETHER_BENCH_PG_HISTORY_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30 * 24 * 60)
}

fn history_age() -> String {
    match history_age_minutes() {
        m if m % (24 * 60) == 0 => format!("{} days", m / (24 * 60)),
        m => format!("{m} minutes"),
    }
}

/// Bulk-loads `rows` events (8 per trace) of past traces whose IDs are UUID v7 from
/// [`history_age`] ago, in ID order (as a table that grew over time: new traces sort after all
/// of them).
async fn bulk_load(url: &str, rows: u64) -> anyhow::Result<BulkLoad> {
    let mut conn = PgConnection::connect(url).await?;
    let traces = rows.div_ceil(8) as i64;
    let base_ms = chrono::Utc::now().timestamp_millis() - history_age_minutes() * 60_000;
    // One row per trace first (OFFSET 0 keeps it from being flattened, so each trace's IDs are
    // computed once), then its 8 events.
    let sql = format!(
        "INSERT INTO trace_events (trace_id, seq, component, status, attempt, message, detail, state, at)
         SELECT t.id, e.seq, e.component, e.status, e.attempt,
             coalesce(e.message, 'published OrderCreated ' || t.ev),
             CASE e.seq
                 WHEN 5 THEN '{{\"orderId\":\"ord_' || t.h || '\",\"totalCents\":900}}'
                 WHEN 6 THEN '{{\"events\":[{{\"eventId\":\"' || t.ev
                     || '\",\"eventType\":\"OrderCreated\"}}],\"types\":[\"OrderCreated\"]}}'
                 WHEN 8 THEN '{{\"eventId\":\"' || t.ev || '\",\"eventType\":\"OrderCreated\"}}'
             END,
             e.state, t.ms + e.seq
         FROM (SELECT g, ms, h,
                   substr(x, 1, 8) || '-' || substr(x, 9, 4) || '-7' || substr(h, 1, 3) || '-8'
                       || substr(h, 4, 3) || '-' || substr(h, 7, 12) AS id,
                   substr(x, 1, 8) || '-' || substr(x, 9, 4) || '-7' || substr(h, 16, 3) || '-a'
                       || substr(h, 19, 3) || '-' || substr(h, 21, 12) AS ev
               FROM (SELECT g, $1::bigint + g AS ms, lpad(to_hex($1::bigint + g), 12, '0') AS x,
                         md5(g::text) AS h
                     FROM generate_series(0::bigint, $2::bigint - 1) AS g) AS raw
               OFFSET 0) AS t
         CROSS JOIN {SYNTHETIC_EVENTS}
         WHERE t.g * 8 + e.seq <= $3::bigint"
    );
    // The history's weeks get their partitions, as they did when that history was written.
    sqlx::query("SELECT tether_trace_partitions($1)")
        .bind(base_ms)
        .execute(&mut conn)
        .await
        .context("making the history's trace_events partitions")?;
    let t0 = Instant::now();
    let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(base_ms)
        .bind(traces)
        .bind(rows as i64)
        .execute(&mut conn)
        .await
        .context("bulk load of trace_events")?
        .rows_affected();
    let insert = t0.elapsed();
    let t1 = Instant::now();
    sqlx::raw_sql("ANALYZE trace_events")
        .execute(&mut conn)
        .await?;
    let analyze = t1.elapsed();
    let t2 = Instant::now();
    sqlx::raw_sql("VACUUM trace_events")
        .execute(&mut conn)
        .await?;
    let vacuum = t2.elapsed();
    let t3 = Instant::now();
    sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
    let checkpoint = t3.elapsed();
    let (table_bytes, index_bytes): (i64, i64) = sqlx::query_as(
        "SELECT sum(pg_table_size(relid))::bigint, sum(pg_indexes_size(relid))::bigint
             FROM pg_partition_tree('trace_events') WHERE isleaf",
    )
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(BulkLoad {
        rows: inserted,
        insert,
        analyze,
        vacuum,
        checkpoint,
        table_bytes,
        index_bytes,
    })
}

async fn measure_accepts(
    env: &Env,
    db: &str,
    api: &Server,
    duration: Duration,
    opts: &Opts,
) -> Measured<AcceptRun> {
    let probe = CpuProbe::start(&[(api.pid(), "tether API")], db, None);
    let waits = WaitSampler::start(env, db).await;
    let run = run_accepts(api.addr, opts.concurrency, duration).await;
    let listeners = listen_pids(env, db).await;
    let cpu = probe.finish(&listeners);
    let waits = waits_of(waits).await;
    Measured { run, cpu, waits }
}

async fn measure_queries(
    env: &Env,
    db: &str,
    api: &Server,
    ids: Arc<Vec<String>>,
    duration: Duration,
    opts: &Opts,
) -> Measured<QueryRun> {
    let probe = CpuProbe::start(&[(api.pid(), "tether API")], db, None);
    let waits = WaitSampler::start(env, db).await;
    let run = run_trace_queries(api.addr, ids, opts.concurrency, duration).await;
    let listeners = listen_pids(env, db).await;
    let cpu = probe.finish(&listeners);
    let waits = waits_of(waits).await;
    Measured { run, cpu, waits }
}

/// `serve --role api` on `db`, warmed up for a second (pool connections, prepared statements).
async fn warm_api(dir: &Path, env: &Env, db: &str, opts: &Opts) -> anyhow::Result<Server> {
    let api = start_api(dir, &format!("{db}-api"), &env.url(db), &[]).await?;
    let _ = run_accepts(api.addr, opts.concurrency, Duration::from_secs(1)).await;
    Ok(api)
}

/// Round 1: accepts and pgbench, in the order accepts, pgbench, pgbench, accepts (halves).
async fn accepts_vs_pgbench(
    env: &Env,
    dir: &Path,
    opts: &Opts,
    r: &mut Results,
) -> anyhow::Result<()> {
    let db = env.create_db("empty").await?;
    let result = async {
        migrate(&env.url(&db)).await?;
        let api = warm_api(dir, env, &db, opts).await?;
        let pgb = pgbench_setup(env, dir).await;
        let half = half(opts);
        let a1 = measure_accepts(env, &db, &api, half, opts).await;
        let mut runs = Vec::new();
        if let Ok((pdb, script)) = &pgb {
            for _ in 0..2 {
                runs.push(pgbench_run(env, dir, pdb, script, half.as_secs(), opts).await);
            }
        }
        let a2 = measure_accepts(env, &db, &api, half, opts).await;
        r.accepts = Some(merge_accepts(a1, a2));
        match pgb {
            Ok((pdb, _)) => {
                env.drop_db(&pdb).await;
                let mut ok = Vec::new();
                for run in runs {
                    match run {
                        Ok(run) => ok.push(run),
                        Err(e) => r.failures.push(format!("pgbench: {e:#}")),
                    }
                }
                r.pgbench = ok.into_iter().reduce(merge_pgbench);
            }
            Err(e) => r.failures.push(format!("pgbench: {e:#}")),
        }
        Ok(())
    }
    .await;
    env.drop_db(&db).await;
    result
}

/// Round 4: an empty database and one with `opts.pg_trace_rows` rows in `trace_events`, an API
/// on each; accepts in the order empty, loaded, loaded, empty (halves), then trace queries the
/// same way.
async fn empty_vs_loaded(
    env: &Env,
    dir: &Path,
    opts: &Opts,
    r: &mut Results,
) -> anyhow::Result<()> {
    let empty = env.create_db("empty2").await?;
    let loaded = match env.create_db("rows").await {
        Ok(db) => db,
        Err(e) => {
            env.drop_db(&empty).await;
            return Err(e);
        }
    };
    let result = async {
        migrate(&env.url(&empty)).await?;
        migrate(&env.url(&loaded)).await?;
        let load = bulk_load(&env.url(&loaded), opts.pg_trace_rows).await?;
        eprintln!(
            "load: (pg) loaded {} rows in {:.1} s (ANALYZE {:.1} s)",
            load.rows,
            load.insert.as_secs_f64(),
            load.analyze.as_secs_f64()
        );
        r.load = Some(load);
        let api_e = warm_api(dir, env, &empty, opts).await?;
        let api_l = warm_api(dir, env, &loaded, opts).await?;
        let half = half(opts);
        eprintln!("load: (pg) accepts, empty / loaded / loaded / empty …");
        let e1 = measure_accepts(env, &empty, &api_e, half, opts).await;
        let l1 = measure_accepts(env, &loaded, &api_l, half, opts).await;
        let l2 = measure_accepts(env, &loaded, &api_l, half, opts).await;
        let e2 = measure_accepts(env, &empty, &api_e, half, opts).await;
        let (ae, al) = (merge_accepts(e1, e2), merge_accepts(l1, l2));
        eprintln!("load: (pg) trace queries, empty / loaded / loaded / empty …");
        let (ids_e, ids_l) = (
            Arc::new(ae.run.trace_ids.clone()),
            Arc::new(al.run.trace_ids.clone()),
        );
        let e1 = measure_queries(env, &empty, &api_e, ids_e.clone(), half, opts).await;
        let l1 = measure_queries(env, &loaded, &api_l, ids_l.clone(), half, opts).await;
        let l2 = measure_queries(env, &loaded, &api_l, ids_l, half, opts).await;
        let e2 = measure_queries(env, &empty, &api_e, ids_e, half, opts).await;
        r.empty = Some(RwRound {
            accepts: ae,
            queries: merge_queries(e1, e2),
            rows_note: rows_note(env, &empty).await,
        });
        r.loaded = Some(RwRound {
            accepts: al,
            queries: merge_queries(l1, l2),
            rows_note: rows_note(env, &loaded).await,
        });
        Ok(())
    }
    .await;
    env.drop_db(&empty).await;
    env.drop_db(&loaded).await;
    result
}

async fn rows_note(env: &Env, db: &str) -> String {
    let Ok(monitor) = pool(&env.url(db), 1).await else {
        return String::new();
    };
    let commands = count(&monitor, "SELECT count(*) FROM commands").await.ok();
    // Where the events are: the history's partition, this week's, the default one.
    let parts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM trace_events GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&monitor)
    .await
    .unwrap_or_default();
    monitor.close().await;
    let events: i64 = parts.iter().map(|(_, n)| n).sum();
    format!(
        "afterwards {} commands, {} trace_events rows ({})",
        commands.map_or("?".into(), |c| c.to_string()),
        events,
        parts
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct Results {
    server: String,
    /// Round 1.
    accepts: Option<Measured<AcceptRun>>,
    pgbench: Option<PgbenchRun>,
    /// Round 4.
    empty: Option<RwRound>,
    loaded: Option<RwRound>,
    load: Option<BulkLoad>,
    w1: Option<DrainRun>,
    w2: Option<DrainRun>,
    e2e: Option<E2eUnderLoad>,
    /// (label, processes, run)
    graphile: Vec<(String, DrainRun)>,
    /// Round 5: graphile-worker's mode, then per pair the one-worker tether rate and the
    /// one-process graphile-worker rate, measured one right after the other.
    pairs: Option<(String, Vec<Pair>)>,
    failures: Vec<String>,
}

/// graphile-worker's faster mode with one process, among the drains measured.
fn better_mode(graphile: &[(String, DrainRun)]) -> Option<&str> {
    graphile
        .iter()
        .filter(|(_, run)| run.processes == 1)
        .max_by(|a, b| {
            a.1.busy_rate()
                .unwrap_or(0.0)
                .total_cmp(&b.1.busy_rate().unwrap_or(0.0))
        })
        .map(|(mode, _)| mode.as_str())
}

/// Alternating pairs in round 5.
const PAIRS: usize = 3;

/// One pair of round 5: tether's rate, graphile-worker's rate (`None`: not measured).
type Pair = (Option<f64>, Option<f64>);

pub(super) async fn main(root: &Path, dir: &Path, opts: &Opts) -> anyhow::Result<()> {
    let env = Env::from_env(root);
    let mut r = Results::default();
    eprintln!(
        "load: (pg) PostgreSQL phase on {} ({}); backlog {}, {} trace_events rows",
        env.admin_url, env.origin, opts.pg_backlog, opts.pg_trace_rows
    );
    r.server = server_info(&env)
        .await
        .unwrap_or_else(|e| format!("unknown ({e:#})"));
    let n = opts.pg_backlog as u64;
    // For working on one part: TETHER_BENCH_PG_PHASES=1,2 runs those phases only (not written).
    let only = std::env::var("TETHER_BENCH_PG_PHASES").ok();
    let run = |phase: &str| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|p| p == phase))
    };
    anyhow::ensure!(
        only.is_none() || !opts.write,
        "TETHER_BENCH_PG_PHASES runs part of the phase; it is not written to BENCHMARKS.md"
    );

    // 1. Accepts and pgbench.
    if run("1") {
        eprintln!("load: (pg) 1. accepts / pgbench / pgbench / accepts …");
        if let Err(e) = accepts_vs_pgbench(&env, dir, opts, &mut r).await {
            r.failures.push(format!("accepts and pgbench: {e:#}"));
        }
    }

    // 2. tether workers: 1, then 2; the end-to-end latency with the faster count.
    for workers in [1, 2].into_iter().filter(|_| run("2")) {
        eprintln!("load: (pg) 2. backlog of {n}, drained by {workers} tether worker(s) …");
        let db = match env.create_db(&format!("w{workers}")).await {
            Ok(db) => db,
            Err(e) => {
                r.failures.push(format!("{e:#}"));
                continue;
            }
        };
        match tether_drain(&env, dir, &db, workers, n, opts, &[]).await {
            Ok(run) => {
                let done = run.busy_rate();
                if workers == 1 {
                    r.w1 = Some(run);
                } else {
                    r.w2 = Some(run);
                    let w1 = r.w1.as_ref().and_then(DrainRun::busy_rate);
                    let (best, count) = match (w1, done) {
                        (Some(a), Some(b)) if a > b => (Some(a), 1),
                        (_, Some(b)) => (Some(b), 2),
                        (a, None) => (a, 1),
                    };
                    if let Some(best) = best {
                        eprintln!(
                            "load: (pg) end-to-end latency with {count} worker(s) at ~{:.0}/s offered …",
                            best / 2.0
                        );
                        let e2e = async {
                            let (api, _workers) = start_cluster(dir, &env, &db, count, &[]).await?;
                            e2e_under_load(&api, &env.url(&db), best / 2.0, count, opts).await
                        };
                        match e2e.await {
                            Ok(e) => r.e2e = Some(e),
                            Err(e) => r.failures.push(format!("end-to-end: {e:#}")),
                        }
                    }
                }
            }
            Err(e) => r.failures.push(format!("{workers} worker(s): {e:#}")),
        }
        env.drop_db(&db).await;
    }

    // 3. graphile-worker.
    match &env.peer {
        Ok(_) if !run("3") => {}
        Ok(peer) => {
            for (mode, processes) in [("default", 1), ("batched", 1)] {
                eprintln!(
                    "load: (pg) 3. graphile-worker, {mode}, {processes} process(es), {n} jobs …"
                );
                match graphile_drain(
                    &env,
                    dir,
                    peer,
                    &format!("gw_{mode}_{processes}"),
                    processes,
                    mode,
                    n,
                    opts,
                )
                .await
                {
                    Ok(run) => r.graphile.push((mode.to_owned(), run)),
                    Err(e) => r.failures.push(format!("graphile-worker {mode}: {e:#}")),
                }
            }
            let best_mode = better_mode(&r.graphile).unwrap_or("default").to_owned();
            eprintln!("load: (pg) 3. graphile-worker, {best_mode}, 2 processes, {n} jobs …");
            match graphile_drain(
                &env,
                dir,
                peer,
                &format!("gw_{best_mode}_2"),
                2,
                &best_mode,
                n,
                opts,
            )
            .await
            {
                Ok(run) => r.graphile.push((best_mode, run)),
                Err(e) => r
                    .failures
                    .push(format!("graphile-worker, 2 processes: {e:#}")),
            }
        }
        Err(e) => r
            .failures
            .push(format!("graphile-worker not measured: {e}")),
    }

    // 5. Alternating pairs: one tether worker, then one graphile-worker process (its better
    // mode in round 3, else batched), each on a new database, PAIRS times. A pair's two drains
    // are seconds apart, so a slow spell of the shared machine hits both sides of its ratio.
    match &env.peer {
        Ok(peer) if run("5") => {
            let mode = better_mode(&r.graphile).unwrap_or("batched").to_owned();
            let mut pairs = Vec::new();
            for k in 1..=PAIRS {
                eprintln!(
                    "load: (pg) 5. pair {k} of {PAIRS}: 1 tether worker, then graphile-worker {mode}, 1 process …"
                );
                let tether = match env.create_db(&format!("p{k}")).await {
                    Ok(db) => {
                        let run = tether_drain(&env, dir, &db, 1, n, opts, &[]).await;
                        env.drop_db(&db).await;
                        run.map_err(|e| r.failures.push(format!("pair {k}, tether: {e:#}")))
                            .ok()
                            .and_then(|run| run.busy_rate())
                    }
                    Err(e) => {
                        r.failures.push(format!("{e:#}"));
                        None
                    }
                };
                let graphile =
                    graphile_drain(&env, dir, peer, &format!("gw_p{k}"), 1, &mode, n, opts)
                        .await
                        .map_err(|e| r.failures.push(format!("pair {k}, graphile-worker: {e:#}")))
                        .ok()
                        .and_then(|run| run.busy_rate());
                pairs.push((tether, graphile));
            }
            r.pairs = Some((mode, pairs));
        }
        _ => {}
    }

    // 4. Empty and loaded tables.
    if run("4") {
        eprintln!(
            "load: (pg) 4. bulk load of {} trace_events rows, then accepts and trace queries on \
             an empty and the loaded database …",
            opts.pg_trace_rows
        );
        if let Err(e) = empty_vs_loaded(&env, dir, opts, &mut r).await {
            r.failures.push(format!("empty and loaded tables: {e:#}"));
        }
    }

    let server_log = scan_logs(dir, 20);
    let rows = rows(&r, opts);
    println!("\n{}", text_table(&rows));
    for f in &r.failures {
        println!("problem: {f}");
    }
    for l in &server_log {
        println!("server log: {l}");
    }
    if opts.write {
        let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let hash = git(root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        let section = markdown(&r, &rows, &server_log, opts, &env, &date, &hash, dirty);
        let path = root.join("BENCHMARKS.md");
        write_benchmarks_md(&path, "## PostgreSQL results (", &section)?;
        println!("wrote {}", path.display());
    }
    if opts.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

async fn server_info(env: &Env) -> anyhow::Result<String> {
    let mut conn = env.admin().await?;
    let (version, shared_buffers, sync, max_conn, wal_buffers, commit_delay): (
        String,
        String,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('shared_buffers'),
             current_setting('synchronous_commit'), current_setting('max_connections'),
             current_setting('wal_buffers'), current_setting('commit_delay')",
    )
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(format!(
        "PostgreSQL {version} ({}), same machine, over 127.0.0.1; shared_buffers {shared_buffers}, \
         wal_buffers {wal_buffers}, synchronous_commit {sync}, commit_delay {commit_delay}, \
         max_connections {max_conn}",
        env.origin
    ))
}

// ---------------------------------------------------------------------------------------------
// Report

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn rows(r: &Results, opts: &Opts) -> Vec<Row> {
    let c = opts.concurrency;
    let mut rows = Vec::new();
    let accept_rate = |m: &Measured<AcceptRun>| per_s(m.run.accepted, m.run.elapsed);
    let accept_value = |m: &Measured<AcceptRun>| {
        let a = &m.run;
        format!(
            "{:.0}/s ({} in {:.1} s; p50 {}, p99 {}; errors: {})",
            per_s(a.accepted, a.elapsed),
            a.accepted,
            a.elapsed.as_secs_f64(),
            ms(percentile(&a.latencies, 50.0)),
            ms(percentile(&a.latencies, 99.0)),
            a.errors.summary()
        )
    };
    let query_value = |q: &QueryRun| {
        format!(
            "{:.0}/s ({} in {:.1} s; p50 {}, p99 {}; errors: {})",
            q.rate(),
            q.requests,
            q.elapsed.as_secs_f64(),
            ms(percentile(&q.latencies, 50.0)),
            ms(percentile(&q.latencies, 99.0)),
            q.errors.summary()
        )
    };
    let cpu_value =
        |cpu: &CpuSplit, waits: &Waits| format!("{}; {}", cpu.describe(), waits.describe());

    // 1.
    if let Some(a) = &r.accepts {
        rows.push(row(
            &format!("(1) accepted commands/s, {c} HTTP clients, `serve --role api`, empty tables"),
            accept_value(a),
            "",
        ));
        rows.push(row(
            "(1) CPU cores during those accepts; the database's backends",
            cpu_value(&a.cpu, &a.waits),
            "",
        ));
    }
    if let Some(p) = &r.pgbench {
        rows.push(row(
            &format!(
                "(1) pgbench single-row INSERT, {c} clients (`-j 2 -M prepared`, {} s)",
                p.secs
            ),
            format!(
                "{:.0} TPS ({} transactions; latency avg {}; failed: {})",
                p.tps,
                p.transactions.map_or("?".into(), |t| t.to_string()),
                p.latency_avg_ms
                    .map_or("?".into(), |l| format!("{l:.2} ms")),
                p.failed.map_or("?".into(), |f| f.to_string())
            ),
            "baseline",
        ));
        rows.push(row(
            "(1) CPU cores during pgbench; the database's backends",
            cpu_value(&p.cpu, &p.waits),
            "",
        ));
    }
    if let (Some(a), Some(p)) = (&r.accepts, &r.pgbench) {
        rows.push(row(
            "(1) ratio accepts/s ÷ pgbench TPS",
            format!("{:.2}", ratio(accept_rate(a), p.tps)),
            "≥ 1.0",
        ));
    }

    // 2.
    let w1 = r.w1.as_ref().and_then(DrainRun::busy_rate);
    let w2 = r.w2.as_ref().and_then(DrainRun::busy_rate);
    for (run, label) in [
        (&r.w1, "1 `tether worker`"),
        (&r.w2, "2 `tether worker` processes"),
    ] {
        if let Some(run) = run {
            rows.push(row(
                &format!(
                    "(2) tether executed commands/s, {label} ({TETHER_IN_FLIGHT} attempts in flight each), backlog {}",
                    run.backlog
                ),
                run.describe("commands"),
                "",
            ));
        }
    }
    for (mode, run) in &r.graphile {
        let how = if mode == "batched" {
            "batched: `localQueue.size` 64, `completeJobBatchDelay` 0"
        } else {
            "default options"
        };
        rows.push(row(
            &format!(
                "(2) graphile-worker jobs/s (one INSERT each), {} process(es) × concurrency {CONCURRENCY_PER_PROCESS}, {how}",
                run.processes
            ),
            run.describe("jobs"),
            "",
        ));
    }
    let best_graphile = |processes: usize| {
        r.graphile
            .iter()
            .filter(|(_, run)| run.processes == processes)
            .filter_map(|(m, run)| Some((m.clone(), run.busy_rate()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let paired = r.pairs.is_some();
    if let (Some(t), Some((mode, g))) = (w1, best_graphile(1)) {
        rows.push(row(
            "(2) ratio tether ÷ graphile-worker, 1 process each (graphile's better mode)",
            format!("{:.2} ({t:.0}/s ÷ {g:.0}/s, graphile {mode})", ratio(t, g)),
            if paired { "" } else { "≥ 1.5" },
        ));
    }
    if let Some((mode, pairs)) = &r.pairs {
        let mut ratios: Vec<f64> = pairs
            .iter()
            .filter_map(|p| match p {
                (Some(t), Some(g)) => Some(ratio(*t, *g)),
                _ => None,
            })
            .collect();
        let each: Vec<String> = pairs
            .iter()
            .map(|p| match p {
                (Some(t), Some(g)) => format!("{:.2} ({t:.0} ÷ {g:.0})", ratio(*t, *g)),
                _ => "not measured".to_owned(),
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios.get(ratios.len() / 2).copied();
        rows.push(row(
            &format!(
                "(2) ratio tether ÷ graphile-worker {mode}, 1 process each, in {} alternating pairs (tether first)",
                pairs.len()
            ),
            format!(
                "median {}: {}",
                median.map_or("n/a".to_owned(), |m| format!("{m:.2}")),
                each.join(", ")
            ),
            "≥ 1.5",
        ));
    }
    if let (Some(t), Some((mode, g))) = (w2, best_graphile(2)) {
        rows.push(row(
            "(2) ratio tether ÷ graphile-worker, 2 processes each",
            format!("{:.2} ({t:.0}/s ÷ {g:.0}/s, graphile {mode})", ratio(t, g)),
            "",
        ));
    }
    if let Some(e) = &r.e2e {
        let d = &e.e2e;
        rows.push(row(
            &format!(
                "(2) end-to-end latency p50 / p99 (mutation → SUCCESS seen), {} clients, {} commands, {} worker(s), background load",
                opts.e2e_clients,
                d.latencies.len(),
                e.workers
            ),
            format!(
                "{} / {} (max {}; background {:.0}/s offered for {:.0}/s = half the executed rate; backlog max {} / after {}; first seen live {}, in history {}, by gap fill {}, by re-poll {}; errors: {}; background errors: {})",
                ms(percentile(&d.latencies, 50.0)),
                ms(percentile(&d.latencies, 99.0)),
                ms(percentile(&d.latencies, 100.0)),
                e.achieved_rate,
                e.target_rate,
                e.max_backlog,
                e.backlog_after,
                d.live,
                d.history,
                d.gap_fill,
                d.repoll,
                d.errors.summary(),
                e.background_errors.summary()
            ),
            "",
        ));
        rows.push(row(
            "(2) of which on the server (acceptedAt → SUCCESS timestamp) / the createOrder round trip, p50 / p99",
            format!(
                "{} / {} and {} / {}",
                ms(percentile(&d.server_side, 50.0)),
                ms(percentile(&d.server_side, 99.0)),
                ms(percentile(&d.mutation_rtt, 50.0)),
                ms(percentile(&d.mutation_rtt, 99.0))
            ),
            "",
        ));
    }

    // 3.
    if let Some(l) = &r.load {
        rows.push(row(
            &format!(
                "(3) bulk load of {} `trace_events` rows (one INSERT … SELECT)",
                l.rows
            ),
            format!(
                "{:.1} s, ANALYZE {:.1} s (then VACUUM {:.1} s, CHECKPOINT {:.1} s; table {:.2} GiB, indexes {:.2} GiB)",
                l.insert.as_secs_f64(),
                l.analyze.as_secs_f64(),
                l.vacuum.as_secs_f64(),
                l.checkpoint.as_secs_f64(),
                l.table_bytes as f64 / (1u64 << 30) as f64,
                l.index_bytes as f64 / (1u64 << 30) as f64
            ),
            "",
        ));
    }
    let rows_loaded = r.load.as_ref().map_or(0, |l| l.rows);
    for (side, label) in [
        (&r.empty, "empty tables".to_owned()),
        (&r.loaded, format!("{rows_loaded} rows in trace_events")),
    ] {
        let Some(side) = side else { continue };
        rows.push(row(
            &format!("(3) accepted commands/s, {c} clients, {label}"),
            format!("{} ({})", accept_value(&side.accepts), side.rows_note),
            "",
        ));
        rows.push(row(
            &format!("(3) trace queries/s, {c} clients, {label}"),
            query_value(&side.queries.run),
            "",
        ));
        rows.push(row(
            &format!(
                "(3) CPU cores during those accepts / queries ({label}); the database's backends"
            ),
            format!(
                "accepts: {} — queries: {}",
                cpu_value(&side.accepts.cpu, &side.accepts.waits),
                cpu_value(&side.queries.cpu, &side.queries.waits)
            ),
            "",
        ));
    }
    if let (Some(e), Some(l)) = (&r.empty, &r.loaded) {
        let p99 = |v: &[Duration]| percentile(v, 99.0).as_secs_f64();
        rows.push(row(
            "(3) loaded ÷ empty: accepts/s, accept p99",
            format!(
                "{:.2}, {:.2}",
                ratio(accept_rate(&l.accepts), accept_rate(&e.accepts)),
                ratio(p99(&l.accepts.run.latencies), p99(&e.accepts.run.latencies))
            ),
            "rate ≥ 0.83, p99 ≤ 1.2",
        ));
        rows.push(row(
            "(3) loaded ÷ empty: trace queries/s, query p99",
            format!(
                "{:.2}, {:.2}",
                ratio(l.queries.run.rate(), e.queries.run.rate()),
                ratio(p99(&l.queries.run.latencies), p99(&e.queries.run.latencies))
            ),
            "rate ≥ 0.83, p99 ≤ 1.2",
        ));
    }

    // 4.
    if let (Some(a), Some(b)) = (w1, w2) {
        rows.push(row(
            "(4) executed/s, 2 workers ÷ 1 worker (same backlog)",
            format!("{:.2} ({b:.0}/s vs {a:.0}/s)", ratio(b, a)),
            "",
        ));
    }
    for (run, label) in [(&r.w1, "1 worker"), (&r.w2, "2 workers")] {
        if let Some(run) = run {
            rows.push(row(
                &format!("(4) CPU cores during the drain, {label}; the database's backends"),
                format!(
                    "{}; {}",
                    run.cpu.as_ref().map_or("n/a".into(), CpuSplit::describe),
                    run.waits.describe()
                ),
                "",
            ));
            rows.push(row(
                &format!("(4) per executed command, {label}"),
                format!("{} — afterwards: {}", run.per_item, run.check),
                "",
            ));
        }
    }
    for (mode, run) in &r.graphile {
        rows.push(row(
            &format!(
                "(4) graphile-worker {mode}, {} process(es): CPU cores; backends; per job",
                run.processes
            ),
            format!(
                "{}; {} — {} — {}",
                run.cpu.as_ref().map_or("n/a".into(), CpuSplit::describe),
                run.waits.describe(),
                run.per_item,
                run.check
            ),
            "",
        ));
    }
    rows
}

fn text_table(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let target = if r.target.is_empty() {
            String::new()
        } else {
            format!("   [target: {}]", r.target)
        };
        let _ = writeln!(out, "{}\n    {}{}", r.figure, r.value, target);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    r: &Results,
    rows: &[Row],
    server_log: &[String],
    opts: &Opts,
    env: &Env,
    date: &str,
    hash: &str,
    dirty: bool,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## PostgreSQL results ({date}, {hash})\n");
    let quick = if opts.quick { " --quick" } else { "" };
    let _ = writeln!(
        md,
        "Command: `scripts/bench --pg{quick}` (finds PostgreSQL like `scripts/test`, runs `npm ci` \
         in `scripts/bench-pg`, then `cargo bench --bench load -- --pg{quick}`). Mode: {}: {} s \
         phases, {} clients, backlog {} commands / jobs, {} rows bulk-loaded, {} end-to-end \
         commands.\n",
        if opts.quick { "quick" } else { "full" },
        opts.duration.as_secs(),
        opts.concurrency,
        opts.pg_backlog,
        opts.pg_trace_rows,
        opts.e2e_commands
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "Machine: {cpus} vCPU, shared and noisy; the benchmark client, tether, the peers and \
         PostgreSQL all share those CPUs, so compare figures of the same run. Server: {}.{}{}\n",
        r.server,
        if dirty {
            " The working tree had uncommitted changes at the time."
        } else {
            ""
        },
        tether_bin_note()
    );
    let _ = env;
    let _ = writeln!(md, "| Figure | Value | Target |\n|---|---|---|");
    for row in rows {
        let cell = |s: &str| s.replace('|', "\\|");
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            cell(&row.figure),
            cell(&row.value),
            cell(&row.target)
        );
    }
    if !r.failures.is_empty() || !server_log.is_empty() {
        let _ = writeln!(md, "\nProblems seen during the run:\n");
        for f in &r.failures {
            let _ = writeln!(md, "- {f}");
        }
        for l in server_log {
            let _ = writeln!(md, "- log: `{}`", l.replace('`', "'"));
        }
    }
    let half = half(opts).as_secs();
    let c = opts.concurrency;
    let _ = writeln!(md, "\nHow each figure was measured:\n");
    for line in [
        "- Every round has a database of its own on the same server (`tether migrate` first, \
         dropped afterwards); tether runs as separate processes: `tether serve --role api` and \
         `tether worker`, each with its default pool of 16 connections."
            .into(),
        format!(
            "- (1) accepts: after 1 s of warm-up, {c} tasks each with a keep-alive HTTP client loop \
             `createOrder` (as in the SQLite phase); no worker runs, so the commands stay \
             pending. pgbench on a database of its own: `pgbench -n -M prepared -c {c} -j 2 -T \
             {half}` with a one-statement script inserting one row (uuid text key, command type, \
             the order JSON, owner, state, a timestamp) into a table with a primary key; TPS as \
             pgbench reports it (without connection time), the mean of its two runs. Order: \
             accepts {half} s, pgbench {half} s, pgbench {half} s, accepts {half} s."
        ),
        format!(
            "- (2) executors: {} commands accepted through the API with no worker running; then \
             the workers are spawned and the database polled until no command is pending, \
             retrying or running and no outbox row is unrelayed: every 25 ms until the work \
             goes down and once less than 0.3 s of it is left at the rate so far, at half the \
             time left (at most 0.5 s) in between, as the count costs a few ms of the same CPUs. \"While busy\" is \
             from the last poll without progress to the first poll with nothing left (start-up \
             excluded, on both sides); \"counting start-up\" is from the spawn. graphile-worker \
             ({}): the same number of jobs queued by one bulk `graphile_worker.add_jobs` call on \
             a database of its own, each job one `INSERT` of an order-shaped row through \
             `helpers.query`; runners with concurrency {CONCURRENCY_PER_PROCESS} and a pool of \
             {}; polled the same way until `graphile_worker._private_jobs` is empty; tether's \
             side does more per item (order row, outbox row, 7–8 trace events, relay). The ratio \
             takes graphile-worker's better mode. The target is read on round 5: {PAIRS} pairs, \
             each one tether worker's drain right followed by one graphile-worker process's \
             (that mode) on new databases, and the median of the pairs' ratios; rounds 2 and 3 \
             are minutes apart on a machine whose speed changes by tens of percent.",
            opts.pg_backlog,
            "scripts/bench-pg/graphile-peer.mjs, version pinned by its package-lock.json",
            CONCURRENCY_PER_PROCESS + 2
        ),
        format!(
            "- (2) end-to-end: on the database just drained, a new API and the faster worker \
             count; {c} paced clients offer half the executed rate in `createOrder`s (after 1 s \
             of that, the measurement starts) while {} clients measure as in the SQLite \
             phase (mutation → the `TransactionManager` `SUCCESS` event, live over the API's \
             WebSocket, which learns it from the worker by LISTEN/NOTIFY, or from the history).",
            opts.e2e_clients
        ),
        format!(
            "- (3) two new databases, one of them loaded first with {} `trace_events` rows: one \
             `INSERT … SELECT … FROM generate_series` of 8 events per past trace (UUID v7 IDs \
             from {} ago, in order, messages and details as tether writes them, into the \
             partition of their week, made first as tether makes it), then \
             `ANALYZE`, `VACUUM` and `CHECKPOINT` (so autovacuum and the checkpoint do not land \
             in the measurement); an API on each (warmed up 1 s). Accepts as in (1), in the \
             order empty, loaded, loaded, empty, {half} s each; then trace queries the same \
             way: {c} clients, each request for a random trace that database accepted, \
             alternately `trace(traceId) {{ state attempts events {{ … }} }}` and \
             `traceEvents(traceId)`.",
            opts.pg_trace_rows,
            history_age()
        ),
        "- (4) CPU: user + system time from `/proc/<pid>/stat` over the phase ÷ its wall time, \
         for tether's processes, graphile-worker's node processes, this benchmark, every \
         `postgres` process (split by process title into the backends of the round's database, \
         the backends of its LISTEN connections, and the rest: WAL writer, checkpointer, other \
         databases), pgbench (as a reaped child) and the machine (`/proc/stat`). Backends: \
         `pg_stat_activity` of the round's database sampled every 100 ms, non-idle client \
         backends by wait event (`Lock:object` is the lock PostgreSQL takes on commit of a \
         transaction that sent a NOTIFY and holds until the commit is flushed; \"idle in \
         transaction\" means waiting for the client's next statement). Per command / job: \
         `pg_stat_database` of the round's database and `pg_stat_wal` (server-wide) before \
         and after (the clients of the phase stopped first, since a backend reports its \
         counters when it exits or up to 10 s after it goes idle); fsync time from \
         `track_wal_io_timing`, switched on for the round's databases."
            .into(),
    ] {
        let _ = writeln!(md, "{line}");
    }
    md
}
