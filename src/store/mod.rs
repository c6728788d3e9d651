//! Store implementations: `sqlite` is the embedded default, `postgres` the shared engine for
//! many processes. The contract tests in `tests/store.rs` run against both.

pub mod migrate;
pub mod postgres;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
