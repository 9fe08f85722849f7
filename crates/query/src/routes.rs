use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blog_kit::{ApiError, CancellationToken};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use crate::ReadModel;
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

/// `GET /posts` → `{"<id>":{"id","title","comments":[...]}}` in creation order.
async fn posts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.model.posts_json().await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn snapshot(body: &[u8]) -> SseEvent {
    SseEvent::default()
        .event("snapshot")
        .data(String::from_utf8_lossy(body))
}

/// `GET /posts/live`: a snapshot, then each changed post as it changes.
async fn live(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribe before reading the snapshot, so no change falls in between.
    let updates = state.live.subscribe();
    let first = snapshot(&state.model.posts_json().await?);
    let rest = stream::unfold((updates, state), |(mut updates, state)| async move {
        let next = tokio::select! {
            () = state.stop.cancelled() => return None,
            next = updates.recv() => next,
        };
        let event = match next {
            Ok(LiveUpdate::Post(post)) => SseEvent::default().event("post").data(&*post),
            // Fell behind, or changes were missed: start over from a snapshot.
            Ok(LiveUpdate::Resync) | Err(RecvError::Lagged(_)) => {
                match state.model.posts_json().await {
                    Ok(body) => snapshot(&body),
                    Err(e) => {
                        tracing::warn!(error = %e, "live stream ends: snapshot failed");
                        return None;
                    }
                }
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (updates, state)))
    });
    let events = stream::once(async move { Ok(first) }).chain(rest);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
