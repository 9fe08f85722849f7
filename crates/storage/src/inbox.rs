//! The consumer's side: which events were applied, and how far in the bus's
//! sequence this service has come.

use std::collections::HashSet;

use crate::{Db, StorageError, Tx};

/// Records `keys` as applied in `tx`, in one statement; returns those that
/// were not already (the caller applies exactly those, once each).
pub async fn mark_all_processed(
    tx: &mut Tx,
    keys: &[String],
) -> Result<HashSet<String>, StorageError> {
    let mut unique: Vec<&String> = Vec::with_capacity(keys.len());
    let mut seen = HashSet::with_capacity(keys.len());
    for key in keys {
        if seen.insert(key) {
            unique.push(key);
        }
    }
    let mut new = HashSet::with_capacity(unique.len());
    for chunk in unique.chunks(MARK_CHUNK) {
        let values: Vec<String> = (1..=chunk.len()).map(|i| format!("(${i})")).collect();
        let sql = format!(
            "INSERT INTO processed_events (event_key) VALUES {} ON CONFLICT DO NOTHING RETURNING event_key",
            values.join(", ")
        );
        let mut insert = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            insert = insert.bind(key.as_str());
        }
        new.extend(insert.fetch_all(&mut **tx).await?);
    }
    Ok(new)
}

/// Keys recorded per statement, well under every engine's limit on
/// parameters.
const MARK_CHUNK: usize = 500;

/// Moves the catch-up cursor forward to `seq` (never back).
pub async fn advance(tx: &mut Tx, seq: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE consumer_state SET last_seq = $1 WHERE id = 1 AND last_seq < $1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Forgets every event applied and moves the cursor back to the start, in
/// `tx`: with the read model cleared in the same transaction, the log is
/// then applied again from its first event.
pub async fn forget_all(tx: &mut Tx) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM processed_events")
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE consumer_state SET last_seq = 0 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Notes in `tx`, the transaction that clears the read model, that a
/// rebuild has begun and has applied nothing yet.
pub async fn rebuild_begun(tx: &mut Tx) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM rebuild_state")
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO rebuild_state (id, seq) VALUES (1, 0)")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Notes that the running rebuild has applied the log up to `seq`.
pub async fn rebuild_reached(db: &Db, seq: i64) -> Result<(), StorageError> {
    db.execute(sqlx::query("UPDATE rebuild_state SET seq = $1 WHERE id = 1").bind(seq))
        .await?;
    Ok(())
}

/// Notes that the rebuild applied the whole log.
pub async fn rebuild_finished(db: &Db) -> Result<(), StorageError> {
    db.execute(sqlx::query("DELETE FROM rebuild_state")).await?;
    Ok(())
}

/// Where a rebuild that did not finish got to, if one did not.
pub async fn unfinished_rebuild(db: &Db) -> Result<Option<i64>, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT seq FROM rebuild_state WHERE id = 1")
            .fetch_optional(db.pool())
            .await?,
    )
}

/// The highest bus sequence number applied.
pub async fn last_seq(db: &Db) -> Result<i64, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT last_seq FROM consumer_state WHERE id = 1")
            .fetch_one(db.pool())
            .await?,
    )
}

/// Sets aside an event that can never be handled, with why.
pub async fn dead_letter(
    db: &Db,
    bus_seq: i64,
    subject: &str,
    body: &str,
    reason: &str,
) -> Result<(), StorageError> {
    db.execute(
        sqlx::query(
            "INSERT INTO dead_letters (bus_seq, subject, body, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(bus_seq)
        .bind(subject.to_owned())
        .bind(body.to_owned())
        .bind(reason.to_owned()),
    )
    .await?;
    Ok(())
}

/// The subject of a dead letter the bus refused from this service's own
/// outbox (others are the NATS subjects of events it consumes).
pub const OUTBOX_SUBJECT: &str = "outbox";

/// A dead letter, whole: what it takes to send it again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Letter {
    pub id: i64,
    pub bus_seq: i64,
    pub subject: String,
    pub body: String,
}

/// Every dead letter, whole, oldest first.
pub async fn letters(db: &Db) -> Result<Vec<Letter>, StorageError> {
    Ok(
        sqlx::query_as("SELECT id, bus_seq, subject, body FROM dead_letters ORDER BY id")
            .fetch_all(db.pool())
            .await?,
    )
}

/// Forgets dead letter `id`, in `tx` (the one that sent it again).
pub async fn forget_letter(tx: &mut Tx, id: i64) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Notes why dead letter `id` failed again.
pub async fn letter_failed_again(db: &Db, id: i64, reason: &str) -> Result<(), StorageError> {
    db.execute(
        sqlx::query("UPDATE dead_letters SET reason = $1 WHERE id = $2")
            .bind(reason.to_owned())
            .bind(id),
    )
    .await?;
    Ok(())
}

/// The dead letters, oldest first, as `(bus_seq, subject, reason)`.
pub async fn dead_letters(db: &Db) -> Result<Vec<(i64, String, String)>, StorageError> {
    Ok(
        sqlx::query_as("SELECT bus_seq, subject, reason FROM dead_letters ORDER BY id")
            .fetch_all(db.pool())
            .await?,
    )
}
