//! Faults: parts stopped, crashed and restarted while events flow; events
//! delivered twice and out of order.

use crate::support;

use axum::http::StatusCode;
use blog::settings::ServiceKind;
use serde_json::{Value, json};
use support::{TestSystem, count_type};

engine_tests!(a_stopped_moderation_catches_up_after_restart: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_stopped_moderation_catches_up_after_restart(engines: support::Engines) {
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
    system.until_decided(&post, &comments).await;
    let events = system.bus_events().await;
    assert_eq!(
        count_type(&events, "CommentModerated"),
        5,
        "each comment moderated once"
    );
    system.shutdown().await;
}

engine_tests!(a_crashed_query_rebuilds_nothing_twice_and_misses_nothing: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_crashed_query_rebuilds_nothing_twice_and_misses_nothing(engines: support::Engines) {
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

engine_tests!(the_bus_keeps_its_events_and_cursors_across_a_restart: sqlite_http, postgres_http);
async fn the_bus_keeps_its_events_and_cursors_across_a_restart(engines: support::Engines) {
    // Stops the HTTP bus; on NATS, see tests/nats.rs.
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

engine_tests!(a_crash_between_a_write_and_its_relay_loses_nothing: sqlite_http, postgres_http);
async fn a_crash_between_a_write_and_its_relay_loses_nothing(engines: support::Engines) {
    // Stops the HTTP bus; on NATS, see tests/nats.rs.
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

fn comment_created(id: &str, post: &str, content: &str) -> Value {
    json!({"type": "CommentCreated", "data": {"id": id, "content": content, "postId": post, "status": "pending"}})
}

engine_tests!(an_event_delivered_twice_changes_nothing: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn an_event_delivered_twice_changes_nothing(engines: support::Engines) {
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
    // A third comment after them: moderation's outbox goes out in order, so
    // once its decision is on the bus, any wrong extra decision for the
    // repeated ones would be there before it.
    let barrier = comment_created("c-3", "p-1", "once");
    assert_eq!(
        system.post(&moderation, &barrier).await.status,
        StatusCode::OK
    );
    system
        .until("the barrier's decision relayed", || async {
            system
                .bus_events()
                .await
                .iter()
                .any(|e| e["type"] == "CommentModerated" && e["data"]["id"] == "c-3")
        })
        .await;
    assert_eq!(
        count_type(&system.bus_events().await, "CommentModerated"),
        3
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

engine_tests!(events_out_of_order_converge_to_the_in_order_state: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn events_out_of_order_converge_to_the_in_order_state(engines: support::Engines) {
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

engine_tests!(a_status_never_moves_back: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_status_never_moves_back(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let post = system.create_post("p").await;
    let comment = system.comment(&post, "orange").await;
    system.until_status(&post, &comment, "rejected").await;
    // A stale or hostile decision for the same comment is ignored by comments.
    let comments = format!("{}/events", system.url(ServiceKind::Comments));
    let late = json!({"type": "CommentModerated", "data": {"id": comment, "postId": post, "status": "approved", "content": "orange"}});
    assert_eq!(system.post(&comments, &late).await.status, StatusCode::OK);
    // Query applies an update before it answers; a stale one (back to
    // pending) changes nothing, nor does a forged one sideways (anyone may
    // post to query's events route when no internal token is set): approved
    // and rejected are both final.
    let query_events = format!("{}/events", system.url(ServiceKind::Query));
    for status in ["pending", "approved"] {
        let update = json!({"type": "CommentUpdated", "data": {"id": comment, "postId": post, "content": "orange", "status": status}});
        assert_eq!(
            system.post(&query_events, &update).await.status,
            StatusCode::OK
        );
        assert_eq!(
            system.status_in_query(&post, &comment).await.as_deref(),
            Some("rejected"),
            "after an update to {status}"
        );
    }
    // Comments answered after its commit: an update it wrongly made is in
    // its outbox before a later comment's, and reaches query first.
    let barrier = system.comment(&post, "orange again").await;
    system.until_status(&post, &barrier, "rejected").await;
    assert_eq!(
        system.status_in_query(&post, &comment).await.as_deref(),
        Some("rejected")
    );
    assert_eq!(count_type(&system.bus_events().await, "CommentUpdated"), 2);
    system.shutdown().await;
}

/// Forwards connections on a port that opens only after `delay` to
/// `target`: a database server that is not up yet when its service starts.
async fn late_proxy(
    delay: std::time::Duration,
    target: String,
) -> (u16, tokio::task::JoinHandle<()>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_service_waits_for_a_postgres_that_is_not_up_yet() {
    if !support::engines().iter().any(|e| e.postgres) {
        return;
    }
    let server = support::postgres_url();
    let target = server
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    // Longer than a connection attempt waits (10 s).
    let (port, proxy) = late_proxy(std::time::Duration::from_secs(11), target).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}_", support::unique("blog_late"));
    let mut settings = blog::settings::Settings::local(dir.path().to_owned());
    settings.postgres = Some(blog::settings::Postgres {
        server: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        prefix: prefix.clone(),
        database: None,
    });
    // Before: the start-up ended after one attempt of 10 s.
    let built = blog::startup::build(ServiceKind::Posts, &settings).await;
    assert!(
        built.is_ok(),
        "started once the database came up: {:?}",
        built.err()
    );
    drop(built);

    // A server that never comes up is given up on, with the reason, in time.
    settings.postgres = Some(blog::settings::Postgres {
        server: "postgres://postgres@127.0.0.1:9/postgres".into(),
        prefix: prefix.clone(),
        database: None,
    });
    settings.startup_timeout = std::time::Duration::from_millis(500);
    let Err(e) = blog::startup::build(ServiceKind::Posts, &settings).await else {
        panic!("no database, no service")
    };
    assert!(e.to_string().contains("posts"), "{e}");

    proxy.abort();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    let sql = format!("DROP DATABASE IF EXISTS \"{prefix}posts\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
}

engine_tests!(a_rebuild_cut_off_by_a_crash_goes_on_after_the_restart: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_rebuild_cut_off_by_a_crash_goes_on_after_the_restart(engines: support::Engines) {
    // Three pages of the rebuild's reading.
    const POSTS: usize = 2500;
    let mut system = TestSystem::spawn(engines).await;
    let posts = system.url(ServiceKind::Posts);
    let query = system.url(ServiceKind::Query);
    let titles: Vec<String> = (0..POSTS).map(|i| format!("post {i}")).collect();
    for chunk in titles.chunks(10) {
        futures_util::future::join_all(chunk.iter().map(|t| system.create_post_at(&posts, t)))
            .await;
    }
    system
        .until("query has every post", || async {
            post_count(&system).await == POSTS
        })
        .await;

    // A rebuild, cut off by a crash once it has applied a page and not the
    // whole log, while a new post moves query's cursor past what the
    // rebuild has not reached yet; then query starts again. Tried again
    // when the rebuild finished before the crash (the restarted query then
    // has nothing to go on with: its rebuild is idle).
    let mut late = Vec::new();
    let mut resumed = false;
    for _ in 0..10 {
        let started = system.post(&format!("{query}/rebuild"), &json!({})).await;
        assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
        // Delivered live while the rebuild reads the log.
        late.push(system.create_post_at(&posts, "during the rebuild").await);
        let mut crashed = false;
        loop {
            let progress = system.get(&format!("{query}/rebuild")).await.body;
            if progress["phase"] != "running" {
                break;
            }
            if progress["read"].as_u64() >= Some(1000) {
                system.crash(ServiceKind::Query).await;
                crashed = true;
                break;
            }
        }
        if !crashed {
            continue;
        }
        // Started again, query misses nothing.
        system.start(ServiceKind::Query).await;
        system
            .until(
                &format!("{engines}: query has every post again"),
                || async { post_count(&system).await == POSTS + late.len() },
            )
            .await;
        if system.get(&format!("{query}/rebuild")).await.body["phase"] == "idle" {
            continue;
        }
        system
            .until("the rebuild says it is done", || async {
                system.get(&format!("{query}/rebuild")).await.body["phase"] == "done"
            })
            .await;
        resumed = true;
        break;
    }
    assert!(
        resumed,
        "{engines}: every rebuild finished before it could be cut off"
    );
    system.shutdown().await;
}

/// How many posts query shows.
async fn post_count(system: &TestSystem) -> usize {
    system.query().await.as_object().map_or(0, |p| p.len())
}
