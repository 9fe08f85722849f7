use blog_bus::Handler;
use blog_events::{CommentUpdated, Envelope, Event};
use blog_storage::{StorageError, Tx, outbox};

use crate::store;

/// Applies moderation decisions: a `CommentModerated` that moves a comment's
/// status forward updates it and announces the change as `CommentUpdated`.
pub struct Moderated;

impl Handler for Moderated {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<bool, StorageError> {
        let Event::CommentModerated(moderated) = event else {
            return Ok(false);
        };
        let Some(comment) = store::find(tx, &moderated.id).await? else {
            // Not a comment of ours: a course peer's, or from another
            // deployment. Nothing here to update.
            tracing::warn!(comment = %moderated.id, "moderation for an unknown comment ignored");
            return Ok(false);
        };
        if moderated.status.rank() <= comment.status.rank() {
            return Ok(false);
        }
        store::set_status(tx, &moderated.id, moderated.status).await?;
        let updated = Envelope::new(Event::CommentUpdated(CommentUpdated {
            id: moderated.id.clone(),
            post_id: comment.post_id,
            content: comment.content,
            status: moderated.status,
        }));
        outbox::push(tx, &updated).await?;
        Ok(true)
    }
}
