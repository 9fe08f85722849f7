use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use blog_kit::CancellationToken;
use blog_kit::health::Failing;
use blog_kit::retry::Backoff;
use blog_storage::outbox::Pending;
use blog_storage::{Db, Engine, inbox, outbox};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{BusClient, Rejected};

/// How often the relay looks at the outbox when no commit woke it: a
/// fallback only, since every commit that writes to the outbox wakes it.
const POLL: Duration = Duration::from_secs(1);
/// How the relay paces its attempts while the bus refuses or is away.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Events published per round: one request to our bus, pipelined on NATS.
const BATCH: i64 = 256;
/// A relay failing this long makes its service not ready.
const UNHEALTHY_AFTER: Duration = Duration::from_secs(3);
/// How long a write waits for its event to reach the bus before it answers
/// anyway (the outbox still delivers it).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// What a service's outbox relay has done, shared with its routes (to answer
/// once an event is on the bus) and its readiness check.
pub struct RelayState {
    /// The outbox row up to which this relay has published, in order (a
    /// database's one relay, SQLite).
    published_through: AtomicI64,
    /// On a shared outbox (PostgreSQL), rows are not published in sequence
    /// order: the ones this relay published lately, one by one.
    published_rows: Mutex<BTreeSet<i64>>,
    /// Bumped after each publish, to wake waiting writes.
    publishes: watch::Sender<u64>,
    failing: Failing,
}

/// How many published rows a shared relay remembers for waiting writes.
const REMEMBERED: usize = 65_536;

impl Default for RelayState {
    fn default() -> Self {
        Self {
            published_through: AtomicI64::new(0),
            published_rows: Mutex::new(BTreeSet::new()),
            publishes: watch::Sender::new(0),
            failing: Failing::default(),
        }
    }
}

impl RelayState {
    fn published_through(&self) -> i64 {
        self.published_through.load(Ordering::Acquire)
    }

    fn published_in_order(&self, seq: i64) {
        self.published_through.fetch_max(seq, Ordering::AcqRel);
        self.publishes.send_modify(|n| *n += 1);
        self.healthy();
    }

    fn published_shared(&self, batch: &[Pending]) {
        if let Ok(mut rows) = self.published_rows.lock() {
            rows.extend(batch.iter().map(|p| p.seq));
            while rows.len() > REMEMBERED {
                rows.pop_first();
            }
        }
        self.publishes.send_modify(|n| *n += 1);
        self.healthy();
    }

    fn published(&self, seq: i64) -> bool {
        self.published_through() >= seq
            || self
                .published_rows
                .lock()
                .is_ok_and(|rows| rows.contains(&seq))
    }

    fn healthy(&self) {
        self.failing.succeeded();
    }

    fn failed(&self, why: String) {
        self.failing.failed(why);
    }

