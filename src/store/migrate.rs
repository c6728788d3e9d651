//! A small migration runner: the SQL files under `migrations/<dialect>/` are compiled into the
//! binary and applied in order, each in its own transaction, once.

use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, SqliteConnection};

/// Applies what is missing to the database at `url` (`tether migrate`); returns how many
/// migrations ran.
pub async fn apply(url: &str) -> Result<usize, sqlx::Error> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let mut conn = PgConnection::connect(url).await?;
        let n = postgres(&mut conn).await?;
        conn.close().await?;
        return Ok(n);
    }
    let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let n = sqlite(&mut conn).await?;
    conn.close().await?;
    Ok(n)
}

/// (version, name, SQL) for the SQLite dialect, in order.
const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

/// (version, name, SQL) for the PostgreSQL dialect, in order.
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "outbox_claims",
        include_str!("../../migrations/postgres/0002_outbox_claims.sql"),
    ),
    (
        3,
        "dispatch",
        include_str!("../../migrations/postgres/0003_dispatch.sql"),
    ),
    (
        4,
        "trace_partitions",
        include_str!("../../migrations/postgres/0004_trace_partitions.sql"),
    ),
    (
        5,
        "byte_ordered_ids",
        include_str!("../../migrations/postgres/0005_byte_ordered_ids.sql"),
    ),
    (
        6,
        "outbox_report_seq",
        include_str!("../../migrations/postgres/0006_outbox_report_seq.sql"),
    ),
];

/// Any number of processes may start at once against one database: an advisory lock makes
/// one of them apply what is missing while the others wait, then find nothing to do.
const POSTGRES_LOCK: i64 = 0x7465_7468_6572; // "tether" in ASCII

/// Applies the PostgreSQL migrations that are not applied yet; returns how many ran.
pub async fn postgres(conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
    postgres_up_to(conn, i64::MAX).await
}

/// Applies the PostgreSQL migrations up to version `last` that are not applied yet (tests of
/// upgrades start a database at an older version this way); returns how many ran.
pub async fn postgres_up_to(conn: &mut PgConnection, last: i64) -> Result<usize, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(POSTGRES_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = postgres_locked(conn, last).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(POSTGRES_LOCK)
        .execute(&mut *conn)
        .await;
    let applied = result?;
    unlock?;
    if last >= TRACE_PARTITIONS {
        trace_partitions(&mut *conn).await?;
    }
    Ok(applied)
}

/// The migration that partitions `trace_events`.
const TRACE_PARTITIONS: i64 = 4;

/// Makes the `trace_events` partitions of this week and the next where missing (see
/// `migrations/postgres/0005_byte_ordered_ids.sql`); every process does this after migrating
/// and then hourly, so the next week's partition exists well before its first event.
pub async fn trace_partitions<'c, E>(conn: E) -> Result<i32, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let made: i32 = sqlx::query_scalar("SELECT tether_trace_partitions($1)")
        .bind(crate::domain::now_millis())
        .fetch_one(conn)
        .await?;
    if made > 0 {
        tracing::info!(partitions = made, "trace_events partitions made");
    }
    Ok(made)
}

async fn postgres_locked(conn: &mut PgConnection, last: i64) -> Result<usize, sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tether_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in POSTGRES.iter().filter(|m| m.0 <= last) {
        let mut tx = conn.begin().await?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM tether_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO tether_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(crate::domain::now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            migration.version = version,
            migration.name = name,
            "migration applied"
        );
        applied += 1;
    }
    Ok(applied)
}

/// Applies the SQLite migrations that are not applied yet; returns how many ran.
pub async fn sqlite(conn: &mut SqliteConnection) -> Result<usize, sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tether_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in SQLITE {
        let mut tx = conn.begin().await?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM tether_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO tether_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(crate::domain::now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            migration.version = version,
            migration.name = name,
            "migration applied"
        );
        applied += 1;
    }
    Ok(applied)
}
