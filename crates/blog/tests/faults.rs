//! Faults: parts stopped, crashed and restarted while events flow; events
//! delivered twice and out of order.

mod support;

use axum::http::StatusCode;
use blog::settings::ServiceKind;
use serde_json::{Value, json};
use support::{TestSystem, count_type};

#[tokio::test]
async fn a_stopped_moderation_catches_up_after_restart() {
    for engines in support::engines() {
        let mut system = TestSystem::spawn(engines).await;
        let post = system.create_post("moderation goes away").await;
        system.stop(ServiceKind::Moderation).await;
        let mut comments = Vec::new();
        for i in 0..5 {
            let content = if i % 2 == 0 {
                format!("orange {i}")
            } else {
                format!("fine {i}")
            };
            comments.push((system.comment(&post, &content).await, i % 2 == 0));
        }
        // Nothing can be decided while moderation is down.
        system
            .until("query saw all five comments", || async {
                system.query().await[&post]["comments"]
                    .as_array()
                    .map(Vec::len)
                    == Some(5)
            })
            .await;
        for (comment, _) in &comments {
            assert_eq!(
                system.status_in_query(&post, comment).await.as_deref(),
                Some("pending")
            );
        }
        system.start(ServiceKind::Moderation).await;
        for (comment, rejected) in &comments {
            system
                .until_status(
                    &post,
                    comment,
                    if *rejected { "rejected" } else { "approved" },
                )
                .await;
        }
        let events = system.bus_events().await;
        assert_eq!(
            count_type(&events, "CommentModerated"),
            5,
            "each comment moderated once"
        );
        system.shutdown().await;
    }
}

#[tokio::test]
async fn a_crashed_query_rebuilds_nothing_twice_and_misses_nothing() {
    for engines in support::engines() {
        let mut system = TestSystem::spawn(engines).await;
        let first = system.create_post("before the crash").await;
        system
            .until("query has the post", || async {
                system.query().await.get(&first).is_some()
            })
            .await;
        system.crash(ServiceKind::Query).await;
        let second = system.create_post("during the crash").await;
        let comment = system.comment(&second, "hello").await;
        system.start(ServiceKind::Query).await;
        system.until_status(&second, &comment, "approved").await;
        let posts = system.query().await;
        let keys: Vec<_> = posts.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, vec![first, second.clone()]);
        assert_eq!(posts[&second]["comments"].as_array().map(Vec::len), Some(1));
        system.shutdown().await;
    }
}

#[tokio::test]
async fn the_bus_keeps_its_events_and_cursors_across_a_restart() {
    // Stops the HTTP bus; on NATS, see tests/nats.rs.
    for engines in support::engines().into_iter().filter(|e| !e.nats) {
        let mut system = TestSystem::spawn(engines).await;
        let post = system.create_post("durable").await;
        let comment = system.comment(&post, "kept").await;
        system.until_status(&post, &comment, "approved").await;
        let bus = system.url(ServiceKind::EventBus);
        let before = system.bus_events().await;
        system
            .until("all delivered", || async {
                let status = system.get(&format!("{bus}/subscribers")).await.body;
                status["subscribers"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|s| s["lag"] == 0))
            })
            .await;

        system.stop(ServiceKind::EventBus).await;
        system.start(ServiceKind::EventBus).await;

        assert_eq!(
            system.bus_events().await,
            before,
            "every stored event, unchanged"
        );
        let status = system.get(&format!("{bus}/subscribers")).await.body;
        for subscriber in status["subscribers"].as_array().expect("subscribers") {
            assert_eq!(subscriber["cursor"], json!(before.len()), "{subscriber}");
        }
        // And it goes on: a new post flows through the restarted bus.
        let after = system.create_post("after the restart").await;
        system
            .until("query has it", || async {
                system.query().await.get(&after).is_some()
            })
            .await;
        system.shutdown().await;
    }
}

#[tokio::test]
async fn a_crash_between_a_write_and_its_relay_loses_nothing() {
    // Stops the HTTP bus; on NATS, see tests/nats.rs.
    for engines in support::engines().into_iter().filter(|e| !e.nats) {
        let mut system = TestSystem::spawn(engines).await;
        // With the bus down the write commits (with its event in the outbox) but
        // cannot be relayed; then the writer crashes.
        system.stop(ServiceKind::EventBus).await;
        let post = system.create_post("written, not relayed").await;
        system.crash(ServiceKind::Posts).await;
        system.start(ServiceKind::EventBus).await;
        assert!(system.bus_events().await.is_empty(), "the bus never got it");
        system.start(ServiceKind::Posts).await;
        system
            .until("query has the post", || async {
                system.query().await.get(&post).is_some()
            })
            .await;
        assert_eq!(count_type(&system.bus_events().await, "PostCreated"), 1);
        system.shutdown().await;
    }
}

