//! The composition root: the only place that names concrete stores, queues and publishers.
//! `Application::build` wires everything and binds its listener (port 0 works), so tests run
//! the real application exactly as `main` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::jwt::{JwksSource, JwtProvider};
use crate::api::auth::sigv4::SigV4;
use crate::api::{self, ApiState, Authenticator, TransportLimits};
use crate::bus::EventBus;
use crate::config::{Config, QueueKind, Role};
use crate::domain::{AuthMode, Principal};
use crate::hub::Hub;
use crate::pipeline::command_api::CommandApi;
use crate::pipeline::{ExecutorConfig, Pipeline, Registry, RetryPolicy, Stats};
use crate::ports::{CommandQueue, Publisher, Store};
use crate::queue::{SqsCommandQueue, SqsPublisher, sqs};
use crate::schema::{self, AuthRules, Limits, SchemaDoc, Services};
use crate::store::{PgStore, SqliteStore};

pub struct Application {
    /// `None` for a worker, which serves no HTTP.
    listener: Option<TcpListener>,
    /// HTTPS and `wss://` when set.
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    /// Cancelled to shut down: the HTTP server drains, the executor stops claiming.
    shutdown: CancellationToken,
    /// The listener, sweeper and emitter loops.
    tasks: TaskTracker,
    /// Attempts in flight; shutdown waits for them up to the grace period.
    attempts: TaskTracker,
    grace: Duration,
    pipeline: Pipeline,
    bus: EventBus,
    /// The generated embedded-mode key, when no key was configured.
    generated_key: Option<String>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let shared = config.database_url.starts_with("postgres");
        if config.role != Role::All && !shared {
            anyhow::bail!(
                "separate API and worker processes need PostgreSQL (DATABASE_URL=postgres://…); \
                 on SQLite, one `tether serve` runs both"
            );
        }
        let sqs = config.queue == QueueKind::Sqs;
        if sqs && !shared {
            anyhow::bail!(
                "the SQS command queue (--queue sqs) needs PostgreSQL (DATABASE_URL=postgres://…)"
            );
        }
        if sqs && config.sqs_command_queue_url.is_none() {
            anyhow::bail!(
                "--queue sqs needs the command queue's URL (TETHER_SQS_COMMAND_QUEUE_URL)"
            );
        }
        let sdl = match &config.schema {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => schema::DEFAULT_SDL.to_owned(),
        };
        let doc = Arc::new(SchemaDoc::parse(&sdl)?);
        let registry = Arc::new(Registry::new(crate::commands::all()));
        doc.check_handlers(registry.command_types())?;

        let hub = Hub::new(
            doc.routes().clone(),
            config.subscription_buffer,
            config.max_message_bytes,
        );
        let wake = Arc::new(Notify::new());
        let store: Arc<dyn Store> = open_store(&config, hub.clone(), wake.clone()).await?;

        let (auth, generated_key) = authenticator(&config, store.as_ref()).await?;
        for provider in auth.providers() {
            // A wrong JWKS file or URL shows up at start, not at the first sign-in.
            if let Err(e) = provider.preload().await {
                tracing::warn!(issuer = provider.issuer(), error = ?e, "could not read the JWKS yet");
            }
        }
        let rules = Arc::new(AuthRules::new(&doc, auth.default_mode()));

        let commands = CommandApi::new(
            store.clone(),
            registry.clone(),
            wake.clone(),
            config.max_payload_bytes,
            config.fault_injection,
        );
        let direct = config.direct_commands.then(|| {
            Arc::new(schema::Direct::new(
                doc.clone(),
                rules.clone(),
                commands.clone(),
            ))
        });
        let schema = schema::build(Services {
            store: store.clone(),
            hub: hub.clone(),
            commands,
            doc: doc.clone(),
            limits: Limits {
                max_depth: config.max_depth,
                max_complexity: config.max_complexity,
                max_page: config.max_page,
            },
            rules: rules.clone(),
        })?;

