use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool};
use tokio::sync::Notify;

/// A write transaction on a service's database.
pub type Tx = sqlx::Transaction<'static, Any>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a service keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// One SQLite file per service under this directory.
    Sqlite { data_dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
}

/// A service's database, with a signal that wakes its outbox relay on commit.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
    outbox_written: Arc<Notify>,
}

impl Db {
    /// Opens (creating if needed) `service`'s database and applies the shared
    /// migrations and then the service's own.
    pub async fn open(
        config: &StorageConfig,
        service: &str,
        migrations: &Migrator,
    ) -> Result<Self, StorageError> {
        install_default_drivers();
        let (pool, engine) = match config {
            StorageConfig::Sqlite { data_dir } => {
                std::fs::create_dir_all(data_dir).map_err(|source| StorageError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
                let path = data_dir.join(format!("{service}.db"));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                // SQLite takes one writer at a time; a few connections let
                // reads run beside it (WAL), more would only queue.
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await?;
                // WAL is a property of the file: set once, kept on reopen.
                sqlx::query("PRAGMA journal_mode=WAL")
                    .fetch_all(&pool)
                    .await?;
                (pool, Engine::Sqlite)
            }
        };
        // Migrations every service shares (outbox, processed events, cursor),
        // kept in their own history table so each service's own number freely.
        let mut shared = sqlx::migrate!("./migrations/sqlite");
        shared.dangerous_set_table_name("_blog_shared_migrations");
        shared.run(&pool).await?;
        migrations.run(&pool).await?;
        Ok(Self {
            pool,
            engine,
            outbox_written: Arc::new(Notify::new()),
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock
    /// up front, so two writers queue instead of failing on upgrade.
    pub async fn begin(&self) -> Result<Tx, StorageError> {
        let tx = match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(tx)
    }

    /// Commits `tx` and, when it wrote to the outbox, wakes the relay.
    pub async fn commit(&self, tx: Tx, wrote_outbox: bool) -> Result<(), StorageError> {
        tx.commit().await?;
        if wrote_outbox {
            self.outbox_written.notify_one();
        }
        Ok(())
    }

    /// Resolves when a commit has written to the outbox since the last call.
    pub async fn outbox_written(&self) {
        self.outbox_written.notified().await;
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A storage failure seen by an HTTP client: retryable, never a 500.
impl From<StorageError> for blog_kit::ApiError {
    fn from(e: StorageError) -> Self {
        blog_kit::ApiError::Unavailable(e.to_string())
    }
}
