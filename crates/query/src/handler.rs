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
