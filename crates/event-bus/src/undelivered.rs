//! Dead letters: events a subscriber failed on at every attempt, set aside
//! (per subscriber) so the events behind them go on, listed for an
//! operator, and sent again on request.

use blog_storage::{Db, Row, StorageError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One event set aside for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub id: i64,
    pub subscriber: String,
    pub seq: i64,
    pub attempts: i64,
    pub reason: String,
}

/// Which letters to send again.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub subscriber: Option<String>,
    pub ids: Option<Vec<i64>>,
}

pub async fn set_aside(
    db: &Db,
    subscriber: &str,
    seq: i64,
    attempts: u32,
    reason: &str,
) -> Result<(), StorageError> {
    db.execute(
        sqlx::query(
            "INSERT INTO undelivered (subscriber, seq, attempts, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(subscriber.to_owned())
        .bind(seq)
        .bind(i64::from(attempts))
        .bind(reason.to_owned()),
    )
    .await?;
    Ok(())
}

fn to_letter(row: &blog_storage::AnyRow) -> Result<Letter, sqlx::Error> {
    Ok(Letter {
        id: row.try_get("id")?,
        subscriber: row.try_get("subscriber")?,
        seq: row.try_get("seq")?,
        attempts: row.try_get("attempts")?,
        reason: row.try_get("reason")?,
    })
}

/// Letters set aside (not waiting to be sent again), oldest first.
pub async fn list(db: &Db) -> Result<Vec<Letter>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, subscriber, seq, attempts, reason FROM undelivered WHERE replay = 0 ORDER BY id",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows.iter().map(to_letter).collect::<Result<_, _>>()?)
}

/// Letters an operator asked to send again to `subscriber`, oldest first.
pub async fn to_replay(db: &Db, subscriber: &str) -> Result<Vec<Letter>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, subscriber, seq, attempts, reason FROM undelivered
         WHERE subscriber = $1 AND replay = 1 ORDER BY id",
    )
    .bind(subscriber)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.iter().map(to_letter).collect::<Result<_, _>>()?)
}

/// Marks the selected letters to be sent again; returns how many.
pub async fn replay(db: &Db, selection: Selection) -> Result<u64, StorageError> {
    let written = db
        .write(move |tx| {
            Box::pin(async move {
                let mut marked = 0;
                let ids = match selection.ids {
                    Some(ids) => ids,
                    None => {
                        let rows: Vec<i64> = match &selection.subscriber {
                            Some(s) => sqlx::query_scalar(
                                "SELECT id FROM undelivered WHERE replay = 0 AND subscriber = $1",
                            )
                            .bind(s)
                            .fetch_all(&mut **tx)
                            .await?,
                            None => {
                                sqlx::query_scalar("SELECT id FROM undelivered WHERE replay = 0")
                                    .fetch_all(&mut **tx)
                                    .await?
                            }
                        };
                        rows
                    }
                };
                for id in ids {
                    let done = sqlx::query(
                        "UPDATE undelivered SET replay = 1 WHERE id = $1 AND replay = 0
                         AND ($2 = '' OR subscriber = $2)",
                    )
                    .bind(id)
                    .bind(selection.subscriber.clone().unwrap_or_default())
                    .execute(&mut **tx)
                    .await?;
                    marked += done.rows_affected();
                }
                Ok(marked)
            })
        })
        .await?;
    Ok(written.value)
}

/// The letter was delivered at last: forget it.
pub async fn delivered(db: &Db, id: i64) -> Result<(), StorageError> {
    db.execute(sqlx::query("DELETE FROM undelivered WHERE id = $1").bind(id))
        .await?;
    Ok(())
}

/// Sending it again failed too: set it aside once more.
pub async fn failed_again(
    db: &Db,
    id: i64,
    attempts: u32,
    reason: &str,
) -> Result<(), StorageError> {
    db.execute(
        sqlx::query(
            "UPDATE undelivered SET replay = 0, attempts = attempts + $2, reason = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(i64::from(attempts))
        .bind(reason.to_owned()),
    )
    .await?;
    Ok(())
}

/// How many letters each subscriber has set aside.
pub async fn counts(db: &Db) -> Result<Vec<(String, i64)>, StorageError> {
    let rows = sqlx::query(
        "SELECT subscriber, COUNT(*) AS n FROM undelivered WHERE replay = 0 GROUP BY subscriber",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("subscriber")?, r.try_get("n")?)))
        .collect()
}

/// A dead letter as `GET /dead-letters` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Shown {
    /// Names the letter, for `POST /dead-letters/replay`.
    pub id: i64,
    /// The `/events` URL of the subscriber that could not take it.
    pub subscriber: String,
    /// The event's place in the log.
    pub seq: i64,
    /// The event's type (`null` when the event is no longer in the log).
    #[schema(value_type = Option<String>)]
    pub r#type: Value,
    /// How many answered failures it has had, across replays.
    pub attempts: i64,
    /// The last answer: its status and up to 300 bytes of its body.
    pub reason: String,
    /// The stored event (`null` when it is no longer in the log).
    #[schema(value_type = Option<blog_events::WireEvent>)]
    pub event: Option<Value>,
}

impl Letter {
    /// As `GET /dead-letters` shows it, with the event's type.
    pub fn shown(&self, event: Option<&str>) -> Shown {
        let event: Option<Value> = event.and_then(|body| serde_json::from_str(body).ok());
        Shown {
            id: self.id,
            subscriber: self.subscriber.clone(),
            seq: self.seq,
            r#type: event
                .as_ref()
                .and_then(|e| e.get("type"))
                .cloned()
                .unwrap_or(Value::Null),
            attempts: self.attempts,
            reason: self.reason.clone(),
            event,
        }
    }
}
