use std::time::Duration;

use blog_kit::CancellationToken;
use blog_storage::{Db, Engine, outbox};

use crate::BusClient;

/// How often the relay looks at the outbox when no commit woke it: a
/// fallback only, since every commit that writes to the outbox wakes it.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Relays committed outbox events to the bus until `shutdown`, in commit
/// order. An event leaves the outbox only after the bus acknowledged it, so a
/// crash at any point leads to a resend, which the bus and every consumer
/// recognise by the event id.
pub async fn relay(db: Db, bus: BusClient, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match drain(&db, &bus, &shutdown).await {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = db.outbox_written() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay could not publish");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn drain(db: &Db, bus: &BusClient, shutdown: &CancellationToken) -> Result<(), Failure> {
    match db.engine() {
        Engine::Sqlite => drain_single(db, bus, shutdown).await,
        Engine::Postgres => drain_shared(db, bus, shutdown).await,
    }
}

/// One relay per database (SQLite, one process): read, publish, delete,
/// without holding the write lock while the bus answers.
async fn drain_single(
    db: &Db,
    bus: &BusClient,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    loop {
        let batch = outbox::peek(db, 64).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for pending in batch {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            bus.publish(&pending.event_id, &pending.body).await?;
            outbox::remove(db, pending.seq).await?;
            tracing::debug!(event_id = %pending.event_id, "relayed");
        }
    }
}

/// Replicas share the outbox (PostgreSQL): each claims rows the others do
/// not hold, and its deletes commit only with the whole batch published. A
/// failure mid-batch rolls back, and the resends are deduplicated by id.
async fn drain_shared(
    db: &Db,
    bus: &BusClient,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    loop {
        let mut tx = db.begin().await?;
        let batch = outbox::claim(&mut tx, 64).await?;
        if batch.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        for pending in &batch {
            bus.publish(&pending.event_id, &pending.body).await?;
            outbox::remove_claimed(&mut tx, pending.seq).await?;
        }
        tx.commit().await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}
