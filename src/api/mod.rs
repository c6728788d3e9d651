//! HTTP and WebSocket transport.
//!
//! * `POST /graphql`: queries and mutations (single or batched); credentials as `auth` reads
//!   them (API key, JWT, SigV4).
//! * `GET /graphql` with a WebSocket upgrade: subscriptions over `graphql-transport-ws` and the
//!   legacy `subscriptions-transport-ws` (`graphql-ws`); without an upgrade: GraphiQL.
//! * `GET /graphql/realtime` with a WebSocket upgrade: AppSync's real-time protocol.
//! * `GET /health`: liveness plus executor and hub counters.

pub mod auth;
mod http;
pub mod tls;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use auth::{API_KEY_HEADER, Authenticator, generate_key};

use crate::hub::Hub;
use crate::pipeline::Stats;
use crate::ports::Store;

/// Transport limits (the GraphQL ones live in the schema).
#[derive(Debug, Clone)]
pub struct TransportLimits {
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub max_subscriptions_per_connection: usize,
    pub connection_init_timeout_ms: u64,
    pub ws_read_buffer: usize,
    /// `ka` interval (legacy and AppSync protocols); 0 turns it off.
    pub keepalive_ms: u64,
    /// A WebSocket connection is closed after this long (AppSync: 24 h).
    pub connection_lifetime_ms: u64,
}

#[derive(Clone)]
pub struct ApiState {
    /// Queries and mutations (HTTP).
    pub schema: async_graphql::dynamic::Schema,
    /// Operation texts already parsed (HTTP).
    pub documents: Arc<crate::schema::Documents>,
    /// Answers kept command mutation texts without the general executor (`schema::direct`);
    /// `None` when `--direct-commands false`.
    pub direct: Option<Arc<crate::schema::Direct>>,
    /// Subscriptions (WebSocket).
    pub live: crate::schema::LiveSchema,
    pub auth: Arc<Authenticator>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub limits: Arc<TransportLimits>,
    /// Cancelled at shutdown: open WebSockets close.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/graphql", get(http::graphql_get).post(http::graphql_post))
        .route("/graphql/realtime", get(http::realtime_get))
        .route("/", get(http::graphiql))
        .route("/health", get(http::health))
        .with_state(state)
}
