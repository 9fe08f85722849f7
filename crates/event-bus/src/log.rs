use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use blog_bus::{BusError, Nats, NatsConfig, StreamEvent};
use blog_kit::ApiError;
use blog_kit::CancellationToken;
use blog_kit::retry::until_ok;
use blog_storage::{Db, StorageError};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::watch;

/// The durable, ordered log of every event.
///
/// In its own table, appends run in the database's one writer (serial
/// writes), which numbers them from the stored log itself: a publisher that
/// goes away mid-append leaves nothing half-done behind, and many appends
/// share one commit. On JetStream the stream is the log (the bus is then a
/// bridge for course services that speak HTTP), and the database keeps only
/// the subscribers' cursors and dead letters.
pub struct EventLog {
    db: Db,
    store: Store,
    appended: Arc<watch::Sender<i64>>,
    /// The newest events, as stored: deliveries that keep up read them
    /// from here instead of the store.
    recent: Arc<Mutex<VecDeque<Stored>>>,
}

/// Where the events are kept.
#[derive(Debug, Clone)]
pub enum LogStore {
    /// The `events` table of the bus's own database.
    Table,
    /// A JetStream stream, the one the services use.
    JetStream(NatsConfig),
}

enum Store {
    Table,
    JetStream(Box<Nats>),
}

/// Why the log could not do something.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        LogError::Storage(e.into())
    }
}

/// What a service could not be built for: the same two causes.
impl From<LogError> for blog_bus::BuildError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Storage(e) => e.into(),
            LogError::Bus(e) => e.into(),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Storage(e) => e.into(),
            LogError::Bus(e) if e.is_permanent() => ApiError::BadRequest(e.to_string()),
            LogError::Bus(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// `payload` (a stored event's JSON) with its `seq` field set, as the
/// course's `GET /events` and deliveries carry it.
fn with_seq(event: &StreamEvent) -> String {
    match serde_json::from_slice::<Value>(&event.payload) {
        Ok(Value::Object(mut map)) => {
            map.insert("seq".into(), Value::from(event.seq));
            Value::Object(map).to_string()
        }
        _ => String::from_utf8_lossy(&event.payload).into_owned(),
    }
}

/// Adds newly stored events, in order, to the newest kept in memory.
fn remember(recent: &Mutex<VecDeque<Stored>>, events: impl IntoIterator<Item = Stored>) {
    if let Ok(mut recent) = recent.lock() {
        for event in events {
            // A gap (memory fell behind) starts it over: what it holds must
            // be every event from its first on.
            if recent.back().is_some_and(|(last, _)| *last + 1 != event.0) {
                recent.clear();
            }
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event);
        }
    }
}

fn seq_of(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
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
    pub async fn open(db: Db, store: &LogStore) -> Result<Self, LogError> {
        let (store, last) = match store {
            LogStore::Table => {
                let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                    .fetch_one(db.pool())
                    .await?;
                (Store::Table, last)
            }
            // The newest number is learnt by `follow` once NATS answers.
            LogStore::JetStream(config) => {
                (Store::JetStream(Box::new(Nats::connect(config).await?)), 0)
            }
        };
        Ok(Self {
            db,
            store,
            appended: Arc::new(watch::Sender::new(last)),
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
        })
    }

    /// Stores `events` in order, each stamped with the next sequence number
    /// (a resent id keeps its first number), and returns once stored.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        match &self.store {
            Store::Table => Ok(self.append_to_table(events).await?),
            Store::JetStream(nats) => {
                let events: Vec<(Option<String>, String)> = events
                    .into_iter()
                    .map(|e| (e.id, Value::Object(e.body).to_string()))
                    .collect();
                // Deliveries hear of them from `follow`, as of every event
                // the services publish to the stream themselves.
                Ok(nats
                    .append(&events)
                    .await?
                    .into_iter()
                    .map(|placed| Appended {
                        seq: seq_of(placed.seq),
                        stored: None,
                    })
                    .collect())
            }
        }
    }

    /// Keeps the newest events and the last number up to date from the
    /// stream, as JetStream stores them; nothing to do for a table, whose
    /// appends do it as they commit. A tail that fails is taken up again
    /// after the last event it gave.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let Store::JetStream(nats) = &self.store else {
            return;
        };
        until_ok(&shutdown, "cannot follow the stream", || {
            self.follow_once(nats, &shutdown)
        })
        .await;
    }

    /// Tails the stream until `shutdown` (`Ok`) or a failure.
    async fn follow_once(&self, nats: &Nats, shutdown: &CancellationToken) -> Result<(), BusError> {
        // After the last event seen; at first, after the newest stored.
        let mut from = u64::try_from(*self.appended.borrow()).unwrap_or(0);
        if from == 0 {
            from = nats.last_seq().await?;
            self.appended.send_replace(seq_of(from));
        }
        let mut events = nats.tail(from).await?;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = events.next() => next,
            };
            let Some(event) = next else {
                return Err(BusError::Nats("the stream's messages ended".into()));
            };
            let event = event?;
            let seq = seq_of(event.seq);
            remember(&self.recent, [(seq, Arc::from(with_seq(&event)))]);
            self.appended.send_replace(seq);
        }
    }

    /// Ready to take events: the table's database takes writes, or the
    /// stream is placed and NATS answers.
    pub async fn ready(&self) -> Result<(), String> {
        match &self.store {
            Store::Table => self
                .db
                .writable()
                .await
                .map_err(|e| format!("storage: cannot append: {e}")),
            Store::JetStream(nats) => nats.reachable().await.map_err(|e| format!("bus: {e}")),
        }
    }

    async fn append_to_table(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, StorageError> {
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
                    remember(
                        &recent,
                        out.iter().filter_map(|a| Some((a.seq, a.stored.clone()?))),
                    );
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
    pub async fn after_shared(&self, seq: i64, limit: usize) -> Result<Vec<Stored>, LogError> {
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
    pub async fn after(&self, seq: i64, limit: i64) -> Result<Vec<(i64, String)>, LogError> {
        if let Store::JetStream(nats) = &self.store {
            let events = nats
                .read_after(
                    u64::try_from(seq).unwrap_or(0),
                    usize::try_from(limit).unwrap_or(usize::MAX),
                )
                .await?;
            return Ok(events
                .iter()
                .map(|event| (seq_of(event.seq), with_seq(event)))
                .collect());
        }
        Ok(
            sqlx::query_as("SELECT seq, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?,
        )
    }

    /// The stored event `seq`, if any.
    pub async fn get(&self, seq: i64) -> Result<Option<String>, LogError> {
        if let Store::JetStream(nats) = &self.store {
            let Ok(seq) = u64::try_from(seq) else {
                return Ok(None);
            };
            return Ok(nats
                .read_one(seq)
                .await?
                .map(|payload| with_seq(&StreamEvent { seq, payload })));
        }
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