        let bus = EventBus::new(4096);
        let (queue, publisher) = queues(&config, &bus).await;
        let pipeline = Pipeline::new(
            store.clone(),
            publisher,
            registry,
            ExecutorConfig {
                workers: config.workers,
                lease_ms: config.lease_ms,
                heartbeat_ms: config.heartbeat_ms,
                sweep_ms: config.sweep_ms,
                poll_ms: config.poll_ms,
                idle_poll_ms: config.idle_poll_ms,
                retry: RetryPolicy {
                    max_attempts: config.max_attempts.max(1),
                    base: Duration::from_millis(config.retry_base_ms),
                    factor: config.retry_factor.max(1),
                    ..RetryPolicy::default()
                },
                fault_injection: config.fault_injection,
                idempotency_retention_ms: config.idempotency_hours * 3_600_000,
                outbox_retention_ms: (config.outbox_retention_hours > 0)
                    .then_some(config.outbox_retention_hours * 3_600_000),
                max_payload_bytes: config.max_payload_bytes,
                redispatch_ms: config.sqs_redispatch_ms,
                default_owner: config.sqs_default_owner.clone(),
            },
            wake,
        );
        let pipeline = match &queue {
            Some(queue) => pipeline.with_queue(queue.clone()),
            None => pipeline,
        };
        let shutdown = CancellationToken::new();
        let (tasks, attempts) = (TaskTracker::new(), TaskTracker::new());
        if config.role.executes() {
            pipeline.spawn(&shutdown, &tasks, &attempts);
        }
        pipeline.spawn_dispatcher(&shutdown, &tasks);

        let router = api::router(ApiState {
            live: schema::LiveSchema::new(schema.clone(), doc, hub.clone(), rules),
            schema,
            documents: Arc::new(schema::Documents::new(config.document_cache)),
            direct,
            auth: Arc::new(auth),
            store: store.clone(),
            hub: hub.clone(),
            stats: pipeline.stats().clone(),
            limits: Arc::new(TransportLimits {
                max_body_bytes: config.max_body_bytes,
                max_batch: config.max_batch,
                max_subscriptions_per_connection: config.max_subscriptions_per_connection,
                connection_init_timeout_ms: config.connection_init_timeout_ms,
                ws_read_buffer: config.ws_read_buffer,
                keepalive_ms: config.ws_keepalive_ms,
                connection_lifetime_ms: config.ws_lifetime_ms,
            }),
            shutdown: shutdown.clone(),
        });
        let tls = match (&config.tls_cert, &config.tls_key, config.tls_self_signed) {
            (Some(cert), Some(key), _) => {
                Some(api::tls::server_config(api::tls::Certificate::Files {
                    cert,
                    key,
                })?)
            }
            (_, _, true) => Some(api::tls::server_config(api::tls::Certificate::SelfSigned)?),
            _ => None,
        };
        let listener = if config.role.serves_api() {
            Some(
                TcpListener::bind(config.addr)
                    .await
                    .with_context(|| format!("binding {}", config.addr))?,
            )
        } else {
            None
        };
        Ok(Self {
            listener,
            tls,
            router,
            shutdown,
            tasks,
            attempts,
            grace: Duration::from_millis(config.shutdown_grace_ms),
            pipeline,
            bus,
            generated_key,
        })
    }

    /// Where the API listens; `None` for a worker.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let listener = self.listener.as_ref()?;
        Some(
            listener
                .local_addr()
                .expect("a bound listener has an address"),
        )
    }

    /// `https` when the API serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Cancel it to shut the application down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn generated_key(&self) -> Option<&str> {
        self.generated_key.as_deref()
    }

    pub fn event_bus(&self) -> &EventBus {
        &self.bus
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.pipeline.stats()
    }

    /// Serves until the shutdown token is cancelled, then drains: HTTP first, then attempts in
    /// flight (up to the grace period; what is left is taken back by lease expiry later).
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        match (self.listener, self.tls) {
            (Some(listener), Some(tls)) => {
                axum::serve(api::tls::TlsListener::new(listener, tls)?, self.router)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await?;
            }
            (Some(listener), None) => {
                // Trace events go out back to back; without TCP_NODELAY the later frames wait
                // ~40 ms for the client's delayed ACK.
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await?;
            }
            (None, _) => shutdown.cancelled().await,
        }
        self.shutdown.cancel();
        self.attempts.close();
        if tokio::time::timeout(self.grace, self.attempts.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "attempts still running after the grace period; their leases will expire"
            );
        }
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        // Outbox rows this process held but did not publish go to the other processes now,
        // not when the hold runs out.
        if let Err(e) = self.pipeline.release_outbox().await {
            tracing::warn!(error = %e, "releasing the outbox rows this process held");
        }
        tracing::info!("tether stopped");
        Ok(())
    }
}

