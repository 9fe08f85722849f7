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

/// The dead letters, oldest first, as `(bus_seq, subject, reason)`.
pub async fn dead_letters(db: &Db) -> Result<Vec<(i64, String, String)>, StorageError> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT bus_seq, subject, reason FROM dead_letters ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("bus_seq")?,
                r.try_get("subject")?,
                r.try_get("reason")?,
            ))
        })
        .collect()
}
