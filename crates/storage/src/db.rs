use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe};
use tokio::sync::Notify;

use crate::writer::{WriteWork, Writer, Written};

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
    #[error(
        "invalid PostgreSQL URL {0:?}: expected postgres://[user[:password]@]host[:port][/database]"
    )]
    PostgresUrl(String),
    #[error("invalid database name {0:?}: use lowercase letters, digits and _")]
    DatabaseName(String),
    /// A write that did not commit (the disk is full, the server is gone):
    /// nothing of it is stored, and it may be retried.
    #[error("write failed: {0}")]
    Write(String),
    #[error("the database is closed")]
    Closed,
}

/// One statement with its values bound, ready for [`Db::execute`].
pub type Statement = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>;

/// How a service's writes may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// One transaction at a time, in queue order: what a log that numbers
    /// its entries needs.
    Serial,
    /// Several transactions at once where the engine allows it (PostgreSQL).
    Concurrent,
}

/// Where a service keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// One SQLite file per service under this directory.
    Sqlite { data_dir: PathBuf },
    /// One PostgreSQL database per service on this server: `database` if
    /// given, else `<prefix><service>` (`blog_posts`, ...), created if missing.
    Postgres {
        server: String,
        database: Option<String>,
        prefix: String,
        /// How long to keep trying while the server is not up yet (a first
        /// deploy starts the services and their databases together).
        connect_within: Duration,
    },
}

/// How long a service waits for its PostgreSQL at start, unless configured.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a failure to connect may pass by itself: the server is not up
/// yet, is starting, or is full. A refused login or a bad URL never passes.
fn may_pass(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(e) => matches!(
            e.code().as_deref(),
            // cannot_connect_now (starting or shutting down), too many
            // connections, connection failures.
            Some("57P03" | "53300" | "08000" | "08001" | "08004" | "08006")
        ),
        _ => false,
    }
}

/// A service's migrations, one set per engine.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A service's database: reads from a pool, writes through group commit,
/// and a signal that wakes its outbox relay on commit.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
    /// The service whose database this is (a label for its metrics and logs).
    service: &'static str,
    /// The database's own URL, for PostgreSQL (listeners connect to it).
    url: String,
    outbox_written: Arc<Notify>,
    writer: Writer,
    /// Keeps the pool's gauges read at each scrape while the database is open.
    _pool_metrics: Arc<blog_kit::metrics::Registration>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("engine", &self.engine).finish()
    }
}

/// A PostgreSQL server URL, parsed: a host is required.
fn postgres_url(url: &str) -> Result<url::Url, StorageError> {
    let bad = || StorageError::PostgresUrl(url.to_owned());
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    let postgres = matches!(parsed.scheme(), "postgres" | "postgresql");
    if !postgres || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(parsed)
}

