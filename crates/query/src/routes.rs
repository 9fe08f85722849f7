use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blog_events::Status;
use blog_kit::{ApiError, CancellationToken, ErrorBody};
use futures_util::stream::{self, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{OpenApi, ToSchema};

use crate::ReadModel;
use crate::frame::Encoding;
use crate::live::{Live, LiveUpdate};

#[derive(Clone)]
pub struct AppState {
    pub model: Arc<ReadModel>,
    pub live: Live,
    pub stop: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts", get(posts))
        .route("/posts/live", get(live))
        .with_state(state)
}

/// The routes of [`router`], described.
#[derive(OpenApi)]
#[openapi(paths(posts, live))]
struct QueryApi;

/// The description of [`router`].
pub fn api() -> utoipa::openapi::OpenApi {
    QueryApi::openapi()
}

// What the read model renders (`crate::model`), described.

/// A post with its comments, as the read model shows it.
#[derive(ToSchema)]
#[allow(dead_code)] // a description of what the model renders
pub struct QueryPost {
    id: String,
    title: String,
    /// Oldest first.
    comments: Vec<QueryComment>,
}

/// A comment as the read model shows it, with its moderation status.
#[derive(ToSchema)]
#[allow(dead_code)] // a description of what the model renders
pub struct QueryComment {
    id: String,
    content: String,
    status: Status,
}

/// Every post with its comments, keyed by post id, in creation order:
/// `{"<id>":{"id","title","comments":[{"id","content","status"}]}}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a description of what the model renders
pub struct QueryPosts(std::collections::HashMap<String, QueryPost>);

/// `GET /posts` → `{"<id>":{"id","title","comments":[...]}}` in creation order.
#[utoipa::path(
    get,
    path = "/posts",
    operation_id = "queryPosts",
    responses(
        (status = 200, description = "Every post with its comments.", body = QueryPosts),
        (status = 503, description = "Storage failed.", body = ErrorBody)
    )
)]
async fn posts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.model.posts_json().await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// How often an idle live stream gets a comment line, so that proxies and
/// browsers keep it open.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// `GET /posts/live`: a snapshot, then each change as it happens.
/// Every stream sends the same shared frames; beyond the configured number
/// of streams the answer is 503.
///
/// Server-sent events: first `event: snapshot` with `data:` the same object
/// as `GET /posts` (QueryPosts); then `event: post` with `data:` a new post
/// or one whose changes are unknown (QueryPost, which replaces the client's
/// copy; a new post goes last), and `event: comment` with `data:` one new or
/// changed comment with its post's id (`{"id","postId","content","status"}`:
/// it replaces the comment of that id, or goes last in its post); and a
/// keep-alive comment line every 15 s. A `snapshot` may come again at any
/// time (after changes were missed): it replaces everything. With
/// `Accept-Encoding: gzip` the stream is gzip-encoded, each frame deflated
/// once for every such stream.
#[utoipa::path(
    get,
    path = "/posts/live",
    operation_id = "livePosts",
    responses(
        (
            status = 200,
            description = "An endless `text/event-stream`: `snapshot`, then `post` and `comment` events.",
            content_type = "text/event-stream",
            body = String
        ),
        (status = 503, description = "Too many live streams are open.", body = ErrorBody)
    )
)]
async fn live(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(permit) = state.live.admit() else {
        return Err(ApiError::Busy(
            "too many live streams are open; try again later".into(),
        ));
    };
    // Each frame is deflated once for all the streams that take gzip.
    let encoding = Encoding::accepted(&headers);
    // Subscribe before reading the snapshot, so no change falls in between.
    let updates = state.live.subscribe();
    let first = state.live.snapshot().await?;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keep_alive.reset();
    let rest = stream::unfold(
        (updates, state, keep_alive, permit),
        move |(mut updates, state, mut keep_alive, permit)| async move {
            let frame = tokio::select! {
                () = state.stop.cancelled() => return None,
                _ = keep_alive.tick() => state.live.keep_alive(),
                next = updates.recv() => match next {
                    Ok(LiveUpdate::Frame(frame)) => frame,
                    // Fell behind, or changes were missed: start over from a snapshot.
                    Ok(LiveUpdate::Resync) | Err(RecvError::Lagged(_)) => {
                        match state.live.snapshot().await {
                            Ok(frame) => frame,
                            Err(e) => {
                                tracing::warn!(error = %e, "live stream ends: snapshot failed");
                                return None;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((
                Ok::<_, Infallible>(frame.bytes(encoding)),
                (updates, state, keep_alive, permit),
            ))
        },
    );
    // The preamble (empty but for gzip) and the shared snapshot, not copied.
    let opening = [encoding.preamble(), first.bytes(encoding)]
        .into_iter()
        .filter(|bytes| !bytes.is_empty())
        .map(Ok);
    let events = stream::iter(opening).chain(rest);
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::VARY, "accept-encoding"),
        ],
        Body::from_stream(events),
    )
        .into_response();
    if encoding == Encoding::Gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    Ok(response)
}
