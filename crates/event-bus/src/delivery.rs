use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blog_kit::CancellationToken;
use blog_kit::client::{HttpClient, Reply, json_array};
use blog_kit::http::{CONSUMES_HEADER, fits_in_batch};
use blog_kit::retry::Backoff;
use blog_storage::{Db, StorageError};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;

use crate::undelivered;
use crate::{EventLog, LogError};

const BATCH: usize = 512;
/// How a delivery paces its attempts to one subscriber.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// One subscriber and how far it has acknowledged.
pub struct Subscriber {
    pub url: String,
    cursor: AtomicI64,
    /// Whether it takes `POST <url>/batch` (our services do; a course
    /// service answers 404 and gets one event per request).
    batches: AtomicBool,
    /// Woken when an operator asks to send its dead letters again.
    replay: Notify,
    /// Set with it: there may be letters to send again (also at start).
    replay_asked: AtomicBool,
    /// The event types it said it applies (our services say so in every
    /// answer); `None` until then, or for a course service: everything.
    consumes: Mutex<Option<Arc<HashSet<String>>>>,
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
            batches: AtomicBool::new(true),
            replay: Notify::new(),
            replay_asked: AtomicBool::new(true),
            consumes: Mutex::new(None),
        })
    }

    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// Whether it takes batches (as far as the bus has seen).
    pub fn takes_batches(&self) -> bool {
        self.batches.load(Ordering::Relaxed)
    }

    /// Learns from an answer which event types it applies.
    fn heard(&self, reply: &Reply) {
        let consumes = reply
            .headers
            .get(CONSUMES_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|types| {
                Arc::new(
                    types
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            });
        if let Ok(mut known) = self.consumes.lock() {
            *known = consumes;
        }
    }

    /// The event types it said it applies, if it said.
    pub fn consumes(&self) -> Option<Arc<HashSet<String>>> {
        self.consumes.lock().ok().and_then(|t| t.clone())
    }

    /// Whether it wants an event (by the `type` of its stored body).
    fn wants(&self, types: Option<&HashSet<String>>, body: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Typed<'a> {
            #[serde(borrow, rename = "type")]
            kind: std::borrow::Cow<'a, str>,
        }
        let Some(types) = types else {
            return true;
        };
        serde_json::from_str::<Typed<'_>>(body).map_or(true, |t| types.contains(t.kind.as_ref()))
    }

    /// Wakes its delivery to send what an operator marked for replay.
    pub fn wake_replay(&self) {
        self.replay_asked.store(true, Ordering::Release);
        self.replay.notify_one();
    }

    async fn save(&self, db: &Db, seq: i64) -> Result<(), StorageError> {
        db.execute(
            sqlx::query(
                "INSERT INTO cursors (subscriber, last_seq) VALUES ($1, $2)
                 ON CONFLICT (subscriber) DO UPDATE SET last_seq = excluded.last_seq",
            )
            .bind(self.url.clone())
            .bind(seq),
        )
        .await?;
        Ok(())
    }
}

/// How a delivery attempt went.
enum Attempt {
    Done,
    /// The subscriber answered, and not with success: counts toward the
    /// attempts after which the event is set aside. A 4xx (other than
    /// 408/429) can never succeed and is set aside at once.
    Failed {
        reason: String,
        permanent: bool,
    },
    /// No answer (down, restarting, unreachable): retried for as long as it
    /// takes, without counting, since the event is not at fault.
    Unreachable(String),
}

fn judge(answer: Result<Reply, blog_kit::client::ClientError>) -> Attempt {
    match answer {
        Ok(Reply { status, .. }) if status.is_success() => Attempt::Done,
        Ok(Reply { status, body, .. }) => Attempt::Failed {
            reason: format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
            permanent: status.is_client_error() && !matches!(status.as_u16(), 408 | 429),
        },
        Err(e) => Attempt::Unreachable(e.to_string()),
    }
}

