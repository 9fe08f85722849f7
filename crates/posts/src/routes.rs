use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use blog_events::{Envelope, Event, PostCreated};
use blog_kit::ApiError;
use blog_kit::error::JsonBody;
use blog_storage::Db;
use serde_json::{Map, Value, json};

use crate::{PostTitle, store};

pub fn router(db: Arc<Db>) -> Router {
    Router::new()
        .route("/posts/create", post(create))
        .route("/posts", get(list))
        .with_state(db)
}

/// `POST /posts/create {"title"}` → 201 `{"id","title"}`. The post and its
/// `PostCreated` commit together.
async fn create(
    State(db): State<Arc<Db>>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let title = PostTitle::from_body(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let event = Envelope::new(Event::PostCreated(PostCreated {
        id: id.clone(),
        title: title.as_str().to_owned(),
    }));
    store::create(&db, &id, &title, &event).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "title": title.as_str()})),
    ))
}

/// `GET /posts` → `{"<id>":{"id","title"}}` in creation order.
async fn list(State(db): State<Arc<Db>>) -> Result<Json<Value>, ApiError> {
    let mut posts = Map::new();
    for (id, title) in store::all(&db).await? {
        posts.insert(id.clone(), json!({"id": id, "title": title}));
    }
    Ok(Json(Value::Object(posts)))
}
