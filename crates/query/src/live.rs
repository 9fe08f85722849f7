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
/// ... and longer when frames times streams would write more than this per
/// second in all: the fan-out to every open page must not take the CPU the
/// writes themselves need. Under heavy writes with many pages open, pages
/// are updated less often, with every change gathered, never dropped.
const FAN_OUT_BYTES_PER_SECOND: u64 = 16 * 1024 * 1024;
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
    fn gather(&self, last: Option<&LastFrame>) -> Duration {
        window(
            self.open(),
            last.map(|last| (last.bytes, last.sent.elapsed())),
        )
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
        let mut last: Option<LastFrame> = None;
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
            let deadline = tokio::time::Instant::now() + self.gather(last.as_ref());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    next = changed.recv() => match next {
                        Some(change) => gathered.take(change),
                        None => break,
                    },
                }
            }
            if self.posts.receiver_count() == 0 {
                continue;
            }
            if gathered.everything {
                let _ = self.posts.send(LiveUpdate::Resync);
                continue;
            }
            let frame = self.frame(gathered).await;
            last = Some(LastFrame {
                bytes: frame.len(),
                sent: tokio::time::Instant::now(),
            });
            if !frame.is_empty() {
                let _ = self
                    .posts
                    .send(LiveUpdate::Frame(Frame::deflated(frame.freeze()).await));
            }
        }
    }
}

/// How long to gather the next changes, given the streams open and the
/// last frame (its size, and how long ago it went out): long enough that a
/// frame the size of the last one, sent to every open stream, stays within
/// the fan-out budget. After an idle spell it starts over, whatever the
/// last burst cost.
fn window(open: usize, last: Option<(usize, Duration)>) -> Duration {
    let Some((bytes, ago)) = last else {
        return GATHER;
    };
    if ago > LONGEST_GATHER {
        return GATHER;
    }
    let bytes = (open as u64).saturating_mul(bytes as u64);
    let budget = Duration::from_micros(bytes.saturating_mul(1_000_000) / FAN_OUT_BYTES_PER_SECOND);
    budget.clamp(GATHER, LONGEST_GATHER)
}

/// What the last frame cost, for the next window (see [`window`]).
struct LastFrame {
    bytes: usize,
    sent: tokio::time::Instant,
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
    fn the_window_keeps_the_fan_out_within_budget_and_starts_over_when_idle() {
        let just = Some(Duration::from_millis(10));
        assert_eq!(window(2000, None), GATHER);
        // 2,000 × 100 bytes is far within 16 MiB/s: the shortest window.
        assert_eq!(window(2000, just.map(|ago| (100, ago))), GATHER);
        // 2,000 × 16 KiB = 32 MiB: two seconds' budget.
        assert_eq!(
            window(2000, just.map(|ago| (16 * 1024, ago))),
            Duration::from_micros(1_953_125)
        );
        // A whole snapshot to every stream: never longer than the longest.
        assert_eq!(window(2000, just.map(|ago| (1 << 20, ago))), LONGEST_GATHER);
        // The same frame long ago: what comes now starts over.
        let idle = LONGEST_GATHER + Duration::from_secs(1);
        assert_eq!(window(2000, Some((1 << 20, idle))), GATHER);
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
