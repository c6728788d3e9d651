use clap::Parser;
use tether::config::{Cli, Command, Role};
use tether::{Application, Config};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: thousands of idle WebSocket connections hold many small
/// allocations, and glibc's per-thread arenas fragment them (RSS per subscription ~17 KiB with
/// glibc, ~15 KiB with mimalloc; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate(config)) => migrate(config).await,
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Worker(mut config)) => {
            config.role = Role::Worker;
            serve(config).await
        }
        None => serve(cli.serve).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let Some(addr) = app.local_addr() else {
        println!("tether worker ready");
        return run_until_signal(app).await;
    };
    tracing::info!(%addr, "tether listening");
    let scheme = app.scheme();
    if let Some(key) = app.generated_key() {
        println!(
            "\ntether is ready on {scheme}://{addr}/graphql (GraphiQL: open it in a browser)\n\
             API key (generated for this database): {key}\n\n\
             Try:\n  curl -sk {scheme}://{addr}/graphql -H 'content-type: application/json' -H 'x-api-key: {key}' \\\n    \
             -d '{{\"query\":\"mutation {{ createOrder(input: {{customerId: \\\"c-1\\\", items: [{{sku: \\\"tea\\\", quantity: 2, unitPriceCents: 450}}]}}) {{ traceId status acceptedAt }} }}\"}}'\n"
        );
    } else {
        println!("tether is ready on {scheme}://{addr}/graphql");
    }
    run_until_signal(app).await
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully.
async fn run_until_signal(app: Application) -> anyhow::Result<()> {
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.run().await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let applied = tether::store::migrate::apply(&config.database_url).await?;
    println!("{applied} migration(s) applied; the database is up to date");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
