//! The executor: everything that happens to a command after the CommandApi stored it.
//!
//! * [`listener`]: TransactionListener — claims runnable commands, bounded by free slots; or
//!   [`queue_listener`], the same on a message queue (SQS), fed by the [`dispatcher`].
//! * [`manager`]: TransactionManager — runs an attempt under a lease with a heartbeat.
//! * [`builder`]: CommandBuilder — command type → handler (the registry).
//! * the command itself ([`crate::ports::Invokable`]) runs inside the attempt's transaction;
//! * [`collector`]: EventCollector — announced side effects → outbox rows with stable IDs.
//! * [`emitter`]: EventEmitter — relays committed outbox rows to the publisher.
//! * [`error_handler`]: ErrorHandler — retry with backoff, fail, or dead-letter; with
//!   [`retry`] (the policy) and [`sweeper`] (expired leases count as attempts).
//! * [`faults`]: the fault injector that tests and demos switch on.

pub mod builder;
pub mod collector;
pub mod command_api;
pub mod dispatcher;
pub mod emitter;
pub mod error_handler;
pub mod faults;
pub mod listener;
pub mod manager;
pub mod queue_listener;
pub mod retry;
pub mod sweeper;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::Registry;
use error_handler::ErrorHandler;
pub use retry::RetryPolicy;

use crate::ports::{CommandQueue, Next, Publisher, Store};

/// Executor settings (see `Config` for their defaults and flags).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Attempts in flight at once.
    pub workers: usize,
    pub lease_ms: i64,
    pub heartbeat_ms: i64,
    pub sweep_ms: i64,
    /// Poll interval while wake-ups may be missed.
    pub poll_ms: i64,
    /// Poll interval while wake-ups arrive (a safety net).
    pub idle_poll_ms: i64,
    pub retry: RetryPolicy,
    pub fault_injection: bool,
    pub idempotency_retention_ms: i64,
    /// How long sent outbox rows are kept (`None`: for ever).
    pub outbox_retention_ms: Option<i64>,
    /// Largest command payload (foreign producers' messages are checked like mutations).
    pub max_payload_bytes: usize,
    /// SQS mode: a command due this long without running gets a new message.
    pub redispatch_ms: i64,
    /// SQS mode: the owner of a foreign producer's command that names none.
    pub default_owner: String,
}

/// Counters for `/health` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub committed: AtomicU64,
    pub fenced: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub leases_expired: AtomicU64,
    pub published: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn count_failure(&self, next: &Next) {
        Self::bump(match next {
            Next::Retry { .. } => &self.retried,
            Next::Fail => &self.failed,
            Next::DeadLetter => &self.dead_lettered,
        });
    }

    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "committed": get(&self.committed),
            "fenced": get(&self.fenced),
            "retried": get(&self.retried),
            "failed": get(&self.failed),
            "deadLettered": get(&self.dead_lettered),
            "leasesExpired": get(&self.leases_expired),
            "published": get(&self.published),
        })
    }
}

/// The executor's shared parts; cheap to clone into each task.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    builder: Arc<Registry>,
    /// The command queue when it is not the `commands` table (SQS mode).
    queue: Option<Arc<dyn CommandQueue>>,
    error_handler: ErrorHandler,
    config: Arc<ExecutorConfig>,
    /// CommandApi → TransactionListener: new work was accepted (or a slot freed up).
    wake: Arc<Notify>,
    /// TransactionManager → EventEmitter: new outbox rows are committed.
    emitter_wake: Arc<Notify>,
    stats: Arc<Stats>,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        publisher: Arc<dyn Publisher>,
        registry: Arc<Registry>,
        config: ExecutorConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            publisher,
            builder: registry,
            queue: None,
            error_handler: ErrorHandler::new(config.retry.clone()),
            config: Arc::new(config),
            wake,
            emitter_wake: Arc::new(Notify::new()),
            stats: Arc::new(Stats::default()),
        }
    }

    /// Takes commands from `queue` instead of the `commands` table.
    pub fn with_queue(mut self, queue: Arc<dyn CommandQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// How long to sleep when there is nothing to do.
    fn idle_wait(&self) -> std::time::Duration {
        let ms = if self.store.wakeups_live() {
            self.config.idle_poll_ms.max(self.config.poll_ms)
        } else {
            self.config.poll_ms
        };
        std::time::Duration::from_millis(ms.max(1) as u64)
    }

    /// How long to wait before trying the database again after an error.
    fn short_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.poll_ms.max(1) as u64)
    }

    /// Starts the listener, the sweeper and the emitter on `tasks`; attempts run on
    /// `attempts`, so shutdown can wait for them separately.
    pub fn spawn(&self, cancel: &CancellationToken, tasks: &TaskTracker, attempts: &TaskTracker) {
        match &self.queue {
            Some(queue) => tasks.spawn(self.clone().listen_queue(
                queue.clone(),
                cancel.clone(),
                attempts.clone(),
            )),
            None => tasks.spawn(self.clone().listen(cancel.clone(), attempts.clone())),
        };
        tasks.spawn(self.clone().sweep(cancel.clone()));
        tasks.spawn(self.clone().emit(cancel.clone()));
    }

    /// Deterministic draining for tests: runs every due attempt, then relays the outbox.
    /// Returns how many attempts ran.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let mut ran = 0;
        loop {
            let claims = self.store.claim(64, self.config.lease_ms).await?;
            if claims.is_empty() {
                break;
            }
            ran += claims.len();
            for claim in claims {
                self.run_attempt(claim, CancellationToken::new()).await;
            }
        }
        while self.emit_once().await? > 0 {}
        Ok(ran)
    }
}