async fn open_store(
    config: &Config,
    hub: Arc<Hub>,
    wake: Arc<Notify>,
) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url.as_str();
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(
            PgStore::open(
                url,
                hub,
                wake,
                config.accept_queue,
                config.db_pool_size,
                config.queue == QueueKind::Sqs,
            )
            .await?,
        ));
    }
    if !url.starts_with("sqlite:") {
        anyhow::bail!(
            "DATABASE_URL must start with sqlite:// or postgres:// (got an unsupported scheme)"
        );
    }
    Ok(Arc::new(
        SqliteStore::open(url, hub, config.accept_queue).await?,
    ))
}

/// The command queue (SQS mode) and where side-effect events go: the SQS event queue when one
/// is configured, else the in-process bus.
async fn queues(
    config: &Config,
    bus: &EventBus,
) -> (Option<Arc<dyn CommandQueue>>, Arc<dyn Publisher>) {
    let sqs = config.queue == QueueKind::Sqs;
    if !sqs && config.sqs_event_queue_url.is_none() {
        return (None, Arc::new(bus.clone()));
    }
    let client = sqs::client(config.aws_region.clone(), config.aws_endpoint_url.clone()).await;
    let queue: Option<Arc<dyn CommandQueue>> = match (&config.sqs_command_queue_url, sqs) {
        (Some(url), true) => {
            let queue = Arc::new(SqsCommandQueue::new(
                client.clone(),
                url.clone(),
                config.sqs_wait_seconds,
            ));
            // Accepts do not need SQS (the dispatch outbox waits), so this only warns, and
            // does not hold up the start.
            let probe = queue.clone();
            tokio::spawn(async move {
                if let Err(e) = probe.check().await {
                    tracing::warn!(error = %e, "the SQS command queue does not answer yet");
                }
            });
            Some(queue)
        }
        _ => None,
    };
    let publisher: Arc<dyn Publisher> = match &config.sqs_event_queue_url {
        Some(url) => Arc::new(SqsPublisher::new(client, url.clone())),
        None => Arc::new(bus.clone()),
    };
    (queue, publisher)
}

/// The authorization modes from the configuration. In embedded mode with `API_KEY` enabled
/// and no key configured, a key is generated (kept in the database, printed at start).
async fn authenticator(
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<(Authenticator, Option<String>)> {
    if config.open_access {
        return Ok((Authenticator::open(), None));
    }
    let mut modes = Vec::new();
    let names = std::iter::once(config.auth_default.as_str())
        .chain(config.auth_additional.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    for name in names {
        let mode = AuthMode::parse(name).with_context(|| {
            format!(
                "unknown authorization mode `{name}` (API_KEY, AWS_IAM, OPENID_CONNECT, \
                 AMAZON_COGNITO_USER_POOLS)"
            )
        })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    anyhow::ensure!(!modes.is_empty(), "no authorization mode is enabled");

    let mut keys = Authenticator::parse_keys(config.api_keys.expose(), false, "key-");
    keys.extend(Authenticator::parse_keys(
        config.admin_api_keys.expose(),
        true,
        "admin-",
    ));
    let mut generated_key = None;
    if keys.is_empty() && modes.contains(&AuthMode::ApiKey) {
        let key = store.embedded_api_key(&api::generate_key).await?;
        keys.push((
            key.clone(),
            Principal {
                id: "embedded".into(),
                admin: true,
            },
        ));
        generated_key = Some(key);
    }
    let iam = match config.iam_keys.expose().trim() {
        "" => None,
        spec => Some(SigV4::parse(spec, &config.iam_region).map_err(anyhow::Error::msg)?),
    };
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let admin_groups = list(&config.admin_groups);
    let mut providers = Vec::new();
    if let Some(issuer) = &config.oidc_issuer {
        providers.push(JwtProvider::new(
            AuthMode::Oidc,
            issuer,
            list(&config.oidc_client_id),
            admin_groups.clone(),
            JwksSource::parse(config.oidc_jwks.as_deref(), issuer),
        ));
    }
    let cognito_issuer = config.cognito_issuer.clone().or_else(|| {
        config.cognito_user_pool_id.as_ref().map(|pool| {
            format!(
                "https://cognito-idp.{}.amazonaws.com/{pool}",
                config.cognito_region
            )
        })
    });
    if let Some(issuer) = cognito_issuer {
        let jwks = config
            .cognito_jwks
            .clone()
            .unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
        providers.push(JwtProvider::new(
            AuthMode::CognitoUserPools,
            &issuer,
            list(&config.cognito_client_id),
            admin_groups,
            JwksSource::parse(Some(&jwks), &issuer),
        ));
    }
    let auth = Authenticator::new(modes, keys, iam, providers).map_err(anyhow::Error::msg)?;
    Ok((auth, generated_key))
}
