use blog_bus::Handler;
use blog_events::{CommentCreated, CommentModerated, Envelope, Event};
use blog_storage::{StorageError, Tx, outbox};

use crate::Policy;

/// Moderates each created comment exactly once.
pub struct Moderator {
    policy: Policy,
}

impl Moderator {
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }
}

impl Handler for Moderator {
    type Event = CommentCreated;

    async fn apply(
        &self,
        tx: &mut Tx,
        created: &CommentCreated,
        _seq: Option<i64>,
    ) -> Result<(), StorageError> {
        let status = self.policy.decide(&created.content);
        let decided = sqlx::query(
            "INSERT INTO decisions (comment_id, status) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&created.id)
        .bind(status.as_str())
        .execute(&mut **tx)
        .await?;
        if decided.rows_affected() == 0 {
            return Ok(());
        }
        let moderated = Envelope::new(Event::CommentModerated(CommentModerated {
            id: created.id.clone(),
            post_id: created.post_id.clone(),
            status,
            content: created.content.clone(),
        }));
        outbox::push(tx, &moderated).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blog_bus::{Consumer, Outcome};
    use blog_events::{CommentCreated, Status};
    use blog_storage::{Db, StorageConfig};

    async fn consumer(dir: &tempfile::TempDir) -> (Db, std::sync::Arc<Consumer<Moderator>>) {
        let storage = StorageConfig::Sqlite {
            data_dir: dir.path().to_owned(),
        };
        let db = Db::open(&storage, "moderation", &crate::MIGRATIONS)
            .await
            .expect("db");
        (
            db.clone(),
            std::sync::Arc::new(Consumer::new(db, Moderator::new(Policy::default()))),
        )
    }

    fn created(id: &str, content: &str) -> Envelope {
        Envelope::from_value(
            Event::CommentCreated(CommentCreated {
                id: id.into(),
                content: content.into(),
                post_id: "p".into(),
                status: Status::Pending,
            })
            .into_value(),
        )
        .expect("valid")
    }

    trait IntoValue {
        fn into_value(self) -> serde_json::Value;
    }
    impl IntoValue for Event {
        fn into_value(self) -> serde_json::Value {
            serde_json::to_value(self).expect("serialisable")
        }
    }

    #[tokio::test]
    async fn moderates_each_comment_once_by_the_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, consumer) = consumer(&dir).await;
        assert_eq!(
            consumer
                .receive(created("c1", "an orange"))
                .await
                .expect("ok"),
            Outcome::Applied
        );
        assert_eq!(
            consumer
                .receive(created("c1", "an orange"))
                .await
                .expect("ok"),
            Outcome::Duplicate
        );
        // Same comment under another event id (a resend by a peer): still once.
        let mut resent = created("c1", "an orange");
        resent.id = Some("another-event-id".into());
        assert_eq!(
            consumer.receive(resent.clone()).await.expect("ok"),
            Outcome::Applied
        );
        assert_eq!(
            consumer.receive(created("c2", "fine")).await.expect("ok"),
            Outcome::Applied
        );

        let pending = blog_storage::outbox::peek(&db, 10).await.expect("outbox");
        let decisions: Vec<(String, String)> = pending
            .iter()
            .map(|p| {
                let event = Envelope::from_slice(p.body.as_bytes())
                    .expect("valid")
                    .event;
                match event {
                    Some(Event::CommentModerated(m)) => (m.id, m.status.to_string()),
                    other => panic!("unexpected {other:?}"),
                }
            })
            .collect();
        assert_eq!(
            decisions,
            [
                ("c1".into(), "rejected".into()),
                ("c2".into(), "approved".into())
            ]
        );
    }

    #[tokio::test]
    async fn ignores_events_it_does_not_consume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, consumer) = consumer(&dir).await;
        let post = Envelope::new(Event::PostCreated(blog_events::PostCreated {
            id: "p".into(),
            title: "t".into(),
        }));
        assert_eq!(
            consumer.receive(post.clone()).await.expect("ok"),
            Outcome::Ignored
        );
        assert_eq!(blog_storage::outbox::len(&db).await.expect("len"), 0);
        // Not even recorded as seen: nothing was written.
        let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(seen, 0);
    }
}
