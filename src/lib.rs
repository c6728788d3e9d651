//! tether: asynchronous commands behind an AWS AppSync-compatible GraphQL API.
//!
//! # The life of a command, module by module
//!
//! 1. [`schema`] loads `schema.graphql` (AppSync dialect), prepends the AppSync prelude and
//!    builds the executable schema. Every `Mutation` field returning `CommandAccepted!` is a
//!    command. AWS scalars are validated on input here.
//! 2. [`api`] receives the mutation over HTTP (`POST /graphql`), authenticates the caller
//!    with one of AppSync's modes ([`api::auth`]: API key, OIDC or Cognito JWT, SigV4) and
//!    executes it; the schema's `@aws_*` directives decide which fields that mode reaches
//!    ([`schema::auth`]). A command mutation whose text already ran once without errors is
//!    answered without the general executor ([`schema::direct`]: the same checks, the same
//!    answer, or the general way whenever it cannot be sure).
//! 3. The CommandApi ([`pipeline::command_api`]) validates the input with the command's handler
//!    (fail fast), and the [`store`] commits the command row and its `ACCEPTED` trace event in
//!    one transaction — concurrent accepts share one commit. The client gets the trace ID.
//!    With `--queue sqs` that transaction also writes a dispatch row, and the dispatcher
//!    ([`pipeline::dispatcher`]) sends it to the SQS command queue ([`queue::sqs`]).
//! 4. The TransactionListener ([`pipeline::listener`]) wakes, claims the command with a lease
//!    and hands it to the TransactionManager ([`pipeline::manager`]), which keeps the lease
//!    alive and asks the CommandBuilder ([`pipeline::builder`]) for the handler. On SQS,
//!    [`pipeline::queue_listener`] receives a message instead and lets the command row decide
//!    what it means (run, skip, wait, or adopt a foreign producer's command).
//! 5. The command ([`ports::Invokable`], example handlers in [`commands`]) runs in one
//!    transaction that also holds the lease check (fencing), the dedup mark, the outbox rows
//!    from the EventCollector ([`pipeline::collector`]) and the trace events.
//! 6. The EventEmitter ([`pipeline::emitter`]) relays committed outbox rows to the publisher
//!    (the in-process [`bus`], or an SQS queue) at least once, with stable event IDs.
//! 7. A failure goes to the ErrorHandler ([`pipeline::error_handler`]): business errors end
//!    in `FAILED`, technical ones retry with backoff and jitter ([`pipeline::retry`]); after
//!    4 attempts the command becomes a dead letter. The sweeper ([`pipeline::sweeper`])
//!    counts crashed or stalled attempts when their lease expires.
//! 8. Every trace event, once committed, reaches the [`hub`], which fans it out to
//!    `onTraceEvent` subscribers with AppSync's `@aws_subscribe` semantics. On PostgreSQL the
//!    API and the workers may be separate processes: commits `NOTIFY` their events' keys and
//!    each API replica reads the rows its subscribers follow (`store::postgres`, its feed).
//!    Subscribers are WebSocket clients of [`api`] (`graphql-transport-ws`, the legacy
//!    protocol, or AppSync's real-time protocol at `/graphql/realtime`); async-graphql checks
//!    each subscription once and [`schema::live`] then shapes every hub event for it.
//!
//! [`domain`] holds the pure types, [`ports`] the seams (Store, CommandQueue, Publisher,
//! Invokable), and
//! [`app`] wires it all together; [`config`] is the one typed configuration.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bus;
pub mod commands;
pub mod config;
pub mod domain;
pub mod hub;
pub mod pipeline;
pub mod ports;
pub mod queue;
pub mod schema;
pub mod store;

pub use app::Application;
pub use config::Config;
