use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use blog_storage::{Db, Row, StorageError};
use serde_json::{Map, Value};
use tokio::sync::watch;

/// The durable, ordered log of every event.
///
/// Appends run in the database's one writer (serial writes), which numbers
/// them from the stored log itself: a publisher that goes away mid-append
/// leaves nothing half-done behind, and many appends share one commit.
pub struct EventLog {
    db: Db,
    appended: Arc<watch::Sender<i64>>,
    /// The newest events, as stored: deliveries that keep up read them
    /// from here instead of the database.
    recent: Arc<Mutex<VecDeque<Stored>>>,
}

/// A stored event: its sequence number and its JSON.
pub type Stored = (i64, Arc<str>);

/// How many of the newest events the log keeps in memory.
const RECENT: usize = 4096;

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    /// The stored event, when new; `None` when an event with the same id
    /// was stored before.
    pub stored: Option<Arc<str>>,
}

/// An event to store: its emitter's id (if any) and its JSON object.
pub struct NewEvent {
    pub id: Option<String>,
    pub body: Map<String, Value>,
}

impl EventLog {
    pub async fn open(db: Db) -> Result<Self, StorageError> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(db.pool())
            .await?;
        Ok(Self {
            db,
            appended: Arc::new(watch::Sender::new(last)),
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
        })
    }

    /// Stores `events` in order, each stamped with the next sequence number
    /// (a resent id keeps its first number), and returns once committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, StorageError> {
        let (appended, recent) = (self.appended.clone(), self.recent.clone());
        let written = self
            .db
            .write_then(
                move |tx| {
                    Box::pin(async move {
                        let mut next: i64 =
                            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM events")
                                .fetch_one(&mut **tx)
                                .await?;
                        let mut out = Vec::with_capacity(events.len());
                        for NewEvent { id, mut body } in events {
                            body.insert("seq".into(), Value::from(next));
                            let text: Arc<str> = Arc::from(Value::Object(body).to_string());
                            // A resent id is stored once: the insert does
                            // nothing, and the first number is the answer.
                            let stored = sqlx::query(
                                "INSERT INTO events (seq, event_id, body) VALUES ($1, $2, $3)
                                 ON CONFLICT (event_id) DO NOTHING",
                            )
                            .bind(next)
                            .bind(&id)
                            .bind(&*text)
                            .execute(&mut **tx)
                            .await?;
                            if stored.rows_affected() == 1 {
                                out.push(Appended {
                                    seq: next,
                                    stored: Some(text),
                                });
                                next += 1;
                            } else {
                                let seq: i64 = sqlx::query_scalar(
                                    "SELECT seq FROM events WHERE event_id = $1",
                                )
                                .bind(&id)
                                .fetch_one(&mut **tx)
                                .await?;
                                out.push(Appended { seq, stored: None });
                            }
                        }
                        Ok(out)
                    })
                },
                // In the writer, right after the commit: deliveries wake
                // even when the publisher went away.
                move |out: &Vec<Appended>| {
                    if let Ok(mut recent) = recent.lock() {
                        for appended in out {
                            if let Some(body) = &appended.stored {
                                if recent.len() == RECENT {
                                    recent.pop_front();
                                }
                                recent.push_back((appended.seq, body.clone()));
                            }
                        }
                    }
                    let newest = out
                        .iter()
                        .filter(|a| a.stored.is_some())
                        .map(|a| a.seq)
                        .max();
                    if let Some(last) = newest {
                        appended.send_if_modified(|seen| {
                            let newer = last > *seen;
                            if newer {
                                *seen = last;
                            }
                            newer
                        });
                    }
                },
            )
            .await?;
        Ok(written.value)
    }

    /// Up to `limit` stored events after `seq`, as `(seq, body)`: from
    /// memory when they are all among the newest, else from the database.
    pub async fn after_shared(&self, seq: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        if let Ok(recent) = self.recent.lock()
            && let Some((first, _)) = recent.front()
            && *first <= seq + 1
        {
            let skip = usize::try_from(seq + 1 - first).unwrap_or(usize::MAX);
            return Ok(recent.iter().skip(skip).take(limit).cloned().collect());
        }
        let rows = self
            .after(seq, i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, body)| (seq, Arc::from(body)))
            .collect())
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

    /// The stored event `seq`, if any.
    pub async fn get(&self, seq: i64) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar("SELECT body FROM events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(self.db.pool())
            .await?)
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
