use blog_events::Envelope;
use blog_storage::{Db, Row, StorageError};
use serde_json::Value;
use tokio::sync::{Mutex, watch};

/// The durable, ordered log of every event.
pub struct EventLog {
    db: Db,
    /// The last assigned sequence number; holding the lock is what makes
    /// appends one at a time, so numbers have no gaps and follow commit order.
    last: Mutex<i64>,
    appended: watch::Sender<i64>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    /// False when an event with the same id was stored before.
    pub new: bool,
}

impl EventLog {
    pub async fn open(db: Db) -> Result<Self, StorageError> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(db.pool())
            .await?;
        let (appended, _) = watch::channel(last);
        Ok(Self {
            db,
            last: Mutex::new(last),
            appended,
        })
    }

    /// Stores `event` (already validated as `envelope`), stamped with the next
    /// sequence number, and returns once it is committed.
    pub async fn append(
        &self,
        envelope: &Envelope,
        mut event: serde_json::Map<String, Value>,
    ) -> Result<Appended, StorageError> {
        let mut last = self.last.lock().await;
        if let Some(id) = &envelope.id {
            let known: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM events WHERE event_id = $1")
                    .bind(id)
                    .fetch_optional(self.db.pool())
                    .await?;
            if let Some(seq) = known {
                return Ok(Appended { seq, new: false });
            }
        }
        let seq = *last + 1;
        event.insert("seq".into(), Value::from(seq));
        let body = Value::Object(event).to_string();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO events (seq, event_id, body) VALUES ($1, $2, $3)")
            .bind(seq)
            .bind(envelope.id.clone())
            .bind(body)
            .execute(&mut *tx)
            .await?;
        self.db.commit(tx, false).await?;
        *last = seq;
        self.appended.send_replace(seq);
        Ok(Appended { seq, new: true })
    }

    /// Up to `limit` stored events after `seq`, as `(seq, body)`.
    pub async fn after(&self, seq: i64, limit: i64) -> Result<Vec<(i64, String)>, StorageError> {
        let rows = sqlx::query("SELECT seq, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("seq")?, row.try_get("body")?)))
            .collect()
    }

    /// Watches the last sequence number, to wake deliveries.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.appended.subscribe()
    }

    pub fn last_seq(&self) -> i64 {
        *self.appended.borrow()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}
