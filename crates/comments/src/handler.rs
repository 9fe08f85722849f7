use blog_bus::Handler;
use blog_events::{CommentModerated, CommentUpdated, Envelope, Event};
use blog_storage::{StorageError, Tx, outbox};

use crate::store;

/// Applies moderation decisions: a `CommentModerated` that moves a comment's
/// status forward updates it and announces the change as `CommentUpdated`.
pub struct Moderated;

impl Handler for Moderated {
    type Event = CommentModerated;

    async fn apply(
        &self,
        tx: &mut Tx,
        moderated: &CommentModerated,
        _seq: Option<i64>,
    ) -> Result<(), StorageError> {
        if moderated.status.rank() == 0 {
            return Ok(()); // "pending" decides nothing
        }
        // The first decision wins, atomically, across replicas.
        let Some(comment) = store::decide(tx, &moderated.id, moderated.status).await? else {
            if store::find(tx, &moderated.id).await?.is_none() {
                // Not a comment of ours: a course peer's, or from another
                // deployment. Nothing here to update.
                tracing::warn!(comment = %moderated.id, "moderation for an unknown comment ignored");
            }
            return Ok(());
        };
        let updated = Envelope::new(Event::CommentUpdated(CommentUpdated {
            id: moderated.id.clone(),
            post_id: comment.post_id,
            content: comment.content,
            status: moderated.status,
        }));
        outbox::push(tx, &updated).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blog_bus::{Consumer, Outcome};
    use blog_events::{CommentCreated, CommentModerated, Status};
    use blog_storage::{Db, StorageConfig};

    fn moderated(id: &str, status: Status) -> Envelope {
        Envelope::new(Event::CommentModerated(CommentModerated {
            id: id.into(),
            post_id: "p".into(),
            status,
            content: "ignored: comments keeps its own content".into(),
        }))
    }

    #[tokio::test]
    async fn a_decision_moves_the_status_forward_once_and_announces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageConfig::Sqlite {
            data_dir: dir.path().to_owned(),
        };
        let db = Db::open(&storage, "comments", &crate::MIGRATIONS)
            .await
            .expect("db");
        let created = Envelope::new(Event::CommentCreated(CommentCreated {
            id: "c".into(),
            content: "hello".into(),
            post_id: "p".into(),
            status: Status::Pending,
        }));
        store::create(&db, "c", "p", "hello", &created)
            .await
            .expect("create");
        let consumer = std::sync::Arc::new(Consumer::new(db.clone(), Moderated));

        assert_eq!(
            consumer
                .receive(moderated("c", Status::Approved).clone())
                .await
                .expect("ok"),
            Outcome::Applied
        );
        // A contradicting late decision, and one for an unknown comment, change nothing.
        consumer
            .receive(moderated("c", Status::Rejected).clone())
            .await
            .expect("ok");
        consumer
            .receive(moderated("unknown", Status::Rejected).clone())
            .await
            .expect("ok");

        let comments = store::list(&db, "p").await.expect("list");
        let comments: Vec<serde_json::Value> =
            serde_json::from_str(&comments.0).expect("a JSON array");
        assert_eq!(comments.len(), 1);
        assert_eq!(comments[0]["status"], "approved");
        let outbox = blog_storage::outbox::peek(&db, 10).await.expect("outbox");
        let types: Vec<_> = outbox
            .iter()
            .map(|p| Envelope::from_slice(p.body.as_bytes()).expect("valid"))
            .map(|e| (e.type_name, e.event))
            .collect();
        assert_eq!(types.len(), 2);
        assert_eq!(types[0].0, "CommentCreated");
        assert_eq!(
            types[1].1,
            Some(Event::CommentUpdated(CommentUpdated {
                id: "c".into(),
                post_id: "p".into(),
                content: "hello".into(),
                status: Status::Approved,
            }))
        );
    }
}
