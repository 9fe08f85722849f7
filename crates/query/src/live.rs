//! Live streams (`GET /posts/live`): server-sent events, rendered once for
//! every listener. Each frame is built once as shared bytes and handed to
//! every stream as it is, so an idle stream costs its connection and little
//! else, and a burst of changes reaches each listener as one frame.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use blog_kit::CancellationToken;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use crate::ReadModel;
use crate::frame::Frame;
use crate::model::Change;

/// What changed, for live streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// This post: it is new, or what changed in it is unknown.
    Post(String),
    /// This comment of this post.
    Comment { post: String, comment: String },
    /// Changes may have been missed: every stream starts over.
    Everything,
}

impl From<&Change<'_>> for Changed {
    fn from(change: &Change<'_>) -> Self {
        match change {
            Change::Post(post) => Changed::Post((*post).to_owned()),
            Change::Comment { post, comment } => Changed::Comment {
                post: (*post).to_owned(),
                comment: (*comment).to_owned(),
            },
            Change::Everything => Changed::Everything,
        }
    }
}

/// What a live stream is told.
#[derive(Clone, Debug)]
pub enum LiveUpdate {
    /// SSE events, ready to send: the changed posts and comments, rendered.
    Frame(Arc<Frame>),
    /// Changes may have been missed: send a fresh snapshot.
    Resync,
}

/// Changes are gathered at least this long before they go out, so a
/// stream wakes at most this often however fast comments arrive ...
const GATHER: Duration = Duration::from_millis(50);
/// ... and frames are spaced so that all the open streams together are
/// written to at most this often per second: each write wakes a stream's
/// connection and costs a system call, whatever it carries. With 2,000
/// streams open that is a frame every 500 ms at most. Bytes are not the
/// measure: what a frame carries grows with its window (as many changes
/// arrive in a longer one), so spacing frames by their bytes only made them
/// rarer and larger, until each was a burst that took the cores for a
/// second; evenly spaced frames carry the same changes in small steps.
const FAN_OUT_WRITES_PER_SECOND: u64 = 4_000;
/// The longest a change waits to go out.
const LONGEST_GATHER: Duration = Duration::from_secs(10);

/// A comment line that keeps idle connections (and proxies) open.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// Appends one SSE event. The JSON the model renders is one line, but a
/// line break in `data` would end the event early, so each line is framed.
fn push_event(frame: &mut BytesMut, event: &str, data: &[u8]) {
    frame.put_slice(b"event: ");
    frame.put_slice(event.as_bytes());
    frame.put_u8(b'\n');
    for line in data.split(|b| *b == b'\n') {
        frame.put_slice(b"data: ");
        frame.put_slice(line);
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
}

/// A snapshot frame and the body it was built from.
type Snapshot = (Bytes, Arc<Frame>);

/// Fan-out of changed posts to live streams.
#[derive(Clone)]
pub struct Live {
    model: Arc<ReadModel>,
    posts: broadcast::Sender<LiveUpdate>,
    /// Open streams, at most as many as the permits.
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// The last snapshot frame, with the body it was built from: many
    /// streams opening at once share one copy.
    snapshot: Arc<tokio::sync::Mutex<Option<Snapshot>>>,
    keep_alive: Arc<Frame>,
}

impl Live {
    pub fn new(model: Arc<ReadModel>, max_streams: usize) -> Self {
        // Few frames are kept: each may be large, the channel holds the
        // last ones until they are overwritten, and a stream that falls
        // this far behind is better served by a fresh snapshot.
        let (posts, _) = broadcast::channel(16);
        Self {
            model,
            posts,
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
            max_streams: max_streams.max(1),
            snapshot: Arc::new(tokio::sync::Mutex::new(None)),
            keep_alive: Frame::new(KEEP_ALIVE),
        }
    }

    /// How long to gather the next changes (see [`window`]).
    fn gather(&self, last_sent: Option<tokio::time::Instant>) -> Duration {
        window(self.open(), last_sent.map(|sent| sent.elapsed()))
    }

    /// The keep-alive line, as a frame.
    pub fn keep_alive(&self) -> Arc<Frame> {
        self.keep_alive.clone()
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// A place for one more stream, if there is room.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveUpdate> {
        self.posts.subscribe()
    }

    /// Every post, as one `snapshot` event.
    pub async fn snapshot(&self) -> Result<Arc<Frame>, blog_storage::StorageError> {
        let body = self.model.posts_json().await?;
        // Held while the frame is built: streams opening at once wait for
        // the one copy (and its gzip form, made off the async workers).
        let mut cached = self.snapshot.lock().await;
        if let Some((of, frame)) = cached.as_ref()
            && of.as_ptr() == body.as_ptr()
            && of.len() == body.len()
        {
            return Ok(frame.clone());
        }
        let mut frame = BytesMut::with_capacity(body.len() + 32);
        push_event(&mut frame, "snapshot", &body);
        let frame = Frame::deflated(frame.freeze()).await;
        *cached = Some((body, frame.clone()));
        Ok(frame)
    }

    /// Renders changed posts and hands them to every listener, gathering
    /// what changes meanwhile into one frame (see [`Live::gather`]).
    pub async fn render(
        self,
        mut changed: UnboundedReceiver<Changed>,
        shutdown: CancellationToken,
    ) {
        let mut last_sent: Option<tokio::time::Instant> = None;
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                next = changed.recv() => match next {
                    Some(change) => change,
                    None => return,
                },
            };
            let mut gathered = Gathered::default();
            gathered.take(first);
            // Taken once the window closes, not as they come: one wakeup
            // per frame rather than one per change.
            let deadline = tokio::time::Instant::now() + self.gather(last_sent);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {}
            }
            while let Ok(change) = changed.try_recv() {
                gathered.take(change);
            }
            if self.posts.receiver_count() == 0 {
                continue;
            }
            if gathered.everything {
                let _ = self.posts.send(LiveUpdate::Resync);
                continue;
            }
            let frame = self.frame(gathered).await;
            last_sent = Some(tokio::time::Instant::now());
            if !frame.is_empty() {
                let _ = self
                    .posts
                    .send(LiveUpdate::Frame(Frame::deflated(frame.freeze()).await));
            }
        }
    }
}

