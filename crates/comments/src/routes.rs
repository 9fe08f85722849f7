use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use blog_bus::{PUBLISH_WAIT, RelayState};
use blog_events::{CommentCreated, Envelope, Event, Status};
use blog_kit::ApiError;
use blog_kit::error::JsonBody;
use blog_storage::Db;

use crate::store::{self, Comment};
use crate::{CommentContent, PostId};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub relay: Arc<RelayState>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts/{id}/comments", get(list).post(create))
        .with_state(state)
}

fn post_id(raw: &str) -> Result<PostId, ApiError> {
    PostId::parse(raw).map_err(|e| ApiError::Invalid(vec![e]))
}

/// `POST /posts/:id/comments {"content"}` → 201 with all of the post's
/// comments, the new one pending. The comment and its `CommentCreated`
/// commit together; the answer waits (a bounded time) until the event is on
/// the bus, so an event caused by this comment comes after it there.
async fn create(
    State(AppState { db, relay }): State<AppState>,
    Path(raw_post_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Vec<Comment>>), ApiError> {
    let post_id = post_id(&raw_post_id)?;
    let content = CommentContent::from_body(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let event = Envelope::new(Event::CommentCreated(CommentCreated {
        id: id.clone(),
        content: content.as_str().to_owned(),
        post_id: post_id.as_str().to_owned(),
        status: Status::Pending,
    }));
    let written = store::create(&db, &id, post_id.as_str(), content.as_str(), &event).await?;
    if let Some(seq) = written.outbox {
        relay.wait_published(&db, seq, PUBLISH_WAIT).await;
    }
    Ok((StatusCode::CREATED, Json(written.value)))
}

/// `GET /posts/:id/comments` → the post's comments, `[]` when none.
async fn list(
    State(AppState { db, .. }): State<AppState>,
    Path(raw_post_id): Path<String>,
) -> Result<Json<Vec<Comment>>, ApiError> {
    let post_id = post_id(&raw_post_id)?;
    Ok(Json(store::list(&db, post_id.as_str()).await?))
}
