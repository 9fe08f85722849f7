use std::sync::Arc;

use blog_bus::Handler;
use blog_events::Event;
use blog_storage::{StorageError, Tx};
use tokio::sync::mpsc::UnboundedSender;

use crate::ReadModel;
use crate::model::{add_comment, add_post, update_comment};

/// Projects events into the read model, in any order.
pub struct Projector {
    model: Arc<ReadModel>,
    /// Ids of posts whose view changed, for the live stream.
    changed: UnboundedSender<String>,
}

impl Projector {
    pub fn new(model: Arc<ReadModel>, changed: UnboundedSender<String>) -> Self {
        Self { model, changed }
    }
}

impl Handler for Projector {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<bool, StorageError> {
        match event {
            Event::PostCreated(post) => add_post(tx, post).await?,
            Event::CommentCreated(comment) => add_comment(tx, comment).await?,
            Event::CommentUpdated(comment) => update_comment(tx, comment).await?,
            Event::CommentModerated(_) => {}
        }
        Ok(false)
    }

    fn applied(&self, event: &Event) {
        let post_id = match event {
            Event::PostCreated(post) => &post.id,
            Event::CommentCreated(comment) => &comment.post_id,
            Event::CommentUpdated(comment) => &comment.post_id,
            Event::CommentModerated(_) => return,
        };
        self.model.changed();
        // The receiver lives as long as the service; after shutdown there is
        // no one left to tell.
        let _ = self.changed.send(post_id.clone());
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
        let consumer = Consumer::new(db, Projector::new(model.clone(), tx));
        for event in events {
            // Course-format events: no id, deduplicated by natural key.
            let envelope =
                Envelope::from_value(serde_json::to_value(event).expect("json")).expect("valid");
            consumer.receive(&envelope).await.expect("applied");
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
