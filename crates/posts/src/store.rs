use blog_events::Envelope;
use blog_storage::{Db, StorageError, outbox};

use crate::PostTitle;

/// Stores a post and queues its event, in one transaction; returns the
/// event's outbox row.
pub async fn create(
    db: &Db,
    id: &str,
    title: &PostTitle,
    event: &Envelope,
) -> Result<Option<i64>, StorageError> {
    let (id, title, event) = (id.to_owned(), title.as_str().to_owned(), event.clone());
    // Posts commit (and reach the outbox) in creation order.
    let written = db
        .write_in_order("posts", move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO posts (id, title) VALUES ($1, $2)")
                    .bind(&id)
                    .bind(&title)
                    .execute(&mut **tx)
                    .await?;
                outbox::push(tx, &event).await
            })
        })
        .await?;
    Ok(written.outbox)
}

/// Every post as `(id, title)`, in creation order.
pub async fn all(db: &Db) -> Result<Vec<(String, String)>, StorageError> {
    Ok(sqlx::query_as("SELECT id, title FROM posts ORDER BY pos")
        .fetch_all(db.pool())
        .await?)
}
