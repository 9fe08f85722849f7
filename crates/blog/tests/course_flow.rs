//! The course's flow, end to end through the gateway, on the real services.

mod support;

use axum::http::StatusCode;
use blog::settings::ServiceKind;
use serde_json::json;
use support::{TestSystem, count_type};

#[tokio::test]
async fn a_post_and_its_moderated_comments_reach_query() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        assert_eq!(system.query().await, json!({}));

        let post = system.create_post("Hello, events").await;
        let rejected = system.comment(&post, "I like orange juice").await;
        let approved = system.comment(&post, "What a nice post").await;

        system.until_status(&post, &rejected, "rejected").await;
        system.until_status(&post, &approved, "approved").await;

        let posts = system.query().await;
        assert_eq!(
            posts,
            json!({post.clone(): {"id": post, "title": "Hello, events", "comments": [
                {"id": rejected, "content": "I like orange juice", "status": "rejected"},
                {"id": approved, "content": "What a nice post", "status": "approved"},
            ]}})
        );

        // Comments shows the same statuses.
        let comments = system
            .get(&format!("{}/posts/{post}/comments", system.gateway()))
            .await;
        assert_eq!(comments.status, StatusCode::OK);
        assert_eq!(comments.body[0]["status"], "rejected");
        assert_eq!(comments.body[1]["status"], "approved");

        // Posts lists it, keyed by id.
        let listed = system
            .get(&format!("{}/posts", system.url(ServiceKind::Posts)))
            .await;
        assert_eq!(
            listed.body,
            json!({post.clone(): {"id": post, "title": "Hello, events"}})
        );

        // The bus stored each event once, in causal order, numbered from 1.
        let events = system.bus_events().await;
        let types: Vec<_> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(count_type(&events, "PostCreated"), 1);
        assert_eq!(count_type(&events, "CommentCreated"), 2);
        assert_eq!(count_type(&events, "CommentModerated"), 2);
        assert_eq!(count_type(&events, "CommentUpdated"), 2);
        // Causal order within one producer: a comment's decision after its creation.
        let position = |t: &str| types.iter().position(|x| *x == t).unwrap_or(usize::MAX);
        assert!(position("CommentCreated") < position("CommentModerated"));
        assert!(position("CommentModerated") < position("CommentUpdated"));
        let seqs: Vec<_> = events
            .iter()
            .map(|e| e["seq"].as_i64().unwrap_or_default())
            .collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        system.shutdown().await;
    }
}

#[tokio::test]
async fn query_keeps_creation_order_and_empty_posts_have_no_comments() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let ids: Vec<String> = futures_like_sequence(&system, &["first", "second", "third"]).await;
        system
            .until("three posts in query", || async {
                system.query().await.as_object().map(|o| o.len()) == Some(3)
            })
            .await;
        let posts = system.query().await;
        let keys: Vec<_> = posts.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, ids);
        assert_eq!(posts[&ids[1]]["comments"], json!([]));
        let none = system
            .get(&format!("{}/posts/{}/comments", system.gateway(), ids[0]))
            .await;
        assert_eq!((none.status, none.body), (StatusCode::OK, json!([])));
        system.shutdown().await;
    }
}

async fn futures_like_sequence(system: &TestSystem, titles: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for title in titles {
        ids.push(system.create_post(title).await);
    }
    ids
}

#[tokio::test]
async fn the_bus_replays_after_a_sequence_number() {
    // The HTTP bus's own API.
    for engines in support::engines().into_iter().filter(|e| !e.nats) {
        let system = TestSystem::spawn(engines).await;
        let post = system.create_post("p").await;
        system.comment(&post, "c").await;
        system
            .until("4 events", || async {
                system.bus_events().await.len() == 4
            })
            .await;
        let bus = system.url(ServiceKind::EventBus);
        let after = system.get(&format!("{bus}/events?after=2")).await;
        let seqs: Vec<_> = after
            .body
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["seq"].clone())
            .collect();
        assert_eq!(seqs, vec![json!(3), json!(4)]);
        let limited = system.get(&format!("{bus}/events?after=1&limit=1")).await;
        assert_eq!(limited.body.as_array().map(Vec::len), Some(1));
        let bad = system.get(&format!("{bus}/events?after=x")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body["errors"][0]["field"], "after");
        // Every subscriber has acknowledged everything.
        system
            .until("subscribers caught up", || async {
                let status = system.get(&format!("{bus}/subscribers")).await.body;
                status["subscribers"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|s| s["lag"] == 0))
            })
            .await;
        system.shutdown().await;
    }
}

#[tokio::test]
async fn cors_answers_any_origin_with_a_204_preflight() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        for kind in [
            ServiceKind::Posts,
            ServiceKind::Comments,
            ServiceKind::Query,
        ] {
            let url = format!("{}/posts", system.url(kind));
            let request = axum::http::Request::builder()
                .method("OPTIONS")
                .uri(&url)
                .header("origin", "http://example.test")
                .header("access-control-request-method", "POST")
                .body(axum::body::Body::empty())
                .expect("request");
            let response = raw(request).await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT, "{url}");
            assert_eq!(response.headers()["access-control-allow-origin"], "*");
        }
        system.shutdown().await;
    }
}

/// Sends a request without the test client's conveniences, to see headers.
async fn raw(
    request: axum::http::Request<axum::body::Body>,
) -> axum::http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    client.request(request).await.expect("response")
}
