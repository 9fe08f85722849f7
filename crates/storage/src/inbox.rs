//! The consumer's side: which events were applied, and how far in the bus's
//! sequence this service has come.

use crate::{Db, StorageError, Tx};

/// Records `key` as applied in `tx`. Returns `false` when it already was, in
/// which case the caller must not apply the event again.
pub async fn mark_processed(tx: &mut Tx, key: &str) -> Result<bool, StorageError> {
    let done =
        sqlx::query("INSERT INTO processed_events (event_key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(key)
            .execute(&mut **tx)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves the catch-up cursor forward to `seq` (never back).
pub async fn advance(tx: &mut Tx, seq: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE consumer_state SET last_seq = $1 WHERE id = 1 AND last_seq < $1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The highest bus sequence number applied.
pub async fn last_seq(db: &Db) -> Result<i64, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT last_seq FROM consumer_state WHERE id = 1")
            .fetch_one(db.pool())
            .await?,
    )
}