/// Delivers one subscriber's events: every event after its cursor, in
/// order, at least once. An event it keeps failing on is retried with
/// back-off `attempts` times and then set aside as a dead letter, so one
/// poison event never blocks the rest.
pub struct Delivery {
    pub log: Arc<EventLog>,
    pub subscriber: Arc<Subscriber>,
    pub http: HttpClient,
    pub attempts: u32,
}

impl Delivery {
    /// Runs until `shutdown`. The cursor is saved after each batch, so a
    /// restart redelivers at most one batch (consumers deduplicate).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut appended = self.log.watch();
        let mut cursor = SavedCursor::new(self.subscriber.cursor());
        loop {
            if self.subscriber.replay_asked.swap(false, Ordering::AcqRel)
                && let Err(e) = self.replay_letters(&shutdown).await
            {
                self.subscriber.replay_asked.store(true, Ordering::Release);
                tracing::warn!(error = %e, subscriber = %self.subscriber.url, "could not replay dead letters");
            }
            let from = self.subscriber.cursor();
            let batch = match self.log.after_shared(from, BATCH).await {
                Ok(batch) => cut(batch),
                Err(e) => {
                    tracing::warn!(error = %e, "delivery cannot read the log");
                    if sleep_or_stop(BACKOFF.longest(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                let save_at = cursor.save_at(from);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.subscriber.replay.notified() => {}
                    changed = appended.changed() => if changed.is_err() { break },
                    () = blog_kit::retry::sleep_until(save_at), if save_at.is_some() => {
                        cursor.save(&self, from).await;
                    }
                }
                continue;
            }
            let Some(last) = batch.last().map(|(seq, _)| *seq) else {
                continue;
            };
            // What it said it does not apply is passed over (the cursor moves
            // past it all the same).
            let types = self.subscriber.consumes();
            let wanted: Vec<(i64, Arc<str>)> = batch
                .into_iter()
                .filter(|(_, body)| self.subscriber.wants(types.as_deref(), body))
                .collect();
            if !wanted.is_empty() && !self.send_batch(&wanted, &shutdown).await {
                break;
            }
            self.subscriber.cursor.store(last, Ordering::Release);
            if cursor
                .save_at(last)
                .is_some_and(|at| at <= tokio::time::Instant::now())
            {
                cursor.save(&self, last).await;
            }
        }
        cursor.save(&self, self.subscriber.cursor()).await;
    }

    /// Sends `batch`; false when shutdown came first (nothing of it counts
    /// as delivered then).
    #[tracing::instrument(
        name = "deliver",
        skip_all,
        fields(
            subscriber = %self.subscriber.url,
            events = batch.len(),
            first_seq = batch.first().map(|(seq, _)| *seq),
            last_seq = batch.last().map(|(seq, _)| *seq),
        )
    )]
    async fn send_batch(&self, batch: &[(i64, Arc<str>)], shutdown: &CancellationToken) -> bool {
        let mut backoff = BACKOFF;
        while self.subscriber.takes_batches() && batch.len() > 1 {
            let body = json_array(batch.iter().map(|(_, body)| &**body));
            let answer = self
                .http
                .post_json_reply(&format!("{}/batch", self.subscriber.url), body)
                .await;
            if let Ok(reply) = &answer {
                self.subscriber.heard(reply);
            }
            match answer.map(|r| (r.status, r.body)) {
                Ok((status, body)) if status.is_success() => {
                    let failed = failed_in(&body, batch.len());
                    // The others are applied; the ones that failed get their
                    // own bounded retries, in order.
                    for i in failed {
                        if !self.send_one(batch[i].0, &batch[i].1, shutdown).await {
                            return false;
                        }
                    }
                    return true;
                }
                Ok((status, _)) if matches!(status.as_u16(), 404 | 405) => {
                    tracing::info!(subscriber = %self.subscriber.url, "subscriber takes one event per request");
                    self.subscriber.batches.store(false, Ordering::Relaxed);
                }
                Ok((status, _)) => {
                    // The whole batch was refused (the subscriber is not
                    // ready, say): one at a time finds any event at fault.
                    tracing::debug!(subscriber = %self.subscriber.url, %status, "batch refused; sending one by one");
                    break;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::debug!(subscriber = %self.subscriber.url, error = %e, retry_in = ?wait, "subscriber unreachable");
                    if sleep_or_stop(wait, shutdown).await {
                        return false;
                    }
                }
            }
        }
        for (seq, body) in batch {
            if !self.send_one(*seq, body, shutdown).await {
                return false;
            }
        }
        true
    }

    /// Sends one event until it is taken, refused for good, or has failed
    /// `attempts` times (then it is set aside). False on shutdown.
    #[tracing::instrument(name = "deliver_one", skip_all, fields(seq = seq, r#type))]
    async fn send_one(&self, seq: i64, body: &str, shutdown: &CancellationToken) -> bool {
        // Read once: it names the span and labels the counters below.
        let kind = type_of(body);
        tracing::Span::current().record("type", kind);
        match self.try_hard(body, kind, shutdown).await {
            None => false,
            Some(Ok(())) => true,
            Some(Err((attempts, reason))) => {
                tracing::error!(subscriber = %self.subscriber.url, seq, attempts, %reason, "event set aside as a dead letter");
                metrics::counter!("blog_events_dead_lettered_total", "service" => crate::NAME, "type" => kind)
                    .increment(1);
                // Not recorded (the bus's own storage failing): keep trying to
                // record it rather than lose it.
                let mut backoff = BACKOFF;
                while let Err(e) = undelivered::set_aside(
                    self.log.db(),
                    &self.subscriber.url,
                    seq,
                    attempts,
                    &reason,
                )
                .await
                {
                    tracing::warn!(error = %e, "could not record a dead letter");
                    if sleep_or_stop(backoff.next_wait(), shutdown).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// `None` on shutdown; `Err((attempts, last reason))` when given up.
    /// `kind` is the event's type, as a label.
    async fn try_hard(
        &self,
        body: &str,
        kind: &'static str,
        shutdown: &CancellationToken,
    ) -> Option<Result<(), (u32, String)>> {
        let mut backoff = BACKOFF;
        let mut failures = 0;
        let mut sent = 0u32;
        loop {
            if sent > 0 {
                metrics::counter!("blog_events_redelivered_total", "service" => crate::NAME, "type" => kind)
                    .increment(1);
            }
            sent += 1;
            let answer = self
                .http
                .post_json_reply(
                    &self.subscriber.url,
                    Bytes::copy_from_slice(body.as_bytes()),
                )
                .await;
            if let Ok(reply) = &answer {
                self.subscriber.heard(reply);
            }
            match judge(answer) {
                Attempt::Done => return Some(Ok(())),
                Attempt::Failed { reason, permanent } => {
                    failures += 1;
                    if permanent {
                        return Some(Err((failures, reason)));
                    }
                    if failures >= self.attempts {
                        // Only an event a ready subscriber fails on is at
                        // fault: one whose storage is down says so on
                        // /readyz, and keeps getting it (no /readyz, as on
                        // a course service, counts as ready).
                        if !self.subscriber_unready().await {
                            return Some(Err((failures, reason)));
                        }
                        failures = self.attempts - 1;
                    }
                    tracing::debug!(subscriber = %self.subscriber.url, %reason, failures, "delivery failed");
                }
                Attempt::Unreachable(why) => {
                    tracing::debug!(subscriber = %self.subscriber.url, %why, "subscriber unreachable");
                }
            }
            if sleep_or_stop(backoff.next_wait(), shutdown).await {
                return None;
            }
        }
    }

    /// Whether the subscriber says it is not ready (`/readyz` beside its
    /// events route answers 503).
    async fn subscriber_unready(&self) -> bool {
        let base = self
            .subscriber
            .url
            .strip_suffix("/events")
            .unwrap_or(&self.subscriber.url);
        matches!(
            self.http.get(&format!("{base}/readyz")).await,
            Ok((status, _)) if status == axum::http::StatusCode::SERVICE_UNAVAILABLE
        )
    }

    /// Sends again what an operator marked for replay.
    async fn replay_letters(&self, shutdown: &CancellationToken) -> Result<(), LogError> {
        let db = self.log.db();
        for letter in undelivered::to_replay(db, &self.subscriber.url).await? {
            let Some(body) = self.log.get(letter.seq).await? else {
                undelivered::delivered(db, letter.id).await?;
                continue;
            };
            match self.try_hard(&body, type_of(&body), shutdown).await {
                None => return Ok(()),
                Some(Ok(())) => {
                    tracing::info!(subscriber = %self.subscriber.url, seq = letter.seq, "dead letter delivered");
                    undelivered::delivered(db, letter.id).await?;
                }
                Some(Err((attempts, reason))) => {
                    undelivered::failed_again(db, letter.id, attempts, &reason).await?;
                }
            }
        }
        Ok(())
    }
}

/// Cursors are saved at most this often: each save is a write (an fsync),
/// and a crash redelivers at most this much, which consumers recognise.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// The last cursor saved, and when.
struct SavedCursor {
    seq: i64,
    at: Option<tokio::time::Instant>,
}

impl SavedCursor {
    fn new(seq: i64) -> Self {
        Self { seq, at: None }
    }

    /// When `seq` should be saved, if it is not yet.
    fn save_at(&self, seq: i64) -> Option<tokio::time::Instant> {
        (seq > self.seq).then(|| {
            self.at
                .map_or_else(tokio::time::Instant::now, |at| at + SAVE_EVERY)
        })
    }

    async fn save(&mut self, delivery: &Delivery, seq: i64) {
        if seq <= self.seq {
            return;
        }
        self.at = Some(tokio::time::Instant::now());
        match delivery.subscriber.save(delivery.log.db(), seq).await {
            Ok(()) => self.seq = seq,
            Err(e) => tracing::warn!(error = %e, "could not save a delivery cursor"),
        }
    }
}

/// The events of `batch` that fit in one request (at least one).
fn cut(mut batch: Vec<(i64, Arc<str>)>) -> Vec<(i64, Arc<str>)> {
    batch.truncate(fits_in_batch(batch.iter().map(|(_, body)| body.len())));
    batch
}

/// Indexes of the events a batch answer says were not applied. An answer
/// that cannot be read counts every event as not applied.
fn failed_in(answer: &[u8], len: usize) -> Vec<usize> {
    let results = serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| v.get("results").and_then(Value::as_array).cloned());
    match results {
        Some(results) if results.len() == len => results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.get("status").and_then(Value::as_u64) != Some(200))
            .map(|(i, _)| i)
            .collect(),
        _ => (0..len).collect(),
    }
}

/// Sleeps for `duration`; true when shutdown came first.
async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

/// The type of a stored event, as a bounded label: its `type` field alone
/// is read (the rest is skipped, not built).
fn type_of(body: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Typed>(body)
        .map_or("unknown", |typed| blog_events::type_label(&typed.kind))
}

#[cfg(test)]
mod tests {
    use super::type_of;

    #[test]
    fn the_type_label_is_read_from_the_stored_event_and_bounded() {
        let event = r#"{"type":"CommentCreated","data":{"id":"c","content":"a \"quote\""}}"#;
        assert_eq!(type_of(event), "CommentCreated");
        assert_eq!(type_of(r#"{"data":{},"type":"PostLiked"}"#), "unknown");
        assert_eq!(
            type_of(r#"{"type":"Comment\u0043reated"}"#),
            "CommentCreated"
        );
        assert_eq!(type_of("not json"), "unknown");
    }
}
