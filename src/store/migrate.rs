//! A small migration runner: the SQL files under `migrations/<dialect>/` are compiled into the
//! binary and applied in order, each in its own transaction, once.

use sqlx::{Connection, SqliteConnection};

/// (version, name, SQL) for the SQLite dialect, in order.
const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

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
