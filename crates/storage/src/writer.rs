//! Group commit: every write to a service's database runs in a task the
//! request does not own, and many writes share one transaction and one fsync.
//!
//! A caller hands [`Db::write`](crate::Db::write) a job. Writer tasks take
//! whatever jobs are queued, run them one after another in one transaction,
//! each inside its own savepoint (a failing job is rolled back alone), commit
//! once, and then answer every caller. Because the writer owns the work, a
//! caller that goes away (a client timeout, a cancelled request) changes
//! nothing: its job commits or fails whole, and what must follow a commit
//! (waking the relay, refreshing a cache) runs in the writer, not the caller.

use std::any::Any as StdAny;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blog_kit::health::Failing;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::AnyConnection;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{Engine, StorageError};

/// Jobs queued beyond this make callers wait to queue (back-pressure).
const QUEUE: usize = 8192;
/// At most this many jobs share one transaction.
const BATCH: usize = 512;

/// A write transaction, lent to one job at a time. It derefs to the
/// connection, so queries run on `&mut **tx`; pushing to the outbox marks it.
pub struct Tx {
    conn: PoolConnection<Any>,
    /// The highest outbox sequence number the current job queued.
    outbox: Option<i64>,
    /// The correlation id of what the current job reacts to (a request or
    /// an event): events it queues without one of their own inherit it.
    cause: Option<String>,
}

impl Tx {
    /// Marks what the current job's work follows from: the events it queues
    /// next carry `correlation_id` unless they name their own.
    pub fn caused_by(&mut self, correlation_id: Option<String>) {
        self.cause = correlation_id;
    }

    pub(crate) fn cause(&self) -> Option<&String> {
        self.cause.as_ref()
    }

    /// Records that the current job queued outbox row `seq`.
    pub(crate) fn wrote_outbox(&mut self, seq: i64) {
        self.outbox = Some(self.outbox.map_or(seq, |s| s.max(seq)));
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

/// What a committed job returns: its value, and the outbox row it queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written<T> {
    pub value: T,
    /// The highest outbox sequence number the job queued, if it queued any.
    pub outbox: Option<i64>,
}

type Boxed = Box<dyn StdAny + Send>;
type Answer = oneshot::Sender<Result<Written<Boxed>, StorageError>>;
type AfterCommit = Box<dyn FnOnce(&Boxed) + Send>;
type Work = Box<dyn WriteWork<Boxed>>;

/// What a write runs: given the transaction, the future of its result.
pub trait WriteWork<T>:
    for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<T, StorageError>> + Send + 'static
{
}

impl<T, F> WriteWork<T> for F where
    F: for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<T, StorageError>> + Send + 'static
{
}

struct Job {
    work: Work,
    after_commit: AfterCommit,
    answer: Answer,
}

/// A job that ran in the open transaction and waits for the commit.
struct Done {
    value: Boxed,
    outbox: Option<i64>,
    after_commit: AfterCommit,
    answer: Answer,
}

/// The queues to the writer tasks (one each), and what they report.
#[derive(Clone)]
pub(crate) struct Writer {
    queues: Arc<[mpsc::Sender<Job>]>,
    next: Arc<AtomicUsize>,
    health: Arc<Failing>,
}

impl Writer {
    /// Starts `tasks` writer tasks on `pool`. They end when every [`Writer`]
    /// clone is dropped.
    pub(crate) fn start(pool: AnyPool, engine: Engine, tasks: usize, outbox: Arc<Notify>) -> Self {
        let health = Arc::new(Failing::default());
        let mut queues = Vec::new();
        for _ in 0..tasks.max(1) {
            let (queue, jobs) = mpsc::channel(QUEUE);
            let task = WriterTask {
                pool: pool.clone(),
                engine,
                outbox: outbox.clone(),
                health: health.clone(),
            };
            tokio::spawn(task.run(jobs));
            queues.push(queue);
        }
        Self {
            queues: queues.into(),
            next: Arc::new(AtomicUsize::new(0)),
            health,
        }
    }

