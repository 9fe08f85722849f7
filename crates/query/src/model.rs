use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use blog_events::{CommentCreated, CommentUpdated, PostCreated};
use blog_storage::{Db, Row, StorageError, Tx, placeholders};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

/// Comments are listed in creation order on the bus when known (the seq of
/// their `CommentCreated`), else in order of arrival.
///
/// The read model: tables in the service's database, and the answer to
/// `GET /posts` kept serialised per post. A change re-renders only the post
/// it touched; a read assembles the cached pieces.
pub struct ReadModel {
    db: Db,
    /// What changed since the view was last brought up to date.
    marks: Mutex<Marks>,
    /// The whole answer while nothing is marked.
    body: Mutex<Option<Bytes>>,
    /// One rebuild at a time.
    view: tokio::sync::Mutex<View>,
}

#[derive(Default)]
struct Marks {
    /// Anything may have changed (start, a lost notification).
    all: bool,
    /// A post arrived: the list of posts changed.
    order: bool,
    posts: HashSet<String>,
}

impl Marks {
    fn is_empty(&self) -> bool {
        !self.all && !self.order && self.posts.is_empty()
    }
}

#[derive(Default)]
struct View {
    /// Post ids in creation order.
    order: Vec<String>,
    /// Each post rendered as JSON.
    rendered: HashMap<String, Bytes>,
}

/// Posts rendered per query when many changed at once.
const RENDER_CHUNK: usize = 500;

/// What a change touched.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// A new post (the list of posts changes).
    Post(&'a str),
    /// One comment of a post.
    Comment { post: &'a str, comment: &'a str },
    /// Unknown: rebuild everything.
    Everything,
}

impl<'a> Change<'a> {
    /// How replicas tell each other (PostgreSQL `NOTIFY` payload):
    /// `post:<id>`, or `comment:<length of the post id>:<post id><comment id>`
    /// (ids may hold any character, a colon too).
    pub fn notification(&self) -> String {
        match self {
            Change::Post(id) => format!("post:{id}"),
            Change::Comment { post, comment } => format!("comment:{}:{post}{comment}", post.len()),
            Change::Everything => String::new(),
        }
    }

    pub fn from_notification(payload: &'a str) -> Self {
        match payload.split_once(':') {
            Some(("post", id)) => Change::Post(id),
            Some(("comment", ids)) => ids
                .split_once(':')
                .and_then(|(len, ids)| {
                    let at = len.parse::<usize>().ok()?;
                    let (post, comment) = (ids.get(..at)?, ids.get(at..)?);
                    Some(Change::Comment { post, comment })
                })
                // `comment:<post id>` from a replica of an earlier version:
                // which comment is unknown, so the whole post is sent again.
                .unwrap_or(Change::Post(ids)),
            _ => Change::Everything,
        }
    }
}

