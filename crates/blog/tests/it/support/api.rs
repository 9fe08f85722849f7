//! The calls a test makes on a running system, through the gateway or a
//! part's own port, and what it reads back.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use blog::settings::ServiceKind;

use super::system::TestSystem;

/// A response: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl TestSystem {
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        let (status, body) = self
            .http
            .request(method, url, content_type, body.into())
            .await
            .expect("request");
        Answer {
            status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, None, Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: &Value) -> Answer {
        self.send(
            Method::POST,
            url,
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// Creates a post through the gateway; returns its id.
    pub async fn create_post(&self, title: &str) -> String {
        self.create_post_at(&self.gateway(), title).await
    }

    /// Creates a post with `POST {base}/posts/create` (the gateway or the
    /// posts service's own port); returns its id.
    pub async fn create_post_at(&self, base: &str, title: &str) -> String {
        let answer = self
            .post(&format!("{base}/posts/create"), &json!({"title": title}))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        assert_eq!(answer.body["title"], title);
        answer.body["id"].as_str().expect("id").to_owned()
    }

    /// Comments through the gateway; returns the new comment's id.
    pub async fn comment(&self, post: &str, content: &str) -> String {
        let answer = self
            .post(
                &format!("{}/posts/{post}/comments", self.gateway()),
                &json!({"content": content}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        let comments = answer.body.as_array().expect("array");
        let new = comments.last().expect("the new comment");
        assert_eq!(new["content"], content);
        assert_eq!(new["status"], "pending");
        new["id"].as_str().expect("id").to_owned()
    }

    /// `GET /posts` on query, through the gateway.
    pub async fn query(&self) -> Value {
        let answer = self.get(&format!("{}/posts", self.gateway())).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body
    }

    /// The status query shows for a comment, if it shows it.
    pub async fn status_in_query(&self, post: &str, comment: &str) -> Option<String> {
        let posts = self.query().await;
        posts[post]["comments"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == comment)
            .and_then(|c| c["status"].as_str().map(str::to_owned))
    }

    /// The bus's stored events, from the HTTP bus or the JetStream stream.
    pub async fn bus_events(&self) -> Vec<Value> {
        if self.engines.nats {
            let bus = blog_bus::BusClient::connect(&self.settings.bus, self.http.clone())
                .await
                .expect("bus");
            return bus.events_after(0).await.expect("events");
        }
        let answer = self
            .get(&format!("{}/events", self.url(ServiceKind::EventBus)))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.body.as_array().expect("array").clone()
    }
}

/// The events one comment's course flow stores, in order.
pub const ONE_COMMENT_FLOW: [&str; 4] = [
    "PostCreated",
    "CommentCreated",
    "CommentModerated",
    "CommentUpdated",
];

/// The `type` of each event, in order.
pub fn types<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    events
        .into_iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect()
}

/// Counts the bus's stored events of one type.
pub fn count_type(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|e| e["type"] == event_type).count()
}
