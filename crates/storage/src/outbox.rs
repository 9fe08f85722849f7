//! The transactional outbox: an event is written in the same transaction as
//! the state change it announces, and relayed to the bus after commit.

use blog_events::Envelope;
use sqlx::Row;

use crate::{Db, StorageError, Tx};

/// One event waiting to be relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub event_id: String,
    pub body: String,
}

fn to_pending(row: &sqlx::any::AnyRow) -> Result<Pending, StorageError> {
    Ok(Pending {
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
        body: row.try_get("body")?,
    })
}

/// Queues `envelope` in `tx`; it is published only if `tx` commits.
pub async fn push(tx: &mut Tx, envelope: &Envelope) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO outbox (event_id, body) VALUES ($1, $2)")
        .bind(envelope.id.clone().unwrap_or_default())
        .bind(envelope.to_json())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The oldest events waiting, in commit order.
pub async fn peek(db: &Db, limit: i64) -> Result<Vec<Pending>, StorageError> {
    let rows = sqlx::query("SELECT seq, event_id, body FROM outbox ORDER BY seq LIMIT $1")
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(to_pending).collect()
}

/// Forgets an event the bus has acknowledged.
pub async fn remove(db: &Db, seq: i64) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM outbox WHERE seq = $1")
        .bind(seq)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// How many events wait to be relayed.
pub async fn len(db: &Db) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(db.pool())
        .await?)
}

/// Claims up to `limit` of the oldest events in `tx`, skipping rows another
/// replica's relay holds (PostgreSQL), so several relays share the outbox.
pub async fn claim(tx: &mut Tx, limit: i64) -> Result<Vec<Pending>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, event_id, body FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(to_pending).collect()
}

/// Forgets a claimed event once the bus acknowledged it; final at commit.
pub async fn remove_claimed(tx: &mut Tx, seq: i64) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM outbox WHERE seq = $1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