impl ReadModel {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            marks: Mutex::new(Marks {
                all: true,
                ..Marks::default()
            }),
            body: Mutex::new(None),
            view: tokio::sync::Mutex::new(View::default()),
        }
    }

    /// Records a committed change; the next read renders what it touched.
    pub(crate) fn changed(&self, change: Change<'_>) {
        let Ok(mut marks) = self.marks.lock() else {
            return;
        };
        match change {
            Change::Post(id) => {
                marks.order = true;
                marks.posts.insert(id.to_owned());
            }
            Change::Comment { post, .. } => {
                marks.posts.insert(post.to_owned());
            }
            Change::Everything => marks.all = true,
        }
    }

    fn take_marks(&self) -> Marks {
        self.marks
            .lock()
            .map(|mut marks| std::mem::take(&mut *marks))
            .unwrap_or(Marks {
                all: true,
                ..Marks::default()
            })
    }

    fn fresh_body(&self) -> Option<Bytes> {
        let unmarked = self.marks.lock().ok()?.is_empty();
        if !unmarked {
            return None;
        }
        self.body.lock().ok()?.clone()
    }

    /// `GET /posts`: every post that has arrived, in order, with its comments.
    pub async fn posts_json(&self) -> Result<Bytes, StorageError> {
        if let Some(body) = self.fresh_body() {
            return Ok(body);
        }
        let mut view = self.view.lock().await;
        // Taken before reading: a change committed after this point marks
        // again, so the next read sees it.
        let marks = self.take_marks();
        if marks.is_empty()
            && let Some(body) = self.body.lock().ok().and_then(|b| b.clone())
        {
            return Ok(body);
        }
        // Should this request stop half-way (a client that hangs up), what
        // it took is marked again for the next read, so nothing stays stale.
        let unfinished = Unfinished(self);
        self.bring_up_to_date(&mut view, &marks).await?;
        std::mem::forget(unfinished);
        let body = assemble(&view);
        if let Ok(mut cached) = self.body.lock() {
            *cached = Some(body.clone());
        }
        Ok(body)
    }

    async fn bring_up_to_date(&self, view: &mut View, marks: &Marks) -> Result<(), StorageError> {
        if marks.all {
            *view = self.load_all().await?;
            return Ok(());
        }
        if marks.order {
            view.order = sqlx::query_scalar("SELECT id FROM posts ORDER BY pos")
                .fetch_all(self.db.pool())
                .await?;
        }
        let ids: Vec<&str> = marks.posts.iter().map(String::as_str).collect();
        for chunk in ids.chunks(RENDER_CHUNK) {
            let mut rendered: HashMap<String, Bytes> =
                self.render(chunk).await?.into_iter().collect();
            for id in chunk {
                match rendered.remove(*id) {
                    Some(post) => view.rendered.insert((*id).to_owned(), post),
                    // A comment whose post has not arrived yet.
                    None => view.rendered.remove(*id),
                };
            }
        }
        Ok(())
    }

    /// The posts `ids` rendered, in two queries whatever their number (a
    /// busy second changes thousands of posts).
    async fn render(&self, ids: &[&str]) -> Result<Vec<(String, Bytes)>, StorageError> {
        let list = placeholders(ids.len());
        let mut conn = self.db.pool().acquire().await?;
        let mut posts = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, title FROM posts WHERE id IN ({list})"
        )));
        let mut comments = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, post_id, content, status FROM comments WHERE post_id IN ({list})
             ORDER BY COALESCE(created_seq, 9223372036854775807), pos"
        )));
        for id in ids {
            posts = posts.bind(*id);
            comments = comments.bind(*id);
        }
        let posts = posts.fetch_all(&mut *conn).await?;
        let comments = comments.fetch_all(&mut *conn).await?;
        rendered(posts, comments)
    }

    async fn load_all(&self) -> Result<View, StorageError> {
        let mut conn = self.db.pool().acquire().await?;
        let posts = sqlx::query("SELECT id, title FROM posts ORDER BY pos")
            .fetch_all(&mut *conn)
            .await?;
        let comments = sqlx::query(
            "SELECT id, post_id, content, status FROM comments
             ORDER BY COALESCE(created_seq, 9223372036854775807), pos",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut view = View::default();
        for (id, post) in rendered(posts, comments)? {
            view.order.push(id.clone());
            view.rendered.insert(id, post);
        }
        Ok(view)
    }

    /// The comments `ids` as they are now, each with its post's id
    /// (`{"id","postId","content","status"}`), in the order the post lists
    /// them. A comment not stored is left out.
    pub async fn comments_json(&self, ids: &[&str]) -> Result<Vec<Bytes>, StorageError> {
        let rows = self
            .rows_where_in(
                "SELECT id, post_id, content, status FROM comments WHERE id IN ({list})
                 ORDER BY COALESCE(created_seq, 9223372036854775807), pos",
                ids,
            )
            .await?;
        rows.iter()
            .map(|row| {
                let mut comment = comment_json(row)?;
                comment["postId"] = Value::String(row.try_get("post_id")?);
                Ok(Bytes::from(comment.to_string()))
            })
            .collect()
    }

    /// How many comments each of the posts `ids` has (a post without any,
    /// or not stored, is left out).
    pub async fn comment_counts(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, usize>, StorageError> {
        let rows = self
            .rows_where_in(
                "SELECT post_id, COUNT(*) AS comments FROM comments WHERE post_id IN ({list})
                 GROUP BY post_id",
                ids,
            )
            .await?;
        rows.iter()
            .map(|row| {
                let comments: i64 = row.try_get("comments")?;
                Ok((
                    row.try_get("post_id")?,
                    usize::try_from(comments).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// The rows of `sql` with `{list}` standing for `ids`: one query per
    /// [`RENDER_CHUNK`] of them (a busy second changes thousands).
    async fn rows_where_in(
        &self,
        sql: &str,
        ids: &[&str],
    ) -> Result<Vec<blog_storage::AnyRow>, StorageError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(RENDER_CHUNK) {
            let mut query = sqlx::query(AssertSqlSafe(
                sql.replace("{list}", &placeholders(chunk.len())),
            ));
            for id in chunk {
                query = query.bind(*id);
            }
            rows.extend(query.fetch_all(self.db.pool()).await?);
        }
        Ok(rows)
    }

    /// The posts `ids` with their comments, in the order of `ids`; a post
    /// whose `PostCreated` has not arrived is left out. Two queries per
    /// [`RENDER_CHUNK`] of them.
    pub async fn some_posts_json(&self, ids: &[&str]) -> Result<Vec<Bytes>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(RENDER_CHUNK) {
            let mut rendered: HashMap<String, Bytes> =
                self.render(chunk).await?.into_iter().collect();
            out.extend(chunk.iter().filter_map(|id| rendered.remove(*id)));
        }
        Ok(out)
    }
}

/// Posts (`id`, `title`) and their comments (`post_id` and the comment,
/// in order), as each post's JSON, in the posts' order.
fn rendered(
    posts: Vec<blog_storage::AnyRow>,
    comments: Vec<blog_storage::AnyRow>,
) -> Result<Vec<(String, Bytes)>, StorageError> {
    let mut by_post: HashMap<String, Vec<Value>> = HashMap::new();
    for row in comments {
        let post_id: String = row.try_get("post_id")?;
        by_post
            .entry(post_id)
            .or_default()
            .push(comment_json(&row)?);
    }
    posts
        .into_iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let title: String = row.try_get("title")?;
            let comments = by_post.remove(&id).unwrap_or_default();
            let post = json!({"id": id, "title": title, "comments": comments});
            Ok((id, Bytes::from(post.to_string())))
        })
        .collect()
}

/// Marks everything changed when dropped: a rebuild that did not finish
/// (an error, a cancelled request) leaves the next read to start over.
struct Unfinished<'a>(&'a ReadModel);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.changed(Change::Everything);
    }
}

