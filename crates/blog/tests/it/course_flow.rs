//! The course's flow, end to end through the gateway, on the real services.

use crate::support;

use axum::http::StatusCode;
use blog::settings::ServiceKind;
use serde_json::json;
use support::{TestSystem, count_type};

engine_tests!(a_post_and_its_moderated_comments_reach_query: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_post_and_its_moderated_comments_reach_query(engines: support::Engines) {
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

engine_tests!(query_keeps_creation_order_and_empty_posts_have_no_comments: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn query_keeps_creation_order_and_empty_posts_have_no_comments(engines: support::Engines) {
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

engine_tests!(a_comments_answer_lists_its_post_exactly_as_written: sqlite_http, postgres_http);
/// The comments service renders a post's list in the database (one value,
/// not row by row): every comment is there, in creation order, with only
/// the course's fields, and text that JSON must escape comes back as sent.
async fn a_comments_answer_lists_its_post_exactly_as_written(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let post = system.create_post("Escapes").await;
    let other = system.create_post("Elsewhere").await;
    let contents = [
        "plain",
        "a \"quote\", a back\\slash, a /slash",
        "tab\there, new\nline, cr\r, é, 世界, 😀, <b>&amp;</b>",
    ];
    let url = format!(
        "{}/posts/{post}/comments",
        system.url(ServiceKind::Comments)
    );
    system.comment(&other, "not this post's").await;
    let mut answered = json!(null);
    for content in contents {
        let answer = system.post(&url, &json!({ "content": content })).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answered = answer.body;
    }
    let listed = answered.as_array().expect("an array");
    assert_eq!(listed.len(), contents.len(), "{answered}");
    for (comment, content) in listed.iter().zip(contents) {
        let mut fields: Vec<_> = comment
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        fields.sort();
        assert_eq!(fields, ["content", "id", "status"], "{comment}");
        assert_eq!(comment["content"], content);
    }
    // The new one pending; the others may be decided by now.
    assert_eq!(listed[contents.len() - 1]["status"], "pending");
    let got = system.get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .expect("an array")
            .iter()
            .map(|c| c["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    assert_eq!(ids(&got.body), ids(&answered));
    system.shutdown().await;
}

async fn futures_like_sequence(system: &TestSystem, titles: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for title in titles {
        ids.push(system.create_post(title).await);
    }
    ids
}

engine_tests!(the_bus_replays_after_a_sequence_number: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn the_bus_replays_after_a_sequence_number(engines: support::Engines) {
    // The HTTP bus's own API.
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

engine_tests!(cors_answers_any_origin_on_public_routes_only: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn cors_answers_any_origin_on_public_routes_only(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let preflight = |url: &str| {
        axum::http::Request::builder()
            .method("OPTIONS")
            .uri(url)
            .header("origin", "http://example.test")
            .header("access-control-request-method", "POST")
            .body(axum::body::Body::empty())
            .expect("request")
    };
    // The routes the course's client calls.
    for (kind, path) in [
        (ServiceKind::Posts, "/posts/create"),
        (ServiceKind::Comments, "/posts/some-post/comments"),
        (ServiceKind::Query, "/posts"),
    ] {
        let url = format!("{}{path}", system.url(kind));
        let response = raw(preflight(&url)).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{url}");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
    }
    // Internal routes are no browser's business: no CORS at all, so a
    // page on any origin can neither read the log nor send events.
    for (kind, path) in [
        (ServiceKind::EventBus, "/events"),
        (ServiceKind::EventBus, "/subscribers"),
        (ServiceKind::Query, "/events"),
        (ServiceKind::Comments, "/dead-letters"),
    ] {
        let url = format!("{}{path}", system.url(kind));
        let response = raw(preflight(&url)).await;
        assert_ne!(response.status(), StatusCode::NO_CONTENT, "{url}");
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{url}: no CORS on an internal route"
        );
        let get = axum::http::Request::builder()
            .uri(&url)
            .header("origin", "http://example.test")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = raw(get).await;
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{url}: a cross-origin read gets no CORS header"
        );
    }
    system.shutdown().await;
}

/// Sends a request without the test client's conveniences, to see headers.
async fn raw(
    request: axum::http::Request<axum::body::Body>,
) -> axum::http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    client.request(request).await.expect("response")
}

engine_tests!(the_internal_token_closes_internal_routes_and_the_system_still_flows: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
/// With an internal token, events can no longer be forged: every internal
/// route refuses a call without it (401, JSON), while our parts, which send
/// it, keep the system flowing, and public routes and probes stay open.
async fn the_internal_token_closes_internal_routes_and_the_system_still_flows(
    engines: support::Engines,
) {
    let token: blog_kit::http::InternalToken = "a-test-token-of-some-length".parse().unwrap();
    let with_token = token.clone();
    let system = TestSystem::spawn_with(engines, move |settings| {
        settings.surface.internal_token = Some(with_token.clone());
        settings.http = settings.http.clone().with_token(&with_token);
    })
    .await;
    // The whole flow, through relays, the bus and deliveries that all
    // carry the token.
    let post = system.create_post("behind a token").await;
    let comment = system.comment(&post, "orange").await;
    system.until_status(&post, &comment, "rejected").await;

    // A forged decision, without the token: refused everywhere.
    let forged = json!({"type": "CommentUpdated", "data": {
        "id": comment, "postId": post, "content": "orange", "status": "approved"}});
    for kind in support::taking_events() {
        let base = system.url(kind);
        let sent = system.post(&format!("{base}/events"), &forged).await;
        assert_eq!(sent.status, StatusCode::UNAUTHORIZED, "{engines} {kind:?}");
        assert!(
            sent.body["errors"][0]["message"].is_string(),
            "{engines} {kind:?}"
        );
        let batch = system
            .post(&format!("{base}/events/batch"), &json!([forged]))
            .await;
        assert_eq!(batch.status, StatusCode::UNAUTHORIZED, "{engines} {kind:?}");
        let letters = system.get(&format!("{base}/dead-letters")).await;
        assert_eq!(
            letters.status,
            StatusCode::UNAUTHORIZED,
            "{engines} {kind:?}"
        );
        // Probes stay open for the orchestrator.
        assert_eq!(
            system.get(&format!("{base}/readyz")).await.status,
            StatusCode::OK,
            "{engines} {kind:?}"
        );
    }
    let bus = system.url(ServiceKind::EventBus);
    for path in ["/events", "/subscribers"] {
        let read = system.get(&format!("{bus}{path}")).await;
        assert_eq!(read.status, StatusCode::UNAUTHORIZED, "{engines} {path}");
    }
    // A wrong token is no better than none.
    let wrong = blog_kit::client::HttpClient::default()
        .with_token(&"not-the-right-token-at-all".parse().unwrap());
    let (status, _) = wrong
        .post_json(
            &format!("{}/events", system.url(ServiceKind::Query)),
            bytes::Bytes::from(forged.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With the token, the bus answers.
    let (status, _) = system
        .settings
        .http
        .get(&format!("{bus}/subscribers"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{engines}");
    // Public routes are open, and the comment stays rejected.
    assert_eq!(
        system.status_in_query(&post, &comment).await.as_deref(),
        Some("rejected"),
        "{engines}"
    );
    system.shutdown().await;
}

/// A Prometheus text exposition as series → value (`name{labels}` as written).
async fn scrape(system: &TestSystem, kind: ServiceKind) -> Vec<(String, f64)> {
    let (status, body) = system
        .http
        .get(&format!("{}/metrics", system.url(kind)))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of a family's series whose labels include every one of `labels`.
fn sum(series: &[(String, f64)], family: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(name, _)| {
            (name == family || name.starts_with(&format!("{family}{{")))
                && labels.iter().all(|label| name.contains(label))
        })
        .map(|(_, value)| value)
        .sum()
}

engine_tests!(every_metric_family_moves_when_its_event_happens: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn every_metric_family_moves_when_its_event_happens(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let before = scrape(&system, ServiceKind::Comments).await;
    let post = system.create_post("Counted").await;
    let comment = system.comment(&post, "A fine post").await;
    system.until_status(&post, &comment, "approved").await;
    // A live stream open on query.
    let mut live = tokio::net::TcpStream::connect(system.addrs[&ServiceKind::Query])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut live,
        b"GET /posts/live HTTP/1.1\r\nHost: query\r\n\r\n",
    )
    .await
    .unwrap();
    let mut first = [0u8; 64];
    let _ = tokio::io::AsyncReadExt::read(&mut live, &mut first).await;

    // One process holds every part here: any part's /metrics shows them all.
    let after = scrape(&system, ServiceKind::Posts).await;
    let moved =
        |family: &str, labels: &[&str]| sum(&after, family, labels) > sum(&before, family, labels);
    for (family, labels) in [
        (
            "blog_http_requests_total",
            &[
                r#"service="comments""#,
                r#"route="/posts/{id}/comments""#,
                r#"status="201""#,
            ][..],
        ),
        (
            "blog_http_request_duration_seconds_count",
            &[r#"service="posts""#, r#"route="/posts/create""#],
        ),
        (
            "blog_http_requests_total",
            &[r#"service="gateway""#, r#"route="/posts/create""#],
        ),
        (
            "blog_events_published_total",
            &[r#"service="comments""#, r#"type="CommentCreated""#],
        ),
        (
            "blog_events_published_total",
            &[r#"service="moderation""#, r#"type="CommentModerated""#],
        ),
        (
            "blog_events_consumed_total",
            &[
                r#"service="query""#,
                r#"type="CommentUpdated""#,
                r#"outcome="applied""#,
            ],
        ),
        (
            "blog_event_pipeline_seconds_count",
            &[r#"service="moderation""#, r#"type="CommentCreated""#],
        ),
    ] {
        assert!(moved(family, labels), "{family} {labels:?} did not move");
    }
    for (family, labels) in [
        ("blog_outbox_depth", &[r#"service="comments""#][..]),
        ("blog_db_connections_max", &[r#"service="query""#]),
    ] {
        assert!(
            after.iter().any(
                |(name, _)| name.starts_with(family) && labels.iter().all(|l| name.contains(l))
            ),
            "{family} {labels:?} is not reported"
        );
    }
    // Gauges are the process's: tests running beside this one set the
    // same series, so their values are checked on the real binary (one
    // system per process) in process.rs.
    assert!(
        after
            .iter()
            .any(|(name, _)| name.starts_with("blog_live_streams{"))
    );
    // Labels stay bounded: an unknown path is one series, not one per path.
    system
        .get(&format!(
            "{}/no/such/{}",
            system.url(ServiceKind::Posts),
            post
        ))
        .await;
    let scanned = scrape(&system, ServiceKind::Posts).await;
    assert!(!scanned.iter().any(|(name, _)| name.contains(&post)));
    assert!(
        sum(
            &scanned,
            "blog_http_requests_total",
            &[r#"route="unmatched""#]
        ) >= 1.0
    );
    drop(live);
    system.shutdown().await;
}

engine_tests!(redeliveries_dead_letters_and_lag_are_counted: sqlite_http, postgres_http);
async fn redeliveries_dead_letters_and_lag_are_counted(engines: support::Engines) {
    // A subscriber that fails every event, and one that is not ready (the
    // bus holds its events for it).
    let failing = support::stand_in::failing_subscriber().await;
    let unready = support::stand_in::unready_subscriber().await;
    let system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers = vec![failing.clone(), unready.clone()];
        settings.delivery_attempts = 2;
    })
    .await;
    let before = scrape(&system, ServiceKind::EventBus).await;
    system.create_post("Undeliverable").await;
    let bus = &[r#"service="event-bus""#, r#"type="PostCreated""#][..];
    let unready_lag =
        format!(r#"blog_bus_subscriber_lag{{service="event-bus",subscriber="{unready}"}} 1"#);
    let failing_lag =
        format!(r#"blog_bus_subscriber_lag{{service="event-bus",subscriber="{failing}"}} 0"#);
    // Set aside, counted, and the cursor past it (a dead letter does
    // not hold the subscriber back); this subscriber's label is this
    // test's own.
    system
        .until("the failing subscriber's event is set aside", || async {
            let (_, text) = system
                .http
                .get(&format!("{}/metrics", system.url(ServiceKind::EventBus)))
                .await
                .unwrap();
            let text = String::from_utf8(text.to_vec()).unwrap();
            let now = scrape(&system, ServiceKind::EventBus).await;
            sum(&now, "blog_events_dead_lettered_total", bus)
                > sum(&before, "blog_events_dead_lettered_total", bus)
                && text.lines().any(|line| line == failing_lag)
                && text.lines().any(|line| line == unready_lag)
        })
        .await;
    let after = scrape(&system, ServiceKind::EventBus).await;
    assert!(
        sum(&after, "blog_events_redelivered_total", bus)
            > sum(&before, "blog_events_redelivered_total", bus)
    );
    system.shutdown().await;
}

/// Runs the real binary's operator command `args` against `system`'s parts:
/// its exit code and what it printed.
async fn blog_cli(system: &TestSystem, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_blog"));
    command.args(args);
    for (flag, kind) in [
        ("--event-bus-url", ServiceKind::EventBus),
        ("--posts-url", ServiceKind::Posts),
        ("--comments-url", ServiceKind::Comments),
        ("--query-url", ServiceKind::Query),
        ("--moderation-url", ServiceKind::Moderation),
        ("--gateway-url", ServiceKind::Gateway),
    ] {
        command.args([flag, &system.url(kind)]);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

engine_tests!(the_operators_commands_tell_the_truth_about_a_running_system: sqlite_http, postgres_http);
async fn the_operators_commands_tell_the_truth_about_a_running_system(engines: support::Engines) {
    let failing = support::stand_in::failing_subscriber().await;
    let mut system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers = vec![failing.clone()];
        settings.delivery_attempts = 1;
    })
    .await;
    let post = system.create_post("Operated").await;
    let comment = system.comment(&post, "Well run").await;
    system.until_status(&post, &comment, "approved").await;

    // Status: everything ready, the failing subscriber's dead letters counted.
    system
        .until("the failing subscriber's events are set aside", || async {
            let (_, out, _) = blog_cli(&system, &["status", "--json"]).await;
            let status: serde_json::Value = serde_json::from_str(&out).unwrap();
            status["bus"]["subscribers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["url"] == failing.as_str() && s["deadLetters"] == 4)
        })
        .await;
    let (code, out, _) = blog_cli(&system, &["status"]).await;
    assert_eq!(code, 0, "{out}");
    for part in crate::support::all().into_iter().map(ServiceKind::name) {
        assert!(
            out.lines()
                .any(|l| l.starts_with(part) && l.contains(" ok ") && l.contains(" yes ")),
            "{part} healthy and ready in:\n{out}"
        );
    }

    // The log, whole and by type.
    let (code, out, _) = blog_cli(
        &system,
        &["events", "tail", "--from", "1", "--no-follow", "--json"],
    )
    .await;
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(support::types(&lines), support::ONE_COMMENT_FLOW);
    let (_, out, _) = blog_cli(
        &system,
        &[
            "events",
            "tail",
            "--from",
            "1",
            "--no-follow",
            "--type",
            "CommentModerated",
        ],
    )
    .await;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("CommentModerated") && out.contains("approved"),
        "{out}"
    );

    // Dead letters: listed, then sent again (and set aside again).
    let (code, out, _) = blog_cli(&system, &["dead-letters", "list", "--json"]).await;
    assert_eq!(code, 0);
    let letters: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 4, "{letters}");
    assert!(
        letters
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["subscriber"] == failing.as_str())
    );
    let (code, out, _) = blog_cli(
        &system,
        &["dead-letters", "replay", "--subscriber", &failing],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("4 dead letter(s) sent again"), "{out}");
    // Without a filter: the bus's and every service's own (none here).
    let (code, out, err) = blog_cli(&system, &["dead-letters", "replay"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dead letter(s) sent again"), "{out}");

    // A rebuild of query's read model from the log gives the same model.
    let before = system.query().await;
    let (code, out, err) = blog_cli(&system, &["replay", "query", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let progress: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(progress["phase"], "done");
    assert_eq!(progress["read"], 4);
    assert_eq!(progress["applied"], 3);
    assert_eq!(system.query().await, before);

    // A part that is down: exit code 1, and the table says which. (A
    // status is a moment's view: on a loaded machine another part may
    // answer its readiness too late once; asked again, it says.)
    system.stop(ServiceKind::Moderation).await;
    let mut last = String::new();
    let mut told = false;
    for _ in 0..10 {
        let (code, out, err) = blog_cli(&system, &["status"]).await;
        assert_eq!(code, 1, "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("moderation") && l.contains(" down ")),
            "{out}"
        );
        if err.trim_end().ends_with("not ready: moderation") {
            told = true;
            break;
        }
        last = format!("{out}{err}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(told, "only moderation is down, but:\n{last}");
    system.shutdown().await;
}

/// One server-sent event: its name and its data.
struct SseEvent {
    name: String,
    data: serde_json::Value,
}

/// Reads `GET /posts/live` as HTTP/1.0, so the body comes as it is (no
/// chunks) until the server closes; gzip-encoded if asked for.
struct LiveReader {
    socket: tokio::net::TcpStream,
    head: Vec<u8>,
    /// The answer's head has been read: the rest is body.
    head_read: bool,
    /// With gzip: the inflater, and the gzip header's bytes still to skip.
    gzip: Option<(flate2::Decompress, usize)>,
    /// Body bytes as they came over the wire.
    wire_bytes: usize,
    /// The event stream's text, not yet parsed.
    text: Vec<u8>,
}

impl LiveReader {
    async fn open(addr: std::net::SocketAddr) -> Self {
        Self::open_with(addr, "").await
    }

    async fn open_with(addr: std::net::SocketAddr, headers: &str) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /posts/live HTTP/1.0\r\nHost: query\r\n{headers}\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        Self {
            socket,
            head: Vec::new(),
            head_read: false,
            gzip: None,
            wire_bytes: 0,
            text: Vec::new(),
        }
    }

    fn take_body(&mut self, bytes: &[u8]) {
        self.wire_bytes += bytes.len();
        let Some((inflate, skip)) = self.gzip.as_mut() else {
            self.text.extend_from_slice(bytes);
            return;
        };
        let skipped = (*skip).min(bytes.len());
        *skip -= skipped;
        let mut input = &bytes[skipped..];
        while !input.is_empty() {
            self.text.reserve(64 * 1024);
            let before = inflate.total_in();
            inflate
                .decompress_vec(input, &mut self.text, flate2::FlushDecompress::Sync)
                .expect("a valid deflate stream");
            let used = usize::try_from(inflate.total_in() - before).unwrap();
            input = &input[used..];
        }
    }

    /// The next event (keep-alive comment lines skipped).
    async fn next(&mut self) -> SseEvent {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.text.drain(..end + 2).collect()).unwrap();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(event) = line.strip_prefix("event: ") {
                        name = Some(event.to_owned());
                    } else if let Some(line) = line.strip_prefix("data: ") {
                        data.push_str(line);
                    }
                }
                if let Some(name) = name {
                    let data = serde_json::from_str(&data).unwrap();
                    return SseEvent { name, data };
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                self.socket.read(&mut chunk),
            )
            .await
            .expect("an event within a minute")
            .unwrap();
            assert!(read > 0, "the live stream ended");
            if self.head_read {
                self.take_body(&chunk[..read]);
                continue;
            }
            self.head.extend_from_slice(&chunk[..read]);
            if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.head[..end]).to_lowercase();
                assert!(
                    head.starts_with("http/1.") && head.contains(" 200 "),
                    "{head}"
                );
                if head.contains("\r\ncontent-encoding: gzip") {
                    self.gzip = Some((flate2::Decompress::new(false), 10));
                }
                self.head_read = true;
                let body = self.head.split_off(end + 4);
                self.take_body(&body);
            }
        }
    }
}

engine_tests!(a_live_stream_in_gzip_says_the_same_in_fewer_bytes: sqlite_http);
async fn a_live_stream_in_gzip_says_the_same_in_fewer_bytes(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let post = system.create_post("Compressed").await;
    let mut earlier = Vec::new();
    for i in 0..20 {
        let content = format!("{i}{}", " words".repeat(50));
        earlier.push((system.comment(&post, &content).await, false));
    }
    system.until_decided(&post, &earlier).await;
    let query = system.addrs[&ServiceKind::Query];
    let mut plain = LiveReader::open(query).await;
    let mut gzip = LiveReader::open_with(query, "Accept-Encoding: br, gzip;q=0.8\r\n").await;
    let (first, first_gzip) = (plain.next().await, gzip.next().await);
    assert!(plain.gzip.is_none() && gzip.gzip.is_some());
    assert_eq!(
        (first.name.as_str(), &first.data),
        (first_gzip.name.as_str(), &first_gzip.data)
    );
    assert_eq!(first.data[&post]["comments"].as_array().unwrap().len(), 20);
    assert!(
        gzip.wire_bytes * 4 < plain.wire_bytes,
        "gzip {} bytes, plain {}",
        gzip.wire_bytes,
        plain.wire_bytes
    );
    // What comes next is the same in both, gzip or not.
    let comment = system.comment(&post, "after the snapshot").await;
    for reader in [&mut plain, &mut gzip] {
        loop {
            let event = reader.next().await;
            if event.name == "comment" && event.data["id"] == comment.as_str() {
                break;
            }
        }
    }
    system.shutdown().await;
}

engine_tests!(a_live_stream_sends_a_changed_comment_alone_and_a_new_post_whole: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_live_stream_sends_a_changed_comment_alone_and_a_new_post_whole(
    engines: support::Engines,
) {
    let system = TestSystem::spawn(engines).await;
    let post = system.create_post("Busy").await;
    // A post with many long comments: sending it whole for each change
    // would send all of them.
    let mut earlier = Vec::new();
    for i in 0..10 {
        earlier.push((
            system
                .comment(&post, &format!("{i} {}", "x".repeat(500)))
                .await,
            false,
        ));
    }
    system.until_decided(&post, &earlier).await;

    let mut live = LiveReader::open(system.addrs[&ServiceKind::Query]).await;
    let first = live.next().await;
    assert_eq!(first.name, "snapshot");
    assert_eq!(first.data[&post]["comments"].as_array().unwrap().len(), 10);
    // Changes made before the stream opened may still be on their way, and
    // gathered in one frame, most of the busy post's comments go whole with
    // it. A post made now comes after all of them: once it is here, they are
    // through.
    let marker = system.create_post("Marker").await;
    loop {
        let event = live.next().await;
        let here = match event.name.as_str() {
            "post" => event.data["id"] == marker.as_str(),
            "snapshot" => event.data.get(&marker).is_some(),
            _ => false,
        };
        if here {
            break;
        }
    }

    let comment = system.comment(&post, "short").await;
    // A new post, and a first comment on it: most of its comments changed,
    // so it goes whole, the smaller of the two.
    let other = system.create_post("Next").await;
    let first_of_other = system.comment(&other, "first").await;
    let mut seen = Vec::new();
    let (mut approved, mut other_done) = (false, false);
    let approved_in = |post: &serde_json::Value, id: &str| {
        post["comments"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["id"] == id && c["status"] == "approved"))
    };
    while !(approved && other_done) {
        let event = live.next().await;
        match event.name.as_str() {
            // Changes made just before the stream opened may still be on
            // their way: sent again, they say what the snapshot said.
            "comment" if event.data["id"] != comment.as_str() => {
                assert!(
                    earlier
                        .iter()
                        .any(|(id, _)| event.data["id"] == id.as_str())
                );
                assert_eq!(event.data["status"], "approved");
            }
            "comment" => {
                assert_eq!(event.data["postId"], post.as_str());
                assert_eq!(event.data["content"], "short");
                approved |= event.data["status"] == "approved";
            }
            "post" => {
                assert_eq!(
                    event.data["id"],
                    other.as_str(),
                    "only the new post goes whole"
                );
                assert_eq!(event.data["title"], "Next");
                other_done |= approved_in(&event.data, &first_of_other);
            }
            // Changes the stream may have missed (a replica's listener
            // connecting late) are sent again as a snapshot.
            "snapshot" => {
                approved |= approved_in(&event.data[&post], &comment);
                other_done |= approved_in(&event.data[&other], &first_of_other);
            }
            name => panic!("unexpected event {name}"),
        }
        seen.push(event.name);
    }
    assert!(seen.contains(&"comment".to_owned()), "{seen:?}");
    system.shutdown().await;
}
