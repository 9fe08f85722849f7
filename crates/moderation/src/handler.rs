use blog_bus::Handler;
use blog_events::{CommentModerated, Envelope, Event};
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
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<bool, StorageError> {
        let Event::CommentCreated(created) = event else {
            return Ok(false);
        };
        let status = self.policy.decide(&created.content);
        let decided = sqlx::query(
            "INSERT INTO decisions (comment_id, status) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&created.id)
        .bind(status.as_str())
        .execute(&mut **tx)
        .await?;
        if decided.rows_affected() == 0 {
            return Ok(false);
        }
        let moderated = Envelope::new(Event::CommentModerated(CommentModerated {
            id: created.id.clone(),
            post_id: created.post_id.clone(),
            status,
            content: created.content.clone(),
        }));
        outbox::push(tx, &moderated).await?;
        Ok(true)
    }
}
