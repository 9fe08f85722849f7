use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use blog_events::{CommentCreated, CommentUpdated, PostCreated, Status};
use blog_storage::{Db, Row, StorageError, Tx};
use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The read model: tables in the service's database, and the answer to
/// `GET /posts` kept serialised until the next change.
pub struct ReadModel {
    db: Db,
    /// Bumped after every committed change; a cached answer is good only for
    /// the generation it was built in.
    generation: AtomicU64,
    cached: Mutex<Option<(u64, Bytes)>>,
}

impl ReadModel {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            generation: AtomicU64::new(0),
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// `GET /posts`: every post that has arrived, in order, with its comments.
    pub async fn posts_json(&self) -> Result<Bytes, StorageError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(cached) = self.cached.lock()
            && let Some((built, body)) = cached.as_ref()
            && *built == generation
        {
            return Ok(body.clone());
        }
        let body = Bytes::from(Value::Object(self.load_all().await?).to_string());
        if let Ok(mut cached) = self.cached.lock() {
            // Only a model built from this generation or a later one is kept.
            if cached
                .as_ref()
                .is_none_or(|(built, _)| *built <= generation)
            {
                *cached = Some((generation, body.clone()));
            }
        }
        Ok(body)
    }

    async fn load_all(&self) -> Result<Map<String, Value>, StorageError> {
        let mut tx = self.db.pool().begin().await?;
        let posts = sqlx::query("SELECT id, title FROM posts ORDER BY pos")
            .fetch_all(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id, post_id, content, status FROM comments ORDER BY pos")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut comments: HashMap<String, Vec<Value>> = HashMap::new();
        for row in rows {
            let post_id: String = row.try_get("post_id")?;
            comments
                .entry(post_id)
                .or_default()
                .push(comment_json(&row)?);
        }
        let mut out = Map::new();
        for row in posts {
            let id: String = row.try_get("id")?;
            let title: String = row.try_get("title")?;
            let comments = comments.remove(&id).unwrap_or_default();
            out.insert(
                id.clone(),
                json!({"id": id, "title": title, "comments": comments}),
            );
        }
        Ok(out)
    }

    /// One post with its comments, or `None` until its `PostCreated` arrived.
    pub async fn post_json(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let Some(post) = sqlx::query("SELECT id, title FROM posts WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT id, post_id, content, status FROM comments WHERE post_id = $1 ORDER BY pos",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        let comments = rows
            .iter()
            .map(comment_json)
            .collect::<Result<Vec<_>, _>>()?;
        let title: String = post.try_get("title")?;
        Ok(Some(
            json!({"id": id, "title": title, "comments": comments}),
        ))
    }
}

fn comment_json(row: &blog_storage::AnyRow) -> Result<Value, StorageError> {
    let id: String = row.try_get("id")?;
    let content: String = row.try_get("content")?;
    let status: String = row.try_get("status")?;
    Ok(json!({"id": id, "content": content, "status": status}))
}

pub(crate) async fn add_post(tx: &mut Tx, post: &PostCreated) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO posts (id, title) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(&post.id)
        .bind(&post.title)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn add_comment(tx: &mut Tx, comment: &CommentCreated) -> Result<(), StorageError> {
    upsert_comment(
        tx,
        &comment.id,
        &comment.post_id,
        &comment.content,
        comment.status,
        false,
    )
    .await
}

pub(crate) async fn update_comment(
    tx: &mut Tx,
    comment: &CommentUpdated,
) -> Result<(), StorageError> {
    upsert_comment(
        tx,
        &comment.id,
        &comment.post_id,
        &comment.content,
        comment.status,
        true,
    )
    .await
}

/// Inserts a comment, or updates the stored one when the incoming status has
/// come further (or as far, for an update, which may also change content).
async fn upsert_comment(
    tx: &mut Tx,
    id: &str,
    post_id: &str,
    content: &str,
    status: Status,
    is_update: bool,
) -> Result<(), StorageError> {
    let sql = if is_update {
        "INSERT INTO comments (id, post_id, content, status, rank) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status, rank = excluded.rank
         WHERE excluded.rank >= comments.rank"
    } else {
        "INSERT INTO comments (id, post_id, content, status, rank) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status, rank = excluded.rank
         WHERE excluded.rank > comments.rank"
    };
    sqlx::query(sql)
        .bind(id)
        .bind(post_id)
        .bind(content)
        .bind(status.as_str())
        .bind(status.rank())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
