//! Store implementations. `sqlite` is the embedded default; the contract tests in
//! `tests/store_contract.rs` run against every implementation.

pub mod migrate;
pub mod sqlite;

pub use sqlite::SqliteStore;
