use blog_events::Envelope;
use blog_storage::{Db, Row, StorageError, outbox};

use crate::PostTitle;

/// Stores a post and queues its event, in one transaction.
pub async fn create(
    db: &Db,
    id: &str,
    title: &PostTitle,
    event: &Envelope,
) -> Result<(), StorageError> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO posts (id, title) VALUES ($1, $2)")
        .bind(id)
        .bind(title.as_str())
        .execute(&mut *tx)
        .await?;
    outbox::push(&mut tx, event).await?;
    db.commit(tx, true).await
}

/// Every post as `(id, title)`, in creation order.
pub async fn all(db: &Db) -> Result<Vec<(String, String)>, StorageError> {
    let rows = sqlx::query("SELECT id, title FROM posts ORDER BY pos")
        .fetch_all(db.pool())
        .await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("title")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}