    /// The queue for a write: writes with the same key share one writer, so
    /// they commit in the order they were queued; others take turns.
    fn queue(&self, key: Option<&str>) -> &mpsc::Sender<Job> {
        let n = self.queues.len();
        let i = match key {
            Some(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                usize::try_from(hasher.finish() % n as u64).unwrap_or(0)
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        &self.queues[i]
    }

    /// Whether writes are failing, for readiness.
    pub(crate) fn health(&self) -> &Failing {
        &self.health
    }

    pub(crate) async fn write<T, F, A>(
        &self,
        key: Option<&str>,
        work: F,
        after_commit: A,
    ) -> Result<Written<T>, StorageError>
    where
        T: Send + 'static,
        F: WriteWork<T>,
        A: FnOnce(&T) + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |tx| {
            Box::pin(async move { work(tx).await.map(|value| Box::new(value) as Boxed) })
        });
        let after_commit: AfterCommit = Box::new(move |value| {
            if let Some(value) = value.downcast_ref::<T>() {
                after_commit(value);
            }
        });
        self.queue(key)
            .send(Job {
                work,
                after_commit,
                answer,
            })
            .await
            .map_err(|_| StorageError::Closed)?;
        let written = answered.await.map_err(|_| StorageError::Closed)??;
        let value = written
            .value
            .downcast::<T>()
            .map_err(|_| StorageError::Closed)?;
        Ok(Written {
            value: *value,
            outbox: written.outbox,
        })
    }
}

struct WriterTask {
    pool: AnyPool,
    engine: Engine,
    outbox: Arc<Notify>,
    health: Arc<Failing>,
}

fn failure(e: &sqlx::Error) -> StorageError {
    StorageError::Write(e.to_string())
}

impl WriterTask {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        // Whatever queued while the last batch committed is the next batch.
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(batch).await;
        }
    }

    async fn run_batch(&mut self, batch: Vec<Job>) {
        let mut tx = match self.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                self.health.failed(e.to_string());
                for job in batch {
                    let _ = job.answer.send(Err(StorageError::Write(e.to_string())));
                }
                return;
            }
        };
        // Each job runs in a savepoint, so a failing one is undone alone.
        // Releasing one and opening the next is one round trip; a lone job
        // needs none (its failure is the transaction's).
        let single = batch.len() == 1;
        let mut savepoint = false;
        let mut done = Vec::with_capacity(batch.len());
        let mut broken: Option<String> = None;
        for job in batch {
            if let Some(why) = &broken {
                let _ = job.answer.send(Err(StorageError::Write(why.clone())));
                continue;
            }
            if !single {
                let sql = if savepoint {
                    "RELEASE SAVEPOINT job; SAVEPOINT job"
                } else {
                    "SAVEPOINT job"
                };
                if let Err(e) = exec(&mut tx, sql).await {
                    broken = Some(e.to_string());
                    let _ = job.answer.send(Err(failure(&e)));
                    continue;
                }
                savepoint = true;
            }
            tx.outbox = None;
            tx.cause = None;
            let ran = AssertUnwindSafe((job.work)(&mut tx)).catch_unwind().await;
            let ran = ran.unwrap_or_else(|_| Err(StorageError::Write("a write panicked".into())));
            match ran {
                Ok(value) => done.push(Done {
                    value,
                    outbox: tx.outbox.take(),
                    after_commit: job.after_commit,
                    answer: job.answer,
                }),
                Err(e) => {
                    // Undo this job alone; if even that fails, the transaction
                    // is gone (SQLite rolls back on a full disk, for one).
                    if single {
                        broken = Some(e.to_string());
                    } else if let Err(undo) = exec(&mut tx, "ROLLBACK TO SAVEPOINT job").await {
                        broken = Some(undo.to_string());
                    }
                    let _ = job.answer.send(Err(e));
                }
            }
        }
        if let Some(why) = broken {
            self.abandon(tx).await;
            self.health.failed(why.clone());
            for job in done {
                let _ = job.answer.send(Err(StorageError::Write(why.clone())));
            }
            return;
        }
        match exec(&mut tx, "COMMIT").await {
            Ok(()) => {
                drop(tx);
                self.health.succeeded();
                if done.iter().any(|job| job.outbox.is_some()) {
                    self.outbox.notify_one();
                }
                for job in done {
                    (job.after_commit)(&job.value);
                    let _ = job.answer.send(Ok(Written {
                        value: job.value,
                        outbox: job.outbox,
                    }));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed");
                self.abandon(tx).await;
                self.health.failed(e.to_string());
                for job in done {
                    let _ = job.answer.send(Err(failure(&e)));
                }
            }
        }
    }

    async fn begin(&mut self) -> Result<Tx, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let begin = match self.engine {
            // Take the write lock up front: a writer outside this queue (a
            // second process) then waits instead of failing on upgrade.
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        };
        match sqlx::raw_sql(begin).execute(&mut *conn).await {
            Ok(_) => Ok(Tx {
                conn,
                outbox: None,
                cause: None,
            }),
            Err(e) => {
                // The connection may be in any state: do not reuse it.
                let _ = conn.close().await;
                Err(e)
            }
        }
    }

    /// Rolls back and closes the connection instead of returning it to the
    /// pool: after a failure the session's state is not trusted, and a fresh
    /// connection is what recovers from a full disk once space is back.
    async fn abandon(&mut self, mut tx: Tx) {
        let _ = exec(&mut tx, "ROLLBACK").await;
        let _ = tx.conn.close().await;
    }
}

async fn exec(tx: &mut Tx, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ())
}
