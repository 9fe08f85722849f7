use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use blog_bus::{PUBLISH_WAIT, RelayState};
use blog_events::{Envelope, Event, PostCreated};
use blog_kit::error::JsonBody;
use blog_kit::{ApiError, Correlation, ErrorBody};
use blog_storage::Db;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

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

/// The routes of [`router`], described.
#[derive(OpenApi)]
#[openapi(paths(create, list))]
struct PostsApi;

/// The description of [`router`].
pub fn api() -> utoipa::openapi::OpenApi {
    PostsApi::openapi()
}

/// A new post.
#[derive(ToSchema)]
#[allow(dead_code)] // a description: the handler reads the body with `PostTitle`
pub struct NewPost {
    /// Trimmed; not empty; at most 200 characters; no NUL or control
    /// characters other than tab and line breaks.
    #[schema(min_length = 1, max_length = 200, example = "Hello")]
    title: String,
}

/// A post.
#[derive(Debug, Serialize, ToSchema)]
pub struct Post {
    /// A UUIDv7.
    pub id: String,
    pub title: String,
}

/// Posts, as a JSON object keyed by post id, in the order given:
/// `{"<id>":{"id","title"}}`.
#[derive(Debug)]
pub struct PostsById(pub Vec<Post>);

impl Serialize for PostsById {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for post in &self.0 {
            map.serialize_entry(&post.id, post)?;
        }
        map.end()
    }
}

impl utoipa::PartialSchema for PostsById {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("Every post, keyed by its id, in creation order."))
            .additional_properties(Some(Ref::from_schema_name(Post::name())))
            .into()
    }
}

impl ToSchema for PostsById {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Post::name().into_owned(), Post::schema()));
        <Post as ToSchema>::schemas(schemas);
    }
}

/// `POST /posts/create {"title"}` → 201 `{"id","title"}`. The post and its
/// `PostCreated` commit together; the answer waits (a bounded time) until the
/// relay has put the event on the bus, so whatever a client does with the
/// post's id comes after its `PostCreated` there.
#[utoipa::path(
    post,
    path = "/posts/create",
    operation_id = "createPost",
    request_body(content = NewPost, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = Post),
        (
            status = 400,
            description = "Malformed JSON, or the title is missing or invalid (`field`: `title`).",
            body = ErrorBody
        ),
        blog_kit::CreateRefusals
    )
)]
async fn create(
    State(AppState { db, relay }): State<AppState>,
    Correlation(correlation): Correlation,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Post>), ApiError> {
    let title = PostTitle::from_body(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let event = Envelope::new(Event::PostCreated(PostCreated {
        id: id.clone(),
        title: title.as_str().to_owned(),
    }))
    .caused_by(Some(correlation));
    if let Some(seq) = store::create(&db, &id, &title, &event).await? {
        relay.wait_published(&db, seq, PUBLISH_WAIT).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(Post {
            id,
            title: title.as_str().to_owned(),
        }),
    ))
}

/// `GET /posts` → `{"<id>":{"id","title"}}` in creation order.
///
/// Through the gateway (and the Ingress) `GET /posts` is the query
/// service's; this one answers on the posts service's own port.
#[utoipa::path(
    get,
    path = "/posts",
    operation_id = "listPosts",
    responses(
        (status = 200, description = "Every post by id, in creation order.", body = PostsById),
        (status = 503, description = "Storage failed.", body = ErrorBody)
    )
)]
async fn list(State(AppState { db, .. }): State<AppState>) -> Result<Json<PostsById>, ApiError> {
    let posts = store::all(&db).await?;
    Ok(Json(PostsById(
        posts
            .into_iter()
            .map(|(id, title)| Post { id, title })
            .collect(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_says_what_the_handlers_check_and_answer() {
        // The answer: keyed by id, in the order given.
        let posts = PostsById(vec![
            Post {
                id: "b".into(),
                title: "B".into(),
            },
            Post {
                id: "a".into(),
                title: "A".into(),
            },
        ]);
        assert_eq!(
            serde_json::to_string(&posts).expect("json"),
            r#"{"b":{"id":"b","title":"B"},"a":{"id":"a","title":"A"}}"#,
            "keyed by id, in the order given"
        );
        // Its description, and the new post's checks.
        let doc = serde_json::to_value(api()).expect("json");
        let list = &doc["paths"]["/posts"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert_eq!(list["$ref"], "#/components/schemas/PostsById");
        assert_eq!(
            doc["components"]["schemas"]["PostsById"]["additionalProperties"]["$ref"],
            "#/components/schemas/Post"
        );
        assert_eq!(
            blog_kit::openapi::required_text_limit(&api(), "NewPost", "title"),
            Some(PostTitle::MAX_CHARS as u64)
        );
    }
}
