use blog_events::{Envelope, Status};
use blog_storage::{AnyRow, Db, Engine, Row, StorageError, Tx, Written, outbox};
use serde::Serialize;

/// A comment as the course API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Comment {
    /// A UUIDv7.
    pub id: String,
    pub content: String,
    pub status: Status,
}

/// A post's comments as the course shows them: a JSON array of
/// [`Comment`]s (`{"id","content","status"}`) in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentsJson(pub String);

/// The statement that renders a post's [`CommentsJson`] in the database,
/// one value for the whole list. Every comment's 201 carries its post's
/// list, read in the write's transaction: decoded row by row here, it made
/// each write slower as its post's comments grew (on SQLite, in the one
/// writer every write waits for).
fn list_statement(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => {
            "SELECT json_group_array(json_object('id', id, 'content', content, 'status', status) \
             ORDER BY pos) AS list FROM comments WHERE post_id = $1"
        }
        Engine::Postgres => {
            "SELECT COALESCE(json_agg(json_build_object('id', id, 'content', content, \
             'status', status) ORDER BY pos), '[]')::text AS list FROM comments WHERE post_id = $1"
        }
    }
}

fn comments_json(row: &AnyRow) -> Result<CommentsJson, StorageError> {
    Ok(CommentsJson(row.try_get("list")?))
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
) -> Result<Written<CommentsJson>, StorageError> {
    let list = list_statement(db.engine());
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
            let row = sqlx::query(list)
                .bind(&post_id)
                .fetch_one(&mut **tx)
                .await?;
            comments_json(&row)
        })
    })
    .await
}

/// The post's comments in creation order.
pub async fn list(db: &Db, post_id: &str) -> Result<CommentsJson, StorageError> {
    let row = sqlx::query(list_statement(db.engine()))
        .bind(post_id)
        .fetch_one(db.pool())
        .await?;
    comments_json(&row)
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
