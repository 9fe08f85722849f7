use std::sync::Arc;

use blog_bus::{Handler, Reset};
use blog_events::Event;
use blog_storage::{Engine, StorageError, Tx};
use tokio::sync::mpsc::UnboundedSender;

use crate::ReadModel;
use crate::live::Changed;
use crate::model::Change;
use crate::model::{CommentEvent, add_post, store_comment};

/// How the replicas of query hear of a change to the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// One replica (SQLite): it tells its own caches and streams.
    InProcess,
    /// Replicas share the database (PostgreSQL): a `NOTIFY` in the applying
    /// transaction tells every replica, this one included.
    ThroughDatabase,
}

impl Announce {
    pub fn for_engine(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => Announce::InProcess,
            Engine::Postgres => Announce::ThroughDatabase,
        }
    }
}

/// Projects events into the read model, in any order.
pub struct Projector {
    model: Arc<ReadModel>,
    /// Ids of posts whose view changed, for the live stream.
    changed: UnboundedSender<Changed>,
    announce: Announce,
}

/// The PostgreSQL channel on which query replicas hear of changes.
pub const CHANNEL: &str = "blog_query_changed";

impl Projector {
    pub fn new(
        model: Arc<ReadModel>,
        changed: UnboundedSender<Changed>,
        announce: Announce,
    ) -> Self {
        Self {
            model,
            changed,
            announce,
        }
    }
}

fn change_of(event: &Event) -> Option<Change<'_>> {
    match event {
        Event::PostCreated(post) => Some(Change::Post(&post.id)),
        Event::CommentCreated(comment) => Some(Change::Comment {
            post: &comment.post_id,
            comment: &comment.id,
        }),
        Event::CommentUpdated(comment) => Some(Change::Comment {
            post: &comment.post_id,
            comment: &comment.id,
        }),
        Event::CommentModerated(_) => None,
    }
}

impl Handler for Projector {
    type Event = Event;
    const CONSUMES: &'static [&'static str] = &["PostCreated", "CommentCreated", "CommentUpdated"];

    async fn apply(
        &self,
        tx: &mut Tx,
        event: &Event,
        seq: Option<i64>,
    ) -> Result<(), StorageError> {
        match event {
            Event::PostCreated(post) => add_post(tx, post).await?,
            Event::CommentCreated(comment) => {
                store_comment(tx, CommentEvent::Created(comment, seq)).await?
            }
            Event::CommentUpdated(comment) => {
                store_comment(tx, CommentEvent::Updated(comment)).await?
            }
            Event::CommentModerated(_) => {}
        }
        if self.announce == Announce::ThroughDatabase
            && let Some(change) = change_of(event)
        {
            // Delivered to every listening replica when (and only if) this commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(change.notification())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn applied(&self, event: &Event) {
        if self.announce == Announce::ThroughDatabase {
            return; // the notification reaches this replica too
        }
        let Some(change) = change_of(event) else {
            return;
        };
        let live = Changed::from(&change);
        self.model.changed(change);
        // The receiver lives as long as the service; after shutdown there is
        // no one left to tell.
        let _ = self.changed.send(live);
    }
}

/// How query starts over for a rebuild from the log: its tables emptied in
/// the rebuild's first transaction; once that commits, caches dropped and
/// live streams (here and, through PostgreSQL, on every replica) resent.
pub fn reset(
    model: Arc<ReadModel>,
    changed: UnboundedSender<Changed>,
    announce: Announce,
) -> Reset {
    Reset {
        clear: Arc::new(move |tx: &mut Tx| Box::pin(clear(tx, announce))),
        cleared: Arc::new(move || {
            model.changed(Change::Everything);
            let _ = changed.send(Changed::Everything);
        }),
    }
}

async fn clear(tx: &mut Tx, announce: Announce) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM comments")
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM posts").execute(&mut **tx).await?;
    if announce == Announce::ThroughDatabase {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(Change::Everything.notification())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blog_bus::Consumer;
    use blog_events::{CommentCreated, CommentUpdated, Envelope, PostCreated, Status};
    use blog_storage::{Db, StorageConfig};
    use serde_json::{Value, json};

    async fn project(dir: &tempfile::TempDir, events: &[Event]) -> Value {
        let storage = StorageConfig::Sqlite {
            data_dir: dir.path().to_owned(),
        };
        let db = Db::open(&storage, "query", &crate::MIGRATIONS)
            .await
            .expect("db");
        let model = Arc::new(ReadModel::new(db.clone()));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer = Arc::new(Consumer::new(
            db,
            Projector::new(model.clone(), tx, Announce::InProcess),
        ));
        for event in events {
            // Course-format events: no id, deduplicated by natural key.
            let envelope =
                Envelope::from_value(serde_json::to_value(event).expect("json")).expect("valid");
            consumer.receive(envelope.clone()).await.expect("applied");
        }
        serde_json::from_slice(&model.posts_json().await.expect("posts")).expect("json")
    }

    fn events() -> Vec<Event> {
        vec![
            Event::PostCreated(PostCreated {
                id: "p".into(),
                title: "T".into(),
            }),
            Event::CommentCreated(CommentCreated {
                id: "a".into(),
                content: "one".into(),
                post_id: "p".into(),
                status: Status::Pending,
            }),
            Event::CommentCreated(CommentCreated {
                id: "b".into(),
                content: "two".into(),
                post_id: "p".into(),
                status: Status::Pending,
            }),
            Event::CommentUpdated(CommentUpdated {
                id: "a".into(),
                post_id: "p".into(),
                content: "one".into(),
                status: Status::Rejected,
            }),
        ]
    }

    #[tokio::test]
    async fn any_order_and_any_repetition_give_the_in_order_view() {
        let in_order = project(&tempfile::tempdir().expect("dir"), &events()).await;
        assert_eq!(
            in_order,
            json!({"p": {"id": "p", "title": "T", "comments": [
                {"id": "a", "content": "one", "status": "rejected"},
                {"id": "b", "content": "two", "status": "pending"},
            ]}})
        );
        let e = events();
        let orders = [
            vec![e[3].clone(), e[1].clone(), e[2].clone(), e[0].clone()],
            vec![e[1].clone(), e[3].clone(), e[0].clone(), e[2].clone()],
            vec![
                e[0].clone(),
                e[1].clone(),
                e[3].clone(),
                e[1].clone(),
                e[2].clone(),
                e[3].clone(),
            ],
        ];
        for order in orders {
            assert_eq!(
                project(&tempfile::tempdir().expect("dir"), &order).await,
                in_order,
                "{order:?}"
            );
        }
    }
}
