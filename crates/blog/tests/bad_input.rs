//! Bad input gets a clear 4xx JSON error and changes nothing.

mod support;

use axum::http::{Method, StatusCode};
use blog::settings::ServiceKind;
use serde_json::{Value, json};
use support::TestSystem;

fn first_error(body: &Value) -> (&str, Option<&str>) {
    let error = &body["errors"][0];
    (
        error["message"].as_str().unwrap_or_default(),
        error["field"].as_str(),
    )
}

#[tokio::test]
async fn bad_requests_get_4xx_json_and_change_nothing() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let create = format!("{}/posts/create", system.gateway());
        let comment = format!("{}/posts/some-post/comments", system.gateway());
        let json_type = Some("application/json");
        let long_title = "t".repeat(201);
        let long_content = "c".repeat(1001);
        let huge = format!("{{\"title\":\"{}\"}}", "x".repeat(70 * 1024));
        // (what, url, content type, body, expected status, expected field)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            String,
            StatusCode,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "malformed JSON",
                &create,
                json_type,
                "{\"title\":".into(),
                StatusCode::BAD_REQUEST,
                None,
            ),
            (
                "not an object",
                &create,
                json_type,
                "[1,2]".into(),
                StatusCode::BAD_REQUEST,
                Some("title"),
            ),
            (
                "wrong type",
                &create,
                json_type,
                r#"{"title":42}"#.into(),
                StatusCode::BAD_REQUEST,
                Some("title"),
            ),
            (
                "missing",
                &create,
                json_type,
                "{}".into(),
                StatusCode::BAD_REQUEST,
                Some("title"),
            ),
            (
                "empty",
                &create,
                json_type,
                r#"{"title":"   "}"#.into(),
                StatusCode::BAD_REQUEST,
                Some("title"),
            ),
            (
                "over-long",
                &create,
                json_type,
                json!({"title": long_title}).to_string(),
                StatusCode::BAD_REQUEST,
                Some("title"),
            ),
            (
                "wrong content type",
                &create,
                Some("text/plain"),
                r#"{"title":"x"}"#.into(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
            ),
            (
                "no content type",
                &create,
                None,
                r#"{"title":"x"}"#.into(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
            ),
            (
                "over the body limit",
                &create,
                json_type,
                huge,
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
            ),
            (
                "comment wrong type",
                &comment,
                json_type,
                r#"{"content":[]}"#.into(),
                StatusCode::BAD_REQUEST,
                Some("content"),
            ),
            (
                "comment missing",
                &comment,
                json_type,
                r#"{"title":"x"}"#.into(),
                StatusCode::BAD_REQUEST,
                Some("content"),
            ),
            (
                "comment over-long",
                &comment,
                json_type,
                json!({"content": long_content}).to_string(),
                StatusCode::BAD_REQUEST,
                Some("content"),
            ),
        ];
        for (what, url, content_type, body, status, field) in cases {
            let answer = system.send(Method::POST, url, content_type, body).await;
            assert_eq!(answer.status, status, "{what}: {answer:?}");
            let (message, got_field) = first_error(&answer.body);
            assert!(!message.is_empty(), "{what}: a message");
            assert_eq!(got_field, field, "{what}");
        }
        // Unknown routes and methods, on a service directly and through the gateway.
        let unknown = system
            .get(&format!("{}/nope", system.url(ServiceKind::Posts)))
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(first_error(&unknown.body).0, "not found");
        let wrong_method = system.send(Method::DELETE, &create, None, "").await;
        assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(first_error(&wrong_method.body).0, "method not allowed");

        // Nothing was stored or emitted.
        assert_eq!(system.query().await, json!({}));
        assert_eq!(
            system
                .get(&format!("{}/posts", system.url(ServiceKind::Posts)))
                .await
                .body,
            json!({})
        );
        assert_eq!(system.get(&comment).await.body, json!([]));
        assert!(system.bus_events().await.is_empty());
        system.shutdown().await;
    }
}

#[tokio::test]
async fn malformed_events_are_refused_everywhere_and_unknown_ones_ignored() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let malformed = [
            json!("just a string"),
            json!({"data": {}}),
            json!({"type": "PostCreated"}),
            json!({"type": "PostCreated", "data": {"id": 1, "title": "t"}}),
            json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "x", "status": "maybe"}}),
            json!({"type": "CommentUpdated", "data": {"id": "", "postId": "p", "content": "x", "status": "approved"}}),
        ];
        for kind in [
            ServiceKind::Posts,
            ServiceKind::Comments,
            ServiceKind::Query,
            ServiceKind::Moderation,
            ServiceKind::EventBus,
        ]
        .into_iter()
        .filter(|k| *k != ServiceKind::EventBus || !system.engines.nats)
        {
            let url = format!("{}/events", system.url(kind));
            for event in &malformed {
                let answer = system.post(&url, event).await;
                assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{kind:?} {event}");
                assert!(!first_error(&answer.body).0.is_empty());
            }
            let broken = system
                .send(Method::POST, &url, Some("application/json"), "{oops")
                .await;
            assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{kind:?}");
            let unknown = system
                .post(&url, &json!({"type": "PostLiked", "data": {"id": "p"}}))
                .await;
            assert_eq!(
                unknown.status,
                StatusCode::OK,
                "{kind:?}: unknown types are ignored"
            );
        }
        // Only the unknown event was stored (and delivered, and ignored).
        let events = system.bus_events().await;
        if system.engines.nats {
            assert!(events.is_empty(), "services publish only their own events");
        } else {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0]["type"], "PostLiked");
        }
        assert_eq!(system.query().await, json!({}));
        system.shutdown().await;
    }
}