/// `{"<id>":<post>,...}` from the rendered posts, in order.
fn assemble(view: &View) -> Bytes {
    let size: usize = view
        .order
        .iter()
        .map(|id| id.len() + 4 + view.rendered.get(id).map_or(0, Bytes::len))
        .sum();
    let mut out = BytesMut::with_capacity(size + 2);
    out.put_u8(b'{');
    let mut first = true;
    for id in &view.order {
        let Some(post) = view.rendered.get(id) else {
            continue;
        };
        if !first {
            out.put_u8(b',');
        }
        first = false;
        // Post ids are validated event ids; serde escapes what JSON needs.
        out.put_slice(Value::String(id.clone()).to_string().as_bytes());
        out.put_u8(b':');
        out.put_slice(post);
    }
    out.put_u8(b'}');
    out.freeze()
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

/// What an event says of a comment.
pub(crate) enum CommentEvent<'a> {
    /// A `CommentCreated`, with its place in the bus's log (which orders
    /// comments), when the bus gave one.
    Created(&'a CommentCreated, Option<i64>),
    Updated(&'a CommentUpdated),
}

/// A `CommentCreated` wins over what is stored only with a status that has
/// come further (it may arrive after an update).
const CREATED: &str = "INSERT INTO comments (id, post_id, content, status, rank, created_seq)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET
       content = CASE WHEN excluded.rank > comments.rank THEN excluded.content ELSE comments.content END,
       status = CASE WHEN excluded.rank > comments.rank THEN excluded.status ELSE comments.status END,
       rank = CASE WHEN excluded.rank > comments.rank THEN excluded.rank ELSE comments.rank END,
       created_seq = COALESCE(comments.created_seq, excluded.created_seq)";

/// A `CommentUpdated` wins with a status that has come further, or with
/// the same status (a content change). A status never moves sideways:
/// approved and rejected are both final.
const UPDATED: &str = "INSERT INTO comments (id, post_id, content, status, rank, created_seq)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status, rank = excluded.rank
     WHERE excluded.rank > comments.rank
        OR (excluded.rank = comments.rank AND excluded.status = comments.status)";

/// Stores what an event says of a comment, in one statement, under the
/// rule for its kind of event.
pub(crate) async fn store_comment(tx: &mut Tx, said: CommentEvent<'_>) -> Result<(), StorageError> {
    let (rule, id, post_id, content, status, created_seq) = match said {
        CommentEvent::Created(c, seq) => (CREATED, &c.id, &c.post_id, &c.content, c.status, seq),
        CommentEvent::Updated(c) => (UPDATED, &c.id, &c.post_id, &c.content, c.status, None),
    };
    sqlx::query(rule)
        .bind(id)
        .bind(post_id)
        .bind(content)
        .bind(status.as_str())
        .bind(status.rank())
        .bind(created_seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn notifications_carry_both_ids_whatever_they_hold() {
        for change in [
            Change::Post("p:1"),
            Change::Comment {
                post: "p:1",
                comment: "c:2",
            },
            Change::Comment {
                post: "é",
                comment: "",
            },
            Change::Everything,
        ] {
            let payload = change.notification();
            assert_eq!(Change::from_notification(&payload), change, "{payload}");
        }
    }

    #[test]
    fn a_comment_notification_of_an_earlier_version_resends_its_post() {
        assert_eq!(Change::from_notification("comment:p1"), Change::Post("p1"));
        assert_eq!(
            Change::from_notification("comment:9:p1"),
            Change::Post("9:p1")
        );
        assert_eq!(Change::from_notification("what"), Change::Everything);
    }
}