/// How long to gather the next changes, given the streams open and how
/// long ago the last frame went out: at least [`GATHER`], and long enough
/// that frames to every open stream stay within
/// [`FAN_OUT_WRITES_PER_SECOND`]. A change after a quiet spell goes out
/// after the shortest window.
fn window(open: usize, since_last: Option<Duration>) -> Duration {
    let spacing =
        Duration::from_micros((open as u64).saturating_mul(1_000_000) / FAN_OUT_WRITES_PER_SECOND)
            .min(LONGEST_GATHER);
    let due_in = since_last.map_or(Duration::ZERO, |ago| spacing.saturating_sub(ago));
    due_in.max(GATHER)
}

/// The changes gathered for one frame.
#[derive(Default)]
struct Gathered {
    /// Posts sent whole (with all their comments).
    posts: BTreeSet<String>,
    /// Comments sent alone, by id, with their post's id.
    comments: BTreeMap<String, String>,
    everything: bool,
}

impl Gathered {
    fn take(&mut self, change: Changed) {
        match change {
            Changed::Post(id) => {
                self.posts.insert(id);
            }
            Changed::Comment { post, comment } => {
                self.comments.insert(comment, post);
            }
            Changed::Everything => self.everything = true,
        }
    }
}

impl Live {
    /// The frame for what was gathered: `post` events for the posts sent
    /// whole, then a `comment` event for each changed comment of the other
    /// posts. A comment alone is a few hundred bytes where its post with
    /// every comment may be many kilobytes; but a post most of whose
    /// comments changed goes whole, which is then the smaller.
    async fn frame(&self, mut gathered: Gathered) -> BytesMut {
        let mut by_post: BTreeMap<&str, usize> = BTreeMap::new();
        for post in gathered.comments.values() {
            if !gathered.posts.contains(post) {
                *by_post.entry(post.as_str()).or_default() += 1;
            }
        }
        if !by_post.is_empty() {
            let posts: Vec<&str> = by_post.keys().copied().collect();
            match self.model.comment_counts(&posts).await {
                Ok(counts) => {
                    let whole: Vec<String> = by_post
                        .iter()
                        .filter(|(post, changed)| {
                            *changed * 2 >= counts.get(**post).copied().unwrap_or(0)
                        })
                        .map(|(post, _)| (*post).to_owned())
                        .collect();
                    gathered.posts.extend(whole);
                }
                // Comment by comment, then: never larger than needed.
                Err(e) => tracing::warn!(error = %e, "could not count comments"),
            }
        }
        let mut frame = BytesMut::new();
        let whole: Vec<&str> = gathered.posts.iter().map(String::as_str).collect();
        // A post not stored yet is left out: its comments go with it later.
        match self.model.some_posts_json(&whole).await {
            Ok(posts) => {
                for post in posts {
                    push_event(&mut frame, "post", &post);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not render changed posts"),
        }
        let comments: Vec<&str> = gathered
            .comments
            .iter()
            .filter(|(_, post)| !gathered.posts.contains(*post))
            .map(|(comment, _)| comment.as_str())
            .collect();
        if !comments.is_empty() {
            match self.model.comments_json(&comments).await {
                Ok(rendered) => {
                    for comment in rendered {
                        push_event(&mut frame, "comment", &comment);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not render changed comments"),
            }
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_spaced_by_the_streams_they_wake() {
        // No frame yet, or few streams: the shortest window.
        assert_eq!(window(2000, None), GATHER);
        assert_eq!(window(100, Some(Duration::ZERO)), GATHER);
        // 2,000 streams at 4,000 writes/s: a frame every 500 ms, whatever
        // it carries.
        assert_eq!(
            window(2000, Some(Duration::ZERO)),
            Duration::from_millis(500)
        );
        assert_eq!(
            window(2000, Some(Duration::from_millis(150))),
            Duration::from_millis(350)
        );
        // Long after the last frame: the shortest window again.
        assert_eq!(window(2000, Some(Duration::from_secs(1))), GATHER);
        // Never longer than the longest.
        assert_eq!(window(1_000_000, Some(Duration::ZERO)), LONGEST_GATHER);
    }

    #[test]
    fn frames_each_line_of_the_data() {
        let mut frame = BytesMut::new();
        push_event(&mut frame, "post", b"{\"a\":1}");
        push_event(&mut frame, "x", b"one\ntwo");
        assert_eq!(
            &frame[..],
            b"event: post\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\n\n"
        );
    }
}
