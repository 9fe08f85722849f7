//! The transactional outbox: an event is written in the same transaction as
//! the state change it announces, and relayed to the bus after commit.

use blog_events::Envelope;

use crate::{Db, StorageError, Tx};

/// One event waiting to be relayed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    pub seq: i64,
    pub event_id: String,
    /// The event's type; empty on rows queued by an older version, whose
    /// body still says it.
    pub event_type: String,
    pub body: String,
}

impl Pending {
    /// The event's type as a bounded label: a known type by name, anything
    /// else as one.
    pub fn type_label(&self) -> &'static str {
        blog_events::type_label(&self.event_type)
    }
}

/// Queues `envelope` in `tx`; it is published only if `tx` commits. It
/// carries the transaction's cause unless it names its own correlation. The
/// transaction remembers it, so the writer wakes the relay on commit and the
/// caller learns the row's sequence number.
pub async fn push(tx: &mut Tx, envelope: &Envelope) -> Result<(), StorageError> {
    let body = match (&envelope.correlation_id, tx.cause()) {
        (None, Some(cause)) => envelope.clone().caused_by(Some(cause.clone())).to_json(),
        _ => envelope.to_json(),
    };
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, event_type, body) VALUES ($1, $2, $3) RETURNING seq",
    )
    .bind(envelope.id.clone().unwrap_or_default())
    .bind(envelope.type_name.as_str())
    .bind(body)
    .fetch_one(&mut **tx)
    .await?;
    tx.wrote_outbox(seq);
    Ok(())
}

/// The oldest events waiting, in commit order.
pub async fn peek(db: &Db, limit: i64) -> Result<Vec<Pending>, StorageError> {
    peek_after(db, 0, limit).await
}

/// The oldest events waiting after `seq` (those up to it are published
/// and only wait to be deleted), in commit order.
pub async fn peek_after(db: &Db, seq: i64, limit: i64) -> Result<Vec<Pending>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT seq, event_id, event_type, body FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(seq)
    .bind(limit)
    .fetch_all(db.pool())
    .await?)
}

/// Forgets every event up to `seq`, all acknowledged by the bus (one relay
/// per database publishes in sequence order).
pub async fn remove_through(db: &Db, seq: i64) -> Result<(), StorageError> {
    db.execute(sqlx::query("DELETE FROM outbox WHERE seq <= $1").bind(seq))
        .await?;
    Ok(())
}

/// Whether outbox row `seq` still waits to be relayed.
pub async fn waiting(db: &Db, seq: i64) -> Result<bool, StorageError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT seq FROM outbox WHERE seq = $1")
        .bind(seq)
        .fetch_optional(db.pool())
        .await?;
    Ok(found.is_some())
}

/// How many events wait to be relayed.
pub async fn len(db: &Db) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(db.pool())
        .await?)
}

/// Claims up to `limit` of the oldest events in `tx`, skipping rows another
/// replica's relay holds (PostgreSQL), so several relays share the outbox.
pub async fn claim(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    limit: i64,
) -> Result<Vec<Pending>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT seq, event_id, event_type, body FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Forgets claimed events once the bus acknowledged them; final at commit.
pub async fn remove_claimed(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    batch: &[Pending],
) -> Result<(), StorageError> {
    if batch.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM outbox WHERE seq IN ({})",
        crate::placeholders(batch.len())
    );
    let mut delete = sqlx::query(sqlx::AssertSqlSafe(sql));
    for pending in batch {
        delete = delete.bind(pending.seq);
    }
    delete.execute(&mut **tx).await?;
    Ok(())
}
