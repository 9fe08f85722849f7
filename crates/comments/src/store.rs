use blog_events::{Envelope, Status};
use blog_storage::{AnyRow, Db, Row, StorageError, Tx, Written, outbox};
use serde::Serialize;

/// A comment as the course API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Comment {
    /// A UUIDv7.
    pub id: String,
    pub content: String,
    pub status: Status,
}

/// A comment with the post it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredComment {
    pub post_id: String,
    pub content: String,
    pub status: Status,
}

fn status(row: &AnyRow) -> Result<Status, sqlx::Error> {
    let raw: String = row.try_get("status")?;
    Status::parse(&raw).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {raw:?}").into()))
}

/// Stores a new pending comment and queues its event; returns all of the
/// post's comments as committed, and the event's outbox row.
pub async fn create(
    db: &Db,
    id: &str,
    post_id: &str,
    content: &str,
    event: &Envelope,
) -> Result<Written<Vec<Comment>>, StorageError> {
    let (id, post_id, content, event) = (
        id.to_owned(),
        post_id.to_owned(),
        content.to_owned(),
        event.clone(),
    );
    // A post's comments commit (and reach the outbox) in creation order.
    let key = post_id.clone();
    db.write_in_order(&key, move |tx| {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO comments (id, post_id, content, status) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(&post_id)
            .bind(&content)
            .bind(Status::Pending.as_str())
            .execute(&mut **tx)
            .await?;
            outbox::push(tx, &event).await?;
            of_post(tx, &post_id).await
        })
    })
    .await
}

async fn of_post(tx: &mut Tx, post_id: &str) -> Result<Vec<Comment>, StorageError> {
    let rows =
        sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY pos")
            .bind(post_id)
            .fetch_all(&mut **tx)
            .await?;
    rows.iter().map(to_comment).collect()
}

fn to_comment(row: &AnyRow) -> Result<Comment, StorageError> {
    Ok(Comment {
        id: row.try_get("id")?,
        content: row.try_get("content")?,
        status: status(row)?,
    })
}

/// The post's comments in creation order.
pub async fn list(db: &Db, post_id: &str) -> Result<Vec<Comment>, StorageError> {
    let rows =
        sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY pos")
            .bind(post_id)
            .fetch_all(db.pool())
            .await?;
    rows.iter().map(to_comment).collect()
}

fn stored(row: &AnyRow, status: Status) -> Result<StoredComment, StorageError> {
    Ok(StoredComment {
        post_id: row.try_get("post_id")?,
        content: row.try_get("content")?,
        status,
    })
}

pub async fn find(tx: &mut Tx, id: &str) -> Result<Option<StoredComment>, StorageError> {
    let row = sqlx::query("SELECT post_id, content, status FROM comments WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|row| stored(&row, status(&row)?)).transpose()
}

/// Moves a pending comment to its decided status and returns it. `None`
/// when it was already decided (the first decision wins, atomically, across
/// replicas) or is unknown.
pub async fn decide(
    tx: &mut Tx,
    id: &str,
    status: Status,
) -> Result<Option<StoredComment>, StorageError> {
    let row = sqlx::query(
        "UPDATE comments SET status = $1 WHERE id = $2 AND status = $3 RETURNING post_id, content",
    )
    .bind(status.as_str())
    .bind(id)
    .bind(Status::Pending.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| stored(&row, status)).transpose()
}
