use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use blog_bus::{PUBLISH_WAIT, RelayState};
use blog_events::{Envelope, Event, PostCreated};
use blog_kit::ApiError;
use blog_kit::error::JsonBody;
use blog_storage::Db;
use serde_json::{Map, Value, json};

use crate::{PostTitle, store};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub relay: Arc<RelayState>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts/create", post(create))
        .route("/posts", get(list))
        .with_state(state)
}

/// `POST /posts/create {"title"}` → 201 `{"id","title"}`. The post and its
/// `PostCreated` commit together; the answer waits (a bounded time) until the
/// relay has put the event on the bus, so whatever a client does with the
/// post's id comes after its `PostCreated` there.
async fn create(
    State(AppState { db, relay }): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let title = PostTitle::from_body(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let event = Envelope::new(Event::PostCreated(PostCreated {
        id: id.clone(),
        title: title.as_str().to_owned(),
    }));
    if let Some(seq) = store::create(&db, &id, &title, &event).await? {
        relay.wait_published(&db, seq, PUBLISH_WAIT).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "title": title.as_str()})),
    ))
}

/// `GET /posts` → `{"<id>":{"id","title"}}` in creation order.
async fn list(State(AppState { db, .. }): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut posts = Map::new();
    for (id, title) in store::all(&db).await? {
        posts.insert(id.clone(), json!({"id": id, "title": title}));
    }
    Ok(Json(Value::Object(posts)))
}
