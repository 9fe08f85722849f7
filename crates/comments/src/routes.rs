use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blog_bus::{PUBLISH_WAIT, RelayState};
use blog_events::{CommentCreated, Envelope, Event, Status};
use blog_kit::error::JsonBody;
use blog_kit::{ApiError, Correlation, ErrorBody};
use blog_storage::Db;
use utoipa::{OpenApi, ToSchema};

use crate::store::{self, Comment, CommentsJson};
use crate::{CommentContent, PostId};

impl IntoResponse for CommentsJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

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

/// The routes of [`router`], described.
#[derive(OpenApi)]
#[openapi(paths(list, create))]
struct CommentsApi;

/// The description of [`router`].
pub fn api() -> utoipa::openapi::OpenApi {
    CommentsApi::openapi()
}

/// A new comment.
#[derive(ToSchema)]
#[allow(dead_code)] // a description: the handler reads the body with `CommentContent`
pub struct NewComment {
    /// Trimmed; not empty; at most 1000 characters; no NUL or control
    /// characters other than tab and line breaks.
    #[schema(min_length = 1, max_length = 1000, example = "Nice post")]
    content: String,
}

/// The post id of the path, valid: a malformed one is a 400 naming `id`
/// (axum would answer a percent-encoded non-UTF-8 id in its own words).
struct PathPostId(PostId);

impl<S: Send + Sync> FromRequestParts<S> for PathPostId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::field(format!("post id: {}", e.body_text()), "id"))?;
        PostId::parse(&raw)
            .map(Self)
            .map_err(|e| ApiError::Invalid(vec![e]))
    }
}

/// `POST /posts/:id/comments {"content"}` → 201 with all of the post's
/// comments, the new one pending. The comment and its `CommentCreated`
/// commit together; the answer waits (a bounded time) until the event is on
/// the bus, so an event caused by this comment comes after it there.
#[utoipa::path(
    post,
    path = "/posts/{id}/comments",
    operation_id = "createComment",
    params(("id" = String, Path, description = "The post's id: 1 to 128 bytes without control \
        characters. Any well-formed id is taken: comments does not know which posts exist.")),
    request_body(content = NewComment, content_type = "application/json"),
    responses(
        (
            status = 201,
            description = "Created: all of the post's comments, the new one last and pending.",
            body = Vec<Comment>
        ),
        (
            status = 400,
            description = "Malformed JSON, or the content (`field`: `content`) or the post id \
                           (`field`: `id`) is invalid.",
            body = ErrorBody
        ),
        blog_kit::CreateRefusals
    )
)]
async fn create(
    State(AppState { db, relay }): State<AppState>,
    PathPostId(post_id): PathPostId,
    Correlation(correlation): Correlation,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, CommentsJson), ApiError> {
    let content = CommentContent::from_body(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let event = Envelope::new(Event::CommentCreated(CommentCreated {
        id: id.clone(),
        content: content.as_str().to_owned(),
        post_id: post_id.as_str().to_owned(),
        status: Status::Pending,
    }))
    .caused_by(Some(correlation));
    let written = store::create(&db, &id, post_id.as_str(), content.as_str(), &event).await?;
    if let Some(seq) = written.outbox {
        relay.wait_published(&db, seq, PUBLISH_WAIT).await;
    }
    Ok((StatusCode::CREATED, written.value))
}

/// `GET /posts/:id/comments` → the post's comments, `[]` when none.
#[utoipa::path(
    get,
    path = "/posts/{id}/comments",
    operation_id = "listComments",
    params(("id" = String, Path, description = "The post's id.")),
    responses(
        (status = 200, description = "The post's comments, oldest first.", body = Vec<Comment>),
        (status = 400, description = "The post id is invalid (`field`: `id`).", body = ErrorBody),
        (status = 503, description = "Storage failed.", body = ErrorBody)
    )
)]
async fn list(
    State(AppState { db, .. }): State<AppState>,
    PathPostId(post_id): PathPostId,
) -> Result<CommentsJson, ApiError> {
    Ok(store::list(&db, post_id.as_str()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_description_says_what_the_handlers_check() {
        assert_eq!(
            blog_kit::openapi::required_text_limit(&api(), "NewComment", "content"),
            Some(CommentContent::MAX_CHARS as u64)
        );
        let doc = serde_json::to_value(api()).expect("json");
        let comment = &doc["components"]["schemas"]["Comment"];
        assert_eq!(comment["required"], json!(["id", "content", "status"]));
        assert_eq!(
            doc["components"]["schemas"]["Status"]["enum"],
            json!(["pending", "approved", "rejected"])
        );
        let create = &doc["paths"]["/posts/{id}/comments"]["post"];
        assert_eq!(create["parameters"][0]["name"], "id");
        assert_eq!(create["parameters"][0]["in"], "path");
    }
}