fn comment_created(id: &str, post: &str, content: &str) -> Value {
    json!({"type": "CommentCreated", "data": {"id": id, "content": content, "postId": post, "status": "pending"}})
}

#[tokio::test]
async fn an_event_delivered_twice_changes_nothing() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let moderation = format!("{}/events", system.url(ServiceKind::Moderation));
        // A course-format event (no id): deduplicated by its natural key.
        let event = comment_created("c-1", "p-1", "twice");
        for _ in 0..3 {
            let answer = system.post(&moderation, &event).await;
            assert_eq!(
                (answer.status, answer.body.clone()),
                (StatusCode::OK, json!({}))
            );
        }
        // One of ours (with an id) sent again after being relayed: same.
        let mut with_id = comment_created("c-2", "p-1", "also twice");
        with_id["id"] = json!("0190aaaa-0000-7000-8000-000000000001");
        for _ in 0..3 {
            assert_eq!(
                system.post(&moderation, &with_id).await.status,
                StatusCode::OK
            );
        }
        system
            .until("two decisions relayed", || async {
                count_type(&system.bus_events().await, "CommentModerated") == 2
            })
            .await;
        // Give a wrong extra decision every chance to show up.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            count_type(&system.bus_events().await, "CommentModerated"),
            2
        );

        if !system.engines.nats {
            // The bus too stores an event with a known id once.
            let bus = format!("{}/events", system.url(ServiceKind::EventBus));
            let mut post = json!({"type": "PostCreated", "data": {"id": "p-9", "title": "t"}, "id": "0190aaaa-0000-7000-8000-000000000009"});
            let first = system.post(&bus, &post).await;
            post["seq"] = json!(999);
            let again = system.post(&bus, &post).await;
            assert_eq!(first.body["seq"], again.body["seq"]);
            assert_eq!(count_type(&system.bus_events().await, "PostCreated"), 1);
        }
        system.shutdown().await;
    }
}

#[tokio::test]
async fn events_out_of_order_converge_to_the_in_order_state() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let query = format!("{}/events", system.url(ServiceKind::Query));
        let updated = json!({"type": "CommentUpdated", "data": {"id": "c1", "postId": "p1", "content": "late", "status": "approved"}});
        let created = comment_created("c1", "p1", "late");
        let other = comment_created("c2", "p1", "still pending");
        let post = json!({"type": "PostCreated", "data": {"id": "p1", "title": "arrives last"}});
        // Worst order: the update, then its create, then another comment, then the post.
        for event in [&updated, &created, &other, &post, &created, &updated] {
            assert_eq!(system.post(&query, event).await.status, StatusCode::OK);
        }
        assert_eq!(
            system.query().await,
            json!({"p1": {"id": "p1", "title": "arrives last", "comments": [
                {"id": "c1", "content": "late", "status": "approved"},
                {"id": "c2", "content": "still pending", "status": "pending"},
            ]}})
        );
        // Comments: a decision for a comment it never stored changes nothing and is no error.
        let comments = format!("{}/events", system.url(ServiceKind::Comments));
        let moderated = json!({"type": "CommentModerated", "data": {"id": "nope", "postId": "p1", "status": "approved", "content": "x"}});
        assert_eq!(
            system.post(&comments, &moderated).await.status,
            StatusCode::OK
        );
        system.shutdown().await;
    }
}

#[tokio::test]
async fn a_status_never_moves_back() {
    for engines in support::engines() {
        let system = TestSystem::spawn(engines).await;
        let post = system.create_post("p").await;
        let comment = system.comment(&post, "orange").await;
        system.until_status(&post, &comment, "rejected").await;
        // A stale or hostile decision for the same comment is ignored by comments.
        let comments = format!("{}/events", system.url(ServiceKind::Comments));
        let late = json!({"type": "CommentModerated", "data": {"id": comment, "postId": post, "status": "approved", "content": "orange"}});
        assert_eq!(system.post(&comments, &late).await.status, StatusCode::OK);
        let pending = json!({"type": "CommentUpdated", "data": {"id": comment, "postId": post, "content": "orange", "status": "pending"}});
        assert_eq!(
            system
                .post(
                    &format!("{}/events", system.url(ServiceKind::Query)),
                    &pending
                )
                .await
                .status,
            StatusCode::OK
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            system.status_in_query(&post, &comment).await.as_deref(),
            Some("rejected")
        );
        assert_eq!(count_type(&system.bus_events().await, "CommentUpdated"), 1);
        system.shutdown().await;
    }
}