    /// `Err` with the reason when the relay has not been able to publish
    /// for more than a few seconds.
    pub fn ready(&self) -> Result<(), String> {
        match self.failing.current() {
            Some((failing, why)) if failing > UNHEALTHY_AFTER => Err(format!(
                "relay: cannot publish to the bus for {}s: {why}",
                failing.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Waits until outbox row `seq` is on the bus, at most `limit`. On a
    /// shared outbox (PostgreSQL replicas) another replica's relay may
    /// publish it, so the row's absence counts too.
    pub async fn wait_published(&self, db: &Db, seq: i64, limit: Duration) {
        let mut publishes = self.publishes.subscribe();
        let shared = db.engine() == Engine::Postgres;
        let deadline = tokio::time::Instant::now() + limit;
        let mut look_in_db = shared;
        loop {
            publishes.borrow_and_update();
            let done = self.published(seq)
                || (look_in_db && matches!(outbox::waiting(db, seq).await, Ok(false)));
            if done {
                return;
            }
            // On a shared outbox, look again now and then for rows another
            // replica published.
            let look_again =
                tokio::time::sleep(Duration::from_millis(if shared { 20 } else { 1000 }));
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = publishes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    look_in_db = false;
                }
                () = look_again => look_in_db = shared,
            }
        }
    }
}

/// Relays committed outbox events to the bus until `shutdown`, in commit
/// order. An event leaves the outbox only after the bus acknowledged it, so a
/// crash at any point leads to a resend, which the bus and every consumer
/// recognise by the event id.
pub async fn relay(
    db: Db,
    bus: BusClient,
    state: std::sync::Arc<RelayState>,
    shutdown: CancellationToken,
) {
    let _depth = outbox_depth(db.clone());
    let mut backoff = BACKOFF;
    let mut single = Single::default();
    loop {
        let drained = match db.engine() {
            Engine::Sqlite => drain_single(&db, &bus, &state, &mut single).await,
            Engine::Postgres => drain_shared(&db, &bus, &state, &shutdown).await,
        };
        match drained {
            Ok(()) => {
                state.healthy();
                backoff.reset();
                let tidy_at = single.tidy_at(state.published_through());
                tokio::select! {
                    () = shutdown.cancelled() => {
                        single.tidy(&db, state.published_through()).await;
                        return;
                    }
                    () = db.outbox_written() => {}
                    () = tokio::time::sleep(POLL) => {}
                    () = blog_kit::retry::sleep_until(tidy_at), if tidy_at.is_some() => single.tidy(&db, state.published_through()).await,
                }
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "outbox relay could not publish");
                state.failed(e.to_string());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// `blog_outbox_depth`: events waiting to be relayed, counted when scraped.
fn outbox_depth(db: Db) -> blog_kit::metrics::Registration {
    blog_kit::metrics::on_scrape(std::sync::Arc::new(move || {
        let db = db.clone();
        Box::pin(async move {
            if let Ok(depth) = outbox::len(&db).await {
                metrics::gauge!("blog_outbox_depth", "service" => db.service()).set(depth as f64);
            }
        })
    }))
}

/// Publishes `batch` in a span that names it, so what is logged meanwhile
/// (a refusal, a slow bus) says which service's events, from which to which.
async fn publish(
    db: &Db,
    bus: &BusClient,
    batch: &[Pending],
) -> Result<Vec<Rejected>, crate::BusError> {
    let span = tracing::info_span!(
        "relay",
        service = db.service(),
        events = batch.len(),
        first_event = batch.first().map_or("", |p| p.event_id.as_str()),
        last_event = batch.last().map_or("", |p| p.event_id.as_str()),
    );
    bus.publish_batch(batch).instrument(span).await
}

/// Counts a batch the bus took, by event type (one counter update per
/// type, not per event), and the events it refused for good.
fn count_published(db: &Db, batch: &[Pending], rejected: &[Rejected]) {
    let service = db.service();
    let mut by_type: Vec<(&'static str, u64)> = Vec::new();
    for pending in batch
        .iter()
        .filter(|p| !rejected.iter().any(|r| r.seq == p.seq))
    {
        let kind = pending.type_label();
        tracing::debug!(service, event_id = %pending.event_id, r#type = kind, "published");
        match by_type.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => by_type.push((kind, 1)),
        }
    }
    for (kind, n) in by_type {
        metrics::counter!("blog_events_published_total", "service" => service, "type" => kind)
            .increment(n);
    }
    for pending in batch
        .iter()
        .filter(|p| rejected.iter().any(|r| r.seq == p.seq))
    {
        metrics::counter!("blog_events_dead_lettered_total", "service" => service, "type" => pending.type_label())
            .increment(1);
    }
}

/// Keeps events the bus refused for good as this service's dead letters
/// (visible at `GET /dead-letters`), so the relay goes on with the rest
/// instead of retrying them forever.
async fn set_aside(db: &Db, batch: &[Pending], rejected: Vec<Rejected>) -> Result<(), Failure> {
    for Rejected { seq, reason } in rejected {
        let body = batch
            .iter()
            .find(|p| p.seq == seq)
            .map(|p| p.body.as_str())
            .unwrap_or_default();
        tracing::error!(outbox_seq = seq, %reason, "the bus refused an event; set aside");
        inbox::dead_letter(
            db,
            seq,
            blog_storage::inbox::OUTBOX_SUBJECT,
            body,
            &format!("refused by the bus: {reason}"),
        )
        .await?;
    }
    Ok(())
}

/// Published rows are deleted at most this often: the delete is a write
/// (an fsync) of its own, and it need not be in any request's way.
const TIDY_EVERY: Duration = Duration::from_millis(200);

/// The one relay of a database (SQLite, one process): how far it deleted
/// what it published (how far it published is in [`RelayState`]).
#[derive(Default)]
struct Single {
    deleted: i64,
    last_tidy: Option<tokio::time::Instant>,
}

impl Single {
    /// When published rows should next be deleted, if any wait.
    fn tidy_at(&self, published: i64) -> Option<tokio::time::Instant> {
        (published > self.deleted).then(|| {
            self.last_tidy
                .map_or_else(tokio::time::Instant::now, |at| at + TIDY_EVERY)
        })
    }

    /// Deletes published rows. A crash before it only means they are
    /// published again, which the bus recognises by event id.
    async fn tidy(&mut self, db: &Db, published: i64) {
        if published <= self.deleted {
            return;
        }
        self.last_tidy = Some(tokio::time::Instant::now());
        match outbox::remove_through(db, published).await {
            Ok(()) => self.deleted = published,
            Err(e) => tracing::warn!(error = %e, "could not delete relayed outbox rows"),
        }
    }
}

/// Read a batch after what was published, publish it; deletes come later,
/// together, so the outbox costs no write per event on the way out.
async fn drain_single(
    db: &Db,
    bus: &BusClient,
    state: &RelayState,
    single: &mut Single,
) -> Result<(), Failure> {
    loop {
        let batch = outbox::peek_after(db, state.published_through(), BATCH).await?;
        let Some(last) = batch.last().map(|p| p.seq) else {
            return Ok(());
        };
        let rejected = publish(db, bus, &batch).await?;
        count_published(db, &batch, &rejected);
        set_aside(db, &batch, rejected).await?;
        state.published_in_order(last);
        tracing::debug!(events = batch.len(), "relayed");
        if single
            .tidy_at(last)
            .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            single.tidy(db, last).await;
        }
    }
}

/// Replicas share the outbox (PostgreSQL): each claims rows the others do
/// not hold, publishes them, and deletes them in the claiming transaction.
/// That commit runs in the background while the next batch is claimed (its
/// rows stay locked, so skipped, until then): waiting writes answer once
/// their event is published, not after a second fsync. A failure anywhere
/// rolls back, and the resends are deduplicated by id.
async fn drain_shared(
    db: &Db,
    bus: &BusClient,
    state: &RelayState,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let mut committing = None;
    let drained = drain_shared_batches(db, bus, state, shutdown, &mut committing).await;
    if let Some(previous) = committing {
        let _ = previous.await;
    }
    drained
}

async fn drain_shared_batches(
    db: &Db,
    bus: &BusClient,
    state: &RelayState,
    shutdown: &CancellationToken,
    committing: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), Failure> {
    loop {
        let mut tx = db.pool().begin().await?;
        let batch = outbox::claim(&mut tx, BATCH).await?;
        if batch.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let rejected = publish(db, bus, &batch).await?;
        count_published(db, &batch, &rejected);
        // Writes waiting on these may answer now; the delete can follow.
        state.published_shared(&batch);
        tracing::debug!(events = batch.len(), publish = ?started.elapsed(), "relayed");
        set_aside(db, &batch, rejected).await?;
        // One delete in flight at a time.
        if let Some(previous) = committing.take() {
            let _ = previous.await;
        }
        *committing = Some(tokio::spawn(async move {
            let deleted = async {
                outbox::remove_claimed(&mut tx, &batch).await?;
                tx.commit().await?;
                Ok::<_, Failure>(())
            };
            if let Err(e) = deleted.await {
                tracing::warn!(error = %e, "could not delete relayed outbox rows; they will be sent again");
            }
        }));
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}
