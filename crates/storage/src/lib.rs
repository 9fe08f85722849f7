//! Per-service storage. Each service owns one database (an SQLite file under
//! the data dir by default) and reaches it only through this crate's [`Db`],
//! so no engine detail leaks into a service's handlers.

mod db;
pub mod inbox;
pub mod outbox;
mod writer;

pub use db::{
    DEFAULT_STARTUP_TIMEOUT, Db, Engine, Migrations, Statement, StorageConfig, StorageError,
    Writes, database_of, placeholders, with_database,
};
pub use futures_util::future::BoxFuture;
pub use sqlx::migrate::Migrator;
pub use sqlx::{Row, query, query_as, query_scalar};
pub use writer::{Tx, Written};

pub use sqlx::any::AnyRow;
