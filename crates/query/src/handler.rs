use std::sync::Arc;

use blog_bus::Handler;
use blog_events::Event;
use blog_storage::{StorageError, Tx};
use tokio::sync::mpsc::UnboundedSender;

use crate::ReadModel;
use crate::model::Change;
use crate::model::{add_comment, add_post, update_comment};

/// Projects events into the read model, in any order.
pub struct Projector {
    model: Arc<ReadModel>,
    /// Ids of posts whose view changed, for the live stream.
    changed: UnboundedSender<String>,
    /// Replicas share the database (PostgreSQL): tell all of them through it,
    /// in the transaction, instead of only this process.
    shared: bool,
}

/// The PostgreSQL channel on which query replicas hear of changes.
pub const CHANNEL: &str = "blog_query_changed";

impl Projector {
    pub fn new(model: Arc<ReadModel>, changed: UnboundedSender<String>, shared: bool) -> Self {
        Self {
            model,
            changed,
            shared,
        }
    }
}

fn change_of(event: &Event) -> Option<Change<'_>> {
    match event {
        Event::PostCreated(post) => Some(Change::Post(&post.id)),
        Event::CommentCreated(comment) => Some(Change::Comment(&comment.post_id)),
        Event::CommentUpdated(comment) => Some(Change::Comment(&comment.post_id)),
        Event::CommentModerated(_) => None,
    }
}

impl Handler for Projector {
    const CONSUMES: &'static [&'static str] = &["PostCreated", "CommentCreated", "CommentUpdated"];

    async fn apply(
        &self,
        tx: &mut Tx,
        event: &Event,
        seq: Option<i64>,
    ) -> Result<(), StorageError> {
        match event {
            Event::PostCreated(post) => add_post(tx, post).await?,
            Event::CommentCreated(comment) => add_comment(tx, comment, seq).await?,
            Event::CommentUpdated(comment) => update_comment(tx, comment).await?,
            Event::CommentModerated(_) => {}
        }
        if self.shared
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
        if self.shared {
            return; // the notification reaches this replica too
        }
        let Some(change) = change_of(event) else {
            return;
        };
        let post_id = change.post().unwrap_or_default().to_owned();
        self.model.changed(change);
        // The receiver lives as long as the service; after shutdown there is
        // no one left to tell.
        let _ = self.changed.send(post_id);
    }
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
        let consumer = Arc::new(Consumer::new(db, Projector::new(model.clone(), tx, false)));
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
