use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use blog_kit::CancellationToken;
use blog_kit::client::HttpClient;
use blog_storage::{Db, StorageError};
use bytes::Bytes;

use crate::EventLog;

const BATCH: i64 = 256;
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One subscriber and how far it has acknowledged.
pub struct Subscriber {
    pub url: String,
    cursor: AtomicI64,
}

impl Subscriber {
    pub async fn load(db: &Db, url: &str) -> Result<Self, StorageError> {
        let cursor: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM cursors WHERE subscriber = $1")
                .bind(url)
                .fetch_optional(db.pool())
                .await?;
        Ok(Self {
            url: url.to_owned(),
            cursor: AtomicI64::new(cursor.unwrap_or(0)),
        })
    }

    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }

    async fn save(&self, db: &Db, seq: i64) -> Result<(), StorageError> {
        let mut tx = db.begin().await?;
        sqlx::query(
            "INSERT INTO cursors (subscriber, last_seq) VALUES ($1, $2)
             ON CONFLICT (subscriber) DO UPDATE SET last_seq = excluded.last_seq",
        )
        .bind(&self.url)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        db.commit(tx, false).await
    }
}

/// What a subscriber's answer means for the event.
enum Delivery {
    Done,
    /// Refused for good (a 4xx other than 408/429): retrying cannot help, and
    /// holding it back would stall every later event.
    Refused(u16),
    Retry(String),
}

async fn send(http: &HttpClient, url: &str, body: &str) -> Delivery {
    match http
        .post_json(url, Bytes::copy_from_slice(body.as_bytes()))
        .await
    {
        Ok((status, _)) if status.is_success() => Delivery::Done,
        Ok((status, _))
            if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 =>
        {
            Delivery::Refused(status.as_u16())
        }
        Ok((status, _)) => Delivery::Retry(format!("answered {status}")),
        Err(e) => Delivery::Retry(e.to_string()),
    }
}

/// Delivers every event after the subscriber's cursor, in order, retrying
/// each until it is acknowledged, until `shutdown`. The cursor is saved after
/// each batch, so a restart redelivers at most one batch (consumers
/// deduplicate).
pub async fn deliver(
    log: Arc<EventLog>,
    subscriber: Arc<Subscriber>,
    http: HttpClient,
    shutdown: CancellationToken,
) {
    let mut appended = log.watch();
    let mut saved = subscriber.cursor();
    loop {
        let from = subscriber.cursor();
        let batch = match log.after(from, BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "delivery cannot read the log");
                if sleep_or_stop(BACKOFF_MAX, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = appended.changed() => if changed.is_err() { return },
            }
            continue;
        }
        for (seq, body) in batch {
            let mut backoff = BACKOFF_START;
            loop {
                match send(&http, &subscriber.url, &body).await {
                    Delivery::Done => break,
                    Delivery::Refused(status) => {
                        tracing::error!(subscriber = %subscriber.url, seq, status, "subscriber refused an event; skipping it");
                        break;
                    }
                    Delivery::Retry(why) => {
                        tracing::debug!(subscriber = %subscriber.url, seq, %why, retry_in = ?backoff, "delivery failed");
                        if sleep_or_stop(backoff, &shutdown).await {
                            persist(&log, &subscriber, &mut saved).await;
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            subscriber.cursor.store(seq, Ordering::Release);
            if shutdown.is_cancelled() {
                break;
            }
        }
        persist(&log, &subscriber, &mut saved).await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn persist(log: &EventLog, subscriber: &Subscriber, saved: &mut i64) {
    let cursor = subscriber.cursor();
    if cursor == *saved {
        return;
    }
    match subscriber.save(log.db(), cursor).await {
        Ok(()) => *saved = cursor,
        Err(e) => tracing::warn!(error = %e, "could not save a delivery cursor"),
    }
}

/// Sleeps for `duration`; true when shutdown came first.
async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}
