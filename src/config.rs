//! One typed configuration, from flags and environment variables (flags win). Every limit of
//! DESIGN §8 is here with its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "Asynchronous commands behind an AppSync-compatible GraphQL API"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `tether` alone is `tether serve`.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API and run the executor (the default). `--role api` serves the API
    /// only, for replicas in front of separate workers.
    Serve(Config),
    /// Run the executor only: claim commands from the shared PostgreSQL database, run them,
    /// relay their outbox. No HTTP listener.
    Worker(Config),
    /// Apply database migrations and exit.
    Migrate(Config),
}

/// A secret from the configuration: never printed by `Debug`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The GraphQL API and the executor.
    All,
    /// The GraphQL API only; `tether worker` processes run the commands.
    Api,
    /// The executor only (`tether worker`).
    #[value(skip)]
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    pub fn executes(self) -> bool {
        self != Role::Api
    }
}

/// Where accepted commands wait for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueKind {
    /// The `commands` table (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
    Db,
    /// Amazon SQS, fed from a dispatch outbox.
    Sqs,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// What this process runs.
    #[arg(long, env = "TETHER_ROLE", value_enum, default_value = "all")]
    pub role: Role,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TETHER_ADDR", default_value = "127.0.0.1:4000")]
    pub addr: SocketAddr,

    /// Serve HTTPS and `wss://` with this PEM certificate chain (with `--tls-key`).
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate generated at start for localhost (development: Amplify
    /// JS v6 always dials `wss://`). Clients must be told to accept it.
    #[arg(long, env = "TETHER_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,

    /// Where tether keeps its state. The default is a SQLite file in the working directory.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://tether.db")]
    pub database_url: String,

    /// Connections per process to PostgreSQL (unused for SQLite). Besides these, every process
    /// holds one that sends its notices, and one that accepts commands another for its accept
    /// committer.
    #[arg(long, env = "TETHER_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Schema file to serve instead of the built-in copy of `schema.graphql`.
    #[arg(long, env = "TETHER_SCHEMA")]
    pub schema: Option<PathBuf>,

    /// API keys, comma-separated, each `principal:secret` (or just `secret`). Callers send
    /// one in `x-api-key`; the principal owns the traces it submits.
    #[arg(
        long,
        env = "TETHER_API_KEYS",
        default_value = "",
        hide_default_value = true
    )]
    pub api_keys: Secret,

    /// Admin API keys (same format): may read every trace and publish trace events.
    #[arg(
        long,
        env = "TETHER_ADMIN_API_KEYS",
        default_value = "",
        hide_default_value = true
    )]
    pub admin_api_keys: Secret,

    /// Serve without authentication (every caller is the principal `anonymous`). Only when
    /// asked for explicitly; without keys, tether generates one instead.
    #[arg(long, env = "TETHER_OPEN_ACCESS")]
    pub open_access: bool,

    /// The default authorization mode: `API_KEY`, `AWS_IAM`, `OPENID_CONNECT` or
    /// `AMAZON_COGNITO_USER_POOLS`. Fields without `@aws_*` directives admit this mode only.
    #[arg(long, env = "TETHER_AUTH_DEFAULT", default_value = "API_KEY")]
    pub auth_default: String,
    /// Additional authorization modes, comma-separated; the schema's `@aws_*` directives
    /// say which fields they reach.
    #[arg(long, env = "TETHER_AUTH_ADDITIONAL", default_value = "")]
    pub auth_additional: String,

    /// OPENID_CONNECT: the issuer (`iss`) tokens must carry.
    #[arg(long, env = "TETHER_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// OPENID_CONNECT: accepted client ids (`aud` or `client_id`), comma-separated; empty
    /// accepts any.
    #[arg(long, env = "TETHER_OIDC_CLIENT_ID", default_value = "")]
    pub oidc_client_id: String,
    /// OPENID_CONNECT: the JWKS, a URL or a file; default: the issuer's OpenID discovery.
    #[arg(long, env = "TETHER_OIDC_JWKS")]
    pub oidc_jwks: Option<String>,

    /// AMAZON_COGNITO_USER_POOLS: the user pool (`us-east-1_AbCdEf`); with the region it
    /// gives the issuer `https://cognito-idp.<region>.amazonaws.com/<pool>`.
    #[arg(long, env = "TETHER_COGNITO_USER_POOL_ID")]
    pub cognito_user_pool_id: Option<String>,
    #[arg(long, env = "TETHER_COGNITO_REGION", default_value = "us-east-1")]
    pub cognito_region: String,
    /// AMAZON_COGNITO_USER_POOLS: the issuer itself, instead of pool and region.
    #[arg(long, env = "TETHER_COGNITO_ISSUER")]
    pub cognito_issuer: Option<String>,
    /// AMAZON_COGNITO_USER_POOLS: accepted app client ids, comma-separated; empty accepts any.
    #[arg(long, env = "TETHER_COGNITO_CLIENT_ID", default_value = "")]
    pub cognito_client_id: String,
    /// AMAZON_COGNITO_USER_POOLS: the JWKS, a URL or a file; default
    /// `<issuer>/.well-known/jwks.json`.
    #[arg(long, env = "TETHER_COGNITO_JWKS")]
    pub cognito_jwks: Option<String>,
    /// Token groups (`cognito:groups`, or `groups`) whose members are admins.
    #[arg(long, env = "TETHER_ADMIN_GROUPS", default_value = "")]
    pub admin_groups: String,

    /// AWS_IAM: keys that may sign requests, comma-separated, each
    /// `principal:ACCESS_KEY_ID:SECRET`. IAM callers are admins (workers publishing events).
    #[arg(
        long,
        env = "TETHER_IAM_KEYS",
        default_value = "",
        hide_default_value = true
    )]
    pub iam_keys: Secret,
    /// AWS_IAM: the region signatures must be scoped to.
    #[arg(long, env = "TETHER_IAM_REGION", default_value = "us-east-1")]
    pub iam_region: String,

    /// The command queue: `db`, the `commands` table itself, or `sqs`, Amazon SQS between the
    /// API and the workers (needs PostgreSQL; the AWS SDK's usual settings apply: region,
    /// credential chain, `AWS_ENDPOINT_URL`).
    #[arg(long, env = "TETHER_QUEUE", value_enum, default_value = "db")]
    pub queue: QueueKind,
    /// The SQS command queue (with `--queue sqs`).
    #[arg(long, env = "TETHER_SQS_COMMAND_QUEUE_URL")]
    pub sqs_command_queue_url: Option<String>,
    /// The SQS queue side-effect events are published to. Without it they stay in-process.
    #[arg(long, env = "TETHER_SQS_EVENT_QUEUE_URL")]
    pub sqs_event_queue_url: Option<String>,
    /// Long-poll wait of one receive on the command queue (SQS allows 0 to 20 s).
    #[arg(long, env = "TETHER_SQS_WAIT_SECONDS", default_value_t = 20)]
    pub sqs_wait_seconds: i32,
    /// A command left due this long gets a new message: the safety net for a message the
    /// queue lost or moved to its own dead-letter queue.
    #[arg(long, env = "TETHER_SQS_REDISPATCH_MS", default_value_t = 600_000)]
    pub sqs_redispatch_ms: i64,
    /// Owner of commands that foreign producers put on the queue without an `owner`.
    #[arg(long, env = "TETHER_SQS_DEFAULT_OWNER", default_value = "sqs")]
    pub sqs_default_owner: String,
    /// An AWS endpoint to use instead of AWS's (an emulator, a VPC endpoint).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// The AWS region; without it the SDK's chain decides (`AWS_REGION`, the profile).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Honour the `faults` input of commands (tests and demos).
    #[arg(long, env = "TETHER_FAULT_INJECTION")]
    pub fault_injection: bool,

    /// Attempts in flight at once (on PostgreSQL, those finishing together share a commit).
    #[arg(long, env = "TETHER_WORKERS", default_value_t = 256)]
    pub workers: usize,
    /// Lease of a running attempt.
    #[arg(long, env = "TETHER_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: i64,
    /// Lease renewal interval while an attempt runs.
    #[arg(long, env = "TETHER_HEARTBEAT_MS", default_value_t = 10_000)]
    pub heartbeat_ms: i64,
    /// How often expired leases are looked for.
    #[arg(long, env = "TETHER_SWEEP_MS", default_value_t = 5_000)]
    pub sweep_ms: i64,
    /// Poll interval of the listener and the emitter while wake-ups may be missed (the
    /// PostgreSQL `LISTEN` connection is down).
    #[arg(long, env = "TETHER_POLL_MS", default_value_t = 1_000)]
    pub poll_ms: i64,
    /// Poll interval while wake-ups arrive: a safety net only, so an idle tether stays quiet.
    #[arg(long, env = "TETHER_IDLE_POLL_MS", default_value_t = 30_000)]
    pub idle_poll_ms: i64,
    /// Attempts per command, the first included (3 retries = 4).
    #[arg(long, env = "TETHER_MAX_ATTEMPTS", default_value_t = 4)]
    pub max_attempts: i32,
    /// First retry wait; later waits grow by `retry_factor`.
    #[arg(long, env = "TETHER_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,
    #[arg(long, env = "TETHER_RETRY_FACTOR", default_value_t = 4)]
    pub retry_factor: u32,
    /// How long an idempotency key keeps returning the same trace.
    #[arg(long, env = "TETHER_IDEMPOTENCY_HOURS", default_value_t = 24)]
    pub idempotency_hours: i64,
    /// How long sent outbox rows are kept (0: for ever); unsent rows are never deleted.
    #[arg(long, env = "TETHER_OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    pub outbox_retention_hours: i64,

    /// Largest HTTP request body.
    #[arg(long, env = "TETHER_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest command payload (its input, as JSON).
    #[arg(long, env = "TETHER_MAX_PAYLOAD_BYTES", default_value_t = 256 << 10)]
    pub max_payload_bytes: usize,
    #[arg(long, env = "TETHER_MAX_QUERY_DEPTH", default_value_t = 15)]
    pub max_depth: usize,
    #[arg(long, env = "TETHER_MAX_QUERY_COMPLEXITY", default_value_t = 1000)]
    pub max_complexity: usize,
    /// Operations in one batched HTTP request.
    #[arg(long, env = "TETHER_MAX_BATCH", default_value_t = 10)]
    pub max_batch: usize,
    /// Parsed operation texts kept for the next request with the same text (0: none).
    #[arg(long, env = "TETHER_DOCUMENT_CACHE", default_value_t = 256)]
    pub document_cache: usize,
    /// Answer command mutations whose kept text already ran once without errors directly,
    /// without the general GraphQL executor (same checks, same answers; needs the document
    /// cache). `false` sends every request through the executor.
    #[arg(long, env = "TETHER_DIRECT_COMMANDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub direct_commands: bool,
    /// Largest page a list query returns.
    #[arg(long, env = "TETHER_MAX_PAGE", default_value_t = 1000)]
    pub max_page: i64,
    /// Accepts waiting for a group commit before new ones are throttled.
    #[arg(long, env = "TETHER_ACCEPT_QUEUE", default_value_t = 10_000)]
    pub accept_queue: usize,

    /// Messages a subscriber may have waiting before it is dropped as too slow.
    #[arg(long, env = "TETHER_SUBSCRIPTION_BUFFER", default_value_t = 64)]
    pub subscription_buffer: usize,
    /// Largest subscription message; larger ones are not delivered (as on AppSync).
    #[arg(long, env = "TETHER_MAX_MESSAGE_BYTES", default_value_t = 240_000)]
    pub max_message_bytes: usize,
    #[arg(
        long,
        env = "TETHER_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 200
    )]
    pub max_subscriptions_per_connection: usize,
    /// Time a WebSocket client has to send `connection_init`.
    #[arg(
        long,
        env = "TETHER_CONNECTION_INIT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub connection_init_timeout_ms: u64,
    /// Interval of `ka` keep-alive frames on the legacy and AppSync WebSocket protocols (AppSync
    /// sends one about every 60 s); 0 turns them off.
    #[arg(long, env = "TETHER_WS_KEEPALIVE_MS", default_value_t = 60_000)]
    pub ws_keepalive_ms: u64,
    /// A WebSocket connection is closed after this long; clients reconnect (AppSync: 24 h).
    #[arg(long, env = "TETHER_WS_LIFETIME_MS", default_value_t = 86_400_000)]
    pub ws_lifetime_ms: u64,
    /// Read buffer per WebSocket connection (the stock one is 128 KiB).
    #[arg(long, env = "TETHER_WS_READ_BUFFER", default_value_t = 256)]
    pub ws_read_buffer: usize,

    /// How long shutdown waits for attempts in flight before leaving them to lease expiry.
    #[arg(long, env = "TETHER_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from_env_only()
    }
}

impl Config {
    /// The configuration from defaults and environment only (no flags).
    pub fn parse_from_env_only() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        Only::parse_from(["tether"]).config
    }

    /// A configuration for tests: a free loopback port and the given database.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let mut c = Self::parse_from_env_only();
        c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.database_url = database_url.into();
        c
    }
}