/// `$1, $2, …, $n`: the placeholders of an `IN (…)` list of `n` values
/// (both engines take this form through `sqlx::Any`).
pub fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `url` with its database replaced by `database` (credentials and query
/// string kept).
pub fn with_database(url: &str, database: &str) -> Result<String, StorageError> {
    let mut parsed = postgres_url(url)?;
    parsed.set_path(database);
    Ok(parsed.to_string())
}

/// The database named in a PostgreSQL URL, if any.
pub fn database_of(url: &str) -> Option<String> {
    let parsed = postgres_url(url).ok()?;
    let path = parsed.path().trim_start_matches('/');
    (!path.is_empty()).then(|| path.to_owned())
}

fn valid_database_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl StorageConfig {
    /// The database a service gets on PostgreSQL.
    pub fn postgres_database(prefix: &str, service: &str) -> String {
        format!("{prefix}{}", service.replace('-', "_"))
    }
}

/// Connects to `database` on `server`, waiting up to `within` for a server
/// that is not up yet.
async fn connect_postgres(
    server: &str,
    database: &str,
    within: Duration,
) -> Result<(AnyPool, String), StorageError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut backoff = blog_kit::retry::DEFAULT;
    loop {
        // Each attempt gives up in time for the deadline.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = left.clamp(Duration::from_millis(200), Duration::from_secs(10));
        match try_connect_postgres(server, database, attempt).await {
            Err(StorageError::Sqlx(e))
                if may_pass(&e) && tokio::time::Instant::now() + backoff.peek() < deadline =>
            {
                tracing::warn!(error = %e, database, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
            other => return other,
        }
    }
}

async fn try_connect_postgres(
    server: &str,
    database: &str,
    within: Duration,
) -> Result<(AnyPool, String), StorageError> {
    if !valid_database_name(database) {
        return Err(StorageError::DatabaseName(database.to_owned()));
    }
    let url = with_database(server, database)?;
    let options = || {
        AnyPoolOptions::new()
            .max_connections(12)
            .test_before_acquire(false)
            // A commit returns once it is on disk, whatever the server's default.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("SET synchronous_commit = on")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(300))
    };
    // The pool would try for its whole acquire timeout; this attempt has less.
    let first = tokio::time::timeout(within, options().connect(&url))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    match first {
        Ok(pool) => Ok((pool, url)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            // The database does not exist yet: create it from the server's
            // maintenance database. A concurrent replica may win the race.
            let admin = AnyPoolOptions::new()
                .max_connections(1)
                .connect(server)
                .await?;
            let created = sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
                .execute(&admin)
                .await;
            admin.close().await;
            match created {
                Ok(_) => {}
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
                Err(e) => return Err(e.into()),
            }
            Ok((options().connect(&url).await?, url))
        }
        Err(e) => Err(e.into()),
    }
}

/// `blog_db_connections{state}` and `blog_db_connections_max`, read when scraped.
fn pool_gauges(service: &'static str, pool: AnyPool) -> blog_kit::metrics::Registration {
    blog_kit::metrics::on_scrape(Arc::new(move || {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
        let max = pool.options().get_max_connections();
        Box::pin(async move {
            metrics::gauge!("blog_db_connections", "service" => service, "state" => "used")
                .set(f64::from(size - idle));
            metrics::gauge!("blog_db_connections", "service" => service, "state" => "idle")
                .set(f64::from(idle));
            metrics::gauge!("blog_db_connections_max", "service" => service).set(f64::from(max));
        })
    }))
}

impl Db {
    /// Opens (creating if needed) `service`'s database and applies the shared
    /// migrations and then the service's own.
    pub async fn open(
        config: &StorageConfig,
        service: &'static str,
        migrations: &Migrations,
    ) -> Result<Self, StorageError> {
        Self::open_with(config, service, migrations, Writes::Concurrent).await
    }

    /// As [`open`](Self::open), choosing how writes may run.
    pub async fn open_with(
        config: &StorageConfig,
        service: &'static str,
        migrations: &Migrations,
        writes: Writes,
    ) -> Result<Self, StorageError> {
        install_default_drivers();
        let (pool, engine, url) = match config {
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
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    // An acknowledged write survives power loss: the WAL is
                    // synced at every commit, whatever the build's default.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql("PRAGMA synchronous = FULL")
                                .execute(conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                // WAL is a property of the file: set once, kept on reopen.
                sqlx::query("PRAGMA journal_mode=WAL")
                    .fetch_all(&pool)
                    .await?;
                (pool, Engine::Sqlite, url)
            }
            StorageConfig::Postgres {
                server,
                database,
                prefix,
                connect_within,
            } => {
                let name = database
                    .clone()
                    .unwrap_or_else(|| StorageConfig::postgres_database(prefix, service));
                let (pool, url) = connect_postgres(server, &name, *connect_within).await?;
                (pool, Engine::Postgres, url)
            }
        };
        // Migrations every service shares (outbox, processed events, cursor,
        // dead letters), kept in their own history table so each service's
        // own migrations number freely.
        let (mut shared, own) = match engine {
            Engine::Sqlite => (sqlx::migrate!("./migrations/sqlite"), &migrations.sqlite),
            Engine::Postgres => (
                sqlx::migrate!("./migrations/postgres"),
                &migrations.postgres,
            ),
        };
        shared.dangerous_set_table_name("_blog_shared_migrations");
        shared.run(&pool).await?;
        own.run(&pool).await?;
        // SQLite has one writer at a time; on PostgreSQL a few transactions
        // in flight keep the server's own group commit busy.
        let writers = match (engine, writes) {
            (Engine::Sqlite, _) | (_, Writes::Serial) => 1,
            (Engine::Postgres, Writes::Concurrent) => 4,
        };
        let outbox_written = Arc::new(Notify::new());
        let writer = Writer::start(pool.clone(), engine, writers, outbox_written.clone());
        let pool_metrics = Arc::new(pool_gauges(service, pool.clone()));
        Ok(Self {
            pool,
            engine,
            service,
            _pool_metrics: pool_metrics,
            url,
            outbox_written,
            writer,
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The service whose database this is.
    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database's URL (for PostgreSQL listeners).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `work` in a write transaction and returns once it committed
    /// (group commit: it may share the transaction, never its failure, with
    /// other writes). The work runs in a writer task, so it commits or fails
    /// whole even when the caller stops waiting.
    pub async fn write<T: Send + 'static>(
        &self,
        work: impl WriteWork<T>,
    ) -> Result<Written<T>, StorageError> {
        self.writer.write(None, work, |_| {}).await
    }

    /// As [`write`](Self::write); writes with the same `key` commit in the
    /// order they were queued (on PostgreSQL several writers run at once).
    pub async fn write_in_order<T: Send + 'static>(
        &self,
        key: &str,
        work: impl WriteWork<T>,
    ) -> Result<Written<T>, StorageError> {
        self.writer.write(Some(key), work, |_| {}).await
    }

    /// As [`write`](Self::write), and runs `after_commit` right after the
    /// commit, in the writer task: what must follow a commit (a cache to
    /// refresh) follows it even when the caller went away.
    pub async fn write_then<T: Send + 'static>(
        &self,
        work: impl WriteWork<T>,
        after_commit: impl FnOnce(&T) + Send + 'static,
    ) -> Result<Written<T>, StorageError> {
        self.writer.write(None, work, after_commit).await
    }

    /// Runs one statement as a write of its own (group commit, in the
    /// writer task); returns the rows it affected.
    pub async fn execute(&self, statement: Statement) -> Result<u64, StorageError> {
        let written = self
            .write(move |tx| {
                Box::pin(async move { Ok(statement.execute(&mut **tx).await?.rows_affected()) })
            })
            .await?;
        Ok(written.value)
    }

    /// Whether writes work: `Err` with the reason while the last write
    /// failed, until a probe write commits (space came back on the disk).
    pub async fn writable(&self) -> Result<(), String> {
        let Some((since, why)) = self.writer.health().current() else {
            return Ok(());
        };
        let probe = self
            .execute(sqlx::query(
                "UPDATE write_probe SET at = at + 1 WHERE id = 1",
            ))
            .await;
        probe
            .map(|_| ())
            .map_err(|_| format!("writes failing for {}s: {why}", since.as_secs()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        let cases = [
            (
                "postgres://127.0.0.1:5432/postgres",
                "postgres://127.0.0.1:5432/blog_posts",
            ),
            ("postgres://u:p@db", "postgres://u:p@db/blog_posts"),
            (
                "postgresql://db/x?sslmode=disable",
                "postgresql://db/blog_posts?sslmode=disable",
            ),
            (
                "postgres://user:p%40ss@db:6432/x",
                "postgres://user:p%40ss@db:6432/blog_posts",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "blog_posts").expect("valid"), expected);
        }
        assert!(with_database("mysql://db/x", "y").is_err());
        assert!(with_database("postgres:///x", "y").is_err());
        assert_eq!(
            database_of("postgres://h:1/blog_x?a=b").as_deref(),
            Some("blog_x")
        );
        assert_eq!(database_of("postgres://h:1"), None);
        assert!(valid_database_name("blog_event_bus"));
        assert!(!valid_database_name("Blog; DROP"));
        assert_eq!(
            StorageConfig::postgres_database("blog_", "event-bus"),
            "blog_event_bus"
        );
    }
}
