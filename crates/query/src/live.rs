use std::sync::Arc;

use blog_kit::CancellationToken;
use tokio::sync::broadcast;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::ReadModel;

/// What a live stream is told.
#[derive(Clone, Debug)]
pub enum LiveUpdate {
    /// One post, rendered, after it or one of its comments changed.
    Post(Arc<str>),
    /// Changes may have been missed: send a fresh snapshot.
    Resync,
}

/// The post id that stands for "anything may have changed".
pub const EVERYTHING: &str = "";

/// Fan-out of changed posts to live streams: each change is rendered once,
/// whatever the number of listeners.
#[derive(Clone)]
pub struct Live {
    model: Arc<ReadModel>,
    posts: broadcast::Sender<LiveUpdate>,
}

impl Live {
    pub fn new(model: Arc<ReadModel>) -> Self {
        let (posts, _) = broadcast::channel(1024);
        Self { model, posts }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveUpdate> {
        self.posts.subscribe()
    }

    /// Renders each changed post and hands it to every listener.
    pub async fn render(self, mut changed: UnboundedReceiver<String>, shutdown: CancellationToken) {
        loop {
            let post_id = tokio::select! {
                () = shutdown.cancelled() => return,
                next = changed.recv() => match next {
                    Some(id) => id,
                    None => return,
                },
            };
            if self.posts.receiver_count() == 0 {
                continue;
            }
            if post_id == EVERYTHING {
                let _ = self.posts.send(LiveUpdate::Resync);
                continue;
            }
            match self.model.post_json(&post_id).await {
                Ok(Some(post)) => {
                    let post = Arc::from(String::from_utf8_lossy(&post));
                    let _ = self.posts.send(LiveUpdate::Post(post));
                }
                Ok(None) => {} // a comment whose post has not arrived yet
                Err(e) => tracing::warn!(error = %e, "could not render a changed post"),
            }
        }
    }
}
