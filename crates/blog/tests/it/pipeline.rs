//! The event pipeline under the faults of issue #8, one test per wedge: a
//! publisher that hangs up on the bus, a delivery to query cut off, a full
//! disk, a poison event on the HTTP bus, readiness while the relay cannot
//! publish, causality as a course peer sees it, and a short chaos run
//! (crashes of every part under write load). Each test runs on every engine
//! combination it applies to and names the combination when it fails.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use blog::settings::ServiceKind;
use blog_events::{Envelope, Event, PostCreated};
use blog_kit::client::HttpClient;
use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{CONVERGE, Engines, TestSystem, unique};

// ---------------------------------------------------------------------------
// Helpers

/// A `PostCreated` of ours (with a fresh event id) for a made-up post.
fn post_created(post: &str, title: &str) -> Value {
    Envelope::new(Event::PostCreated(PostCreated {
        id: post.to_owned(),
        title: title.to_owned(),
    }))
    .to_value()
}

/// Sends `POST {path}` with `body` to `addr` on a fresh TCP connection and
/// closes it once the request is written and `then` is done, without reading
/// the answer: a client that gives up (a timeout, a killed process) while the
/// server works on its request. Varying `then` (a few yields to the
/// scheduler, a millisecond or two) cuts requests off at different points of
/// their handling.
async fn post_and_hang_up(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    then: impl Future<Output = ()>,
) {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut rest = request.as_bytes();
    while !rest.is_empty() {
        stream.writable().await.expect("writable");
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write to {addr}: {e}"),
        }
    }
    then.await;
    drop(stream);
}

/// Lets other tasks run `n` times.
async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// `data.id` of an event.
fn data_id(event: &Value) -> Option<&str> {
    event["data"]["id"].as_str()
}

/// How many events of `event_type` the log holds for each `data.id`.
fn count_by_data_id(events: &[Value], event_type: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events.iter().filter(|e| e["type"] == event_type) {
        if let Some(id) = data_id(event) {
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// The ids of a post's comments as query lists them.
fn comment_ids(post: &Value) -> Vec<String> {
    post["comments"]
        .as_array()
        .map(|comments| {
            comments
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The id of the comment with `content` in a comments service answer (all of
/// a post's comments).
fn comment_with_content(comments: &Value, content: &str) -> Option<String> {
    comments
        .as_array()?
        .iter()
        .find(|c| c["content"] == content)
        .and_then(|c| c["id"].as_str().map(str::to_owned))
}

// ---------------------------------------------------------------------------
// A strict subscriber: a course peer the bus delivers to as it delivers to
// our services, which refuses (500) what it cannot handle, as the course's
// Node query does.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Refuses an event whose `data.title` is [`POISON`] while broken.
    Poison,
    /// Refuses a `CommentCreated` for a post it has not received.
    Causal,
}

const POISON: &str = "poison";

#[derive(Debug, Default, Clone)]
struct Seen {
    /// Every event accepted, in the order of first acceptance (redeliveries
    /// of an accepted event are answered 200 and not recorded again).
    accepted: Vec<Value>,
    keys: HashSet<String>,
    /// Ids of the posts whose `PostCreated` was accepted.
    posts: HashSet<String>,
    /// Every refusal, with why.
    refused: Vec<(Value, String)>,
}

impl Seen {
    fn accepted_of(&self, event_type: &str, id: &str) -> bool {
        self.keys.contains(&format!("{event_type}:{id}"))
    }

    fn position(&self, event_type: &str, id: &str) -> Option<usize> {
        self.accepted
            .iter()
            .position(|e| e["type"] == event_type && data_id(e) == Some(id))
    }
}

struct Strict {
    rule: Rule,
    broken: AtomicBool,
    seen: Mutex<Seen>,
}

impl Strict {
    fn receive(&self, event: Value) -> StatusCode {
        let mut seen = self.seen.lock().unwrap();
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        let id = data_id(&event).unwrap_or_default().to_owned();
        let refusal = match self.rule {
            Rule::Poison => (self.broken.load(Ordering::SeqCst)
                && event["data"]["title"] == POISON)
                .then(|| "poison while broken".to_owned()),
            Rule::Causal => {
                let post = event["data"]["postId"].as_str().unwrap_or_default();
                (event_type == "CommentCreated" && !seen.posts.contains(post))
                    .then(|| format!("comment {id} for post {post}, which has not arrived"))
            }
        };
        if let Some(why) = refusal {
            seen.refused.push((event, why));
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        if event_type == "PostCreated" {
            seen.posts.insert(id.clone());
        }
        if seen.keys.insert(format!("{event_type}:{id}")) {
            seen.accepted.push(event);
        }
        StatusCode::OK
    }
}

/// The strict subscriber's server, on a port of its own; stopped on drop.
struct StrictSubscriber {
    url: String,
    state: Arc<Strict>,
    server: tokio::task::JoinHandle<()>,
}

impl StrictSubscriber {
    async fn start(rule: Rule) -> Self {
        async fn receive(State(strict): State<Arc<Strict>>, body: Bytes) -> StatusCode {
            match serde_json::from_slice::<Value>(&body) {
                Ok(event) => strict.receive(event),
                Err(_) => StatusCode::BAD_REQUEST,
            }
        }
        let state = Arc::new(Strict {
            rule,
            broken: AtomicBool::new(true),
            seen: Mutex::new(Seen::default()),
        });
        let router = Router::new()
            .route("/events", post(receive))
            .with_state(state.clone());
        let (base, server) = support::stand_in::serve(router).await;
        let url = format!("{base}/events");
        Self { url, state, server }
    }

    fn seen(&self) -> Seen {
        self.state.seen.lock().unwrap().clone()
    }

    fn mend(&self) {
        self.state.broken.store(false, Ordering::SeqCst);
    }
}

impl Drop for StrictSubscriber {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The bus's `GET /subscribers` entry for `url`.
async fn subscriber_status(system: &TestSystem, url: &str) -> Value {
    let bus = system.url(ServiceKind::EventBus);
    let answer = system.get(&format!("{bus}/subscribers")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["subscribers"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["url"] == url).cloned())
        .unwrap_or_else(|| panic!("no subscriber {url} in {}", answer.body))
}

async fn dead_letters(system: &TestSystem) -> Value {
    let bus = system.url(ServiceKind::EventBus);
    let answer = system.get(&format!("{bus}/dead-letters")).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "GET /dead-letters: {answer:?}"
    );
    answer.body
}

// ---------------------------------------------------------------------------
// 1. Bus, cancelled publish

engine_tests!(publishers_that_hang_up_do_not_wedge_the_bus => hang_ups_on_the_bus: sqlite_http, postgres_http);

async fn hang_ups_on_the_bus(engines: Engines) {
    let system = TestSystem::spawn(engines).await;
    let bus = system.addrs[&ServiceKind::EventBus];
    let publish = format!("{}/events", system.url(ServiceKind::EventBus));
    let mut sent = HashSet::new();
    let mut normal = Vec::new();
    for round in 0..20 {
        let abandoned: Vec<Value> = (0..20)
            .map(|i| post_created(&unique("p"), &format!("abandoned {round}.{i}")))
            .collect();
        sent.extend(
            abandoned
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        // Cut off at spread points: after a few scheduler turns, or after
        // up to 5 ms, so some land while the bus commits.
        join_all(abandoned.iter().zip(0_u64..).map(|(event, i)| async move {
            if i % 2 == 0 {
                post_and_hang_up(bus, "/events", event, yields(i)).await;
            } else {
                let wait = Duration::from_micros(250 * i);
                post_and_hang_up(bus, "/events", event, tokio::time::sleep(wait)).await;
            }
        }))
        .await;
        let event = post_created(&unique("p"), &format!("normal {round}"));
        let id = event["id"].as_str().unwrap().to_owned();
        let answer = system.post(&publish, &event).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{engines}: round {round}: a publish after 20 abandoned ones: {answer:?}"
        );
        sent.insert(id.clone());
        normal.push(id);
    }
    let events = system.bus_events().await;
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
    assert_eq!(seqs, expected, "{engines}: seq numbers 1..n, in order");
    let mut ids = HashSet::new();
    for event in &events {
        let id = event["id"].as_str().expect("an event id").to_owned();
        assert!(
            sent.contains(&id),
            "{engines}: an event nobody sent: {event}"
        );
        assert!(ids.insert(id), "{engines}: stored twice: {event}");
    }
    for id in &normal {
        assert!(
            ids.contains(id),
            "{engines}: acknowledged event {id} not stored"
        );
    }
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Query, cancelled delivery

engine_tests!(a_delivery_cut_off_does_not_leave_query_stale => cut_off_deliveries_to_query: sqlite_http, postgres_http, sqlite_nats, postgres_nats);

async fn cut_off_deliveries_to_query(engines: Engines) {
    let system = TestSystem::spawn(engines).await;
    let query = system.addrs[&ServiceKind::Query];
    let deliver = format!("{}/events", system.url(ServiceKind::Query));
    let posts = format!("{}/posts", system.url(ServiceKind::Query));
    for i in 0_u64..40 {
        // An answer to cache, which the cut-off delivery makes stale.
        let before = system.get(&posts).await;
        assert_eq!(before.status, StatusCode::OK, "{engines}: {before:?}");
        let post = unique("p");
        let event = post_created(&post, &format!("delivered twice {i}"));
        post_and_hang_up(query, "/events", &event, yields(i)).await;
        let again = system.post(&deliver, &event).await;
        assert_eq!(
            (again.status, &again.body),
            (StatusCode::OK, &json!({})),
            "{engines}: the redelivery of post {i}"
        );
        system
            .until(
                &format!(
                    "{engines}: query shows post {i} ({post}) after its redelivery answered 200"
                ),
                || async { system.get(&posts).await.body.get(&post).is_some() },
            )
            .await;
    }
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Disk full

/// A small tmpfs mounted for the test, unmounted (lazily, so open files do
/// not stop it) on drop, whether the test passed or not.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("mount point: {e}"))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0xA5_u8; 256 * 1024];
    let mut size = chunk.len();
    loop {
        match file.write(&chunk[..size]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                if size == 1 {
                    break;
                }
                size /= 2;
            }
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
}

/// Creates a post on the posts port; a storage failure must be a 503 with a
/// JSON error body, never a 500 and never a hang.
async fn create_post_on(http: &HttpClient, posts: &str, title: &str) -> Option<String> {
    let url = format!("{posts}/posts/create");
    let body = Bytes::from(json!({"title": title}).to_string());
    let (status, body) = http
        .post_json(&url, body)
        .await
        .unwrap_or_else(|e| panic!("POST {url} ({title}): no answer: {e}"));
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match status {
        StatusCode::CREATED => Some(body["id"].as_str().expect("id").to_owned()),
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(
                body["errors"].as_array().is_some_and(|e| !e.is_empty()),
                "a 503 without a JSON error body: {body}"
            );
            None
        }
        other => panic!("POST {url} ({title}) answered {other} {body}, not 201 or 503"),
    }
}

#[tokio::test]
async fn writes_fail_cleanly_on_a_full_disk_and_resume_when_space_returns() {
    let engines = Engines {
        postgres: false,
        nats: false,
    };
    let disk = match SmallDisk::mount("8m") {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("skipped: cannot mount tmpfs: {e}");
            return;
        }
    };
    let system = TestSystem::spawn_in(engines, disk.path().join("data")).await;
    let posts = system.url(ServiceKind::Posts);
    // A client that gives up long before a test would: a hang is a failure.
    let http = HttpClient::new(Duration::from_secs(10));
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let id = create_post_on(&http, &posts, &format!("before {i}"))
            .await
            .unwrap_or_else(|| panic!("{engines}: a write before the disk filled failed"));
        acknowledged.push(id);
    }

    let filler = disk.path().join("filler");
    fill(&filler);
    let mut refused = 0;
    let mut attempts = 0;
    let started = std::time::Instant::now();
    // Bounded by count and by time (a write may wait on its relay for a
    // while), not a measurement: the test asserts no duration.
    while refused < 5 && attempts < 500 && started.elapsed() < CONVERGE {
        attempts += 1;
        if let Some(id) = create_post_on(&http, &posts, &format!("while full {attempts}")).await {
            acknowledged.push(id);
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "{engines}: on the full disk, {} of {attempts} writes answered 201 before 5 answered 503",
        attempts - refused
    );
    assert!(
        refused > 0,
        "{engines}: {attempts} writes on a full disk all succeeded; the test did not fill it"
    );

    std::fs::remove_file(&filler).expect("remove the filler");
    let recovered = Mutex::new(None);
    let tried = AtomicUsize::new(0);
    system
        .until(
            &format!("{engines}: writes succeed again once space returned"),
            || async {
                let n = tried.fetch_add(1, Ordering::Relaxed);
                let id = create_post_on(&http, &posts, &format!("after {n}")).await;
                let ok = id.is_some();
                *recovered.lock().unwrap() = id;
                ok
            },
        )
        .await;
    let recovered = recovered.into_inner().unwrap().expect("recovered");
    acknowledged.push(recovered.clone());
    // Not one lucky connection: every write succeeds from now on, several at
    // once (a pool holds several connections).
    for group in 0..4 {
        let answers = join_all((0..5).map(|i| {
            let title = format!("after recovery {group}.{i}");
            let (http, posts) = (&http, &posts);
            async move { (create_post_on(http, posts, &title).await, title) }
        }))
        .await;
        for (id, title) in answers {
            let id = id.unwrap_or_else(|| {
                panic!("{engines}: a write after recovery ({title}) answered 503")
            });
            acknowledged.push(id);
        }
    }

    let query = format!("{}/posts", system.url(ServiceKind::Query));
    system
        .until_ok(
            CONVERGE,
            &format!("{engines}: query has every acknowledged post"),
            || async {
                let view = system.get(&query).await;
                if view.status != StatusCode::OK {
                    return Err(format!("GET /posts: {view:?}"));
                }
                let missing: Vec<_> = acknowledged
                    .iter()
                    .filter(|id| view.body.get(id.as_str()).is_none())
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?} (recovered: {recovered})"))
                }
            },
        )
        .await;
    let counts = count_by_data_id(&system.bus_events().await, "PostCreated");
    for id in &acknowledged {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{engines}: post {id} must be on the bus exactly once"
        );
    }
    system.shutdown().await;
    drop(disk);
}

// ---------------------------------------------------------------------------
// 4. Poison event on the HTTP bus

engine_tests!(a_poison_event_is_set_aside_then_replayed => poison_on_the_bus: sqlite_http, postgres_http, sqlite_nats, postgres_nats);

async fn poison_on_the_bus(engines: Engines) {
    let strict = StrictSubscriber::start(Rule::Poison).await;
    let url = strict.url.clone();
    let system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers.push(url.clone());
        settings.delivery_attempts = 3;
    })
    .await;
    let bus = system.url(ServiceKind::EventBus);

    let poison = system.create_post(POISON).await;
    let mut good = Vec::new();
    for i in 0..3 {
        good.push(system.create_post(&format!("good {i}")).await);
    }
    system
        .until(
            &format!("{engines}: the good posts reach the strict subscriber past the poison one"),
            || async {
                let seen = strict.seen();
                good.iter().all(|id| seen.accepted_of("PostCreated", id))
            },
        )
        .await;
    assert!(
        !strict.seen().accepted_of("PostCreated", &poison),
        "{engines}: the strict subscriber never accepts poison while broken"
    );
    system
        .until(
            &format!("{engines}: GET /subscribers counts one dead letter for {url}"),
            || async { subscriber_status(&system, &url).await["deadLetters"] == 1 },
        )
        .await;

    let events = system.bus_events().await;
    let poison_seq = events
        .iter()
        .find(|e| e["type"] == "PostCreated" && data_id(e) == Some(poison.as_str()))
        .and_then(|e| e["seq"].as_i64())
        .expect("the poison event on the bus");
    let letters = dead_letters(&system).await;
    let list = letters
        .as_array()
        .unwrap_or_else(|| panic!("{engines}: GET /dead-letters is not an array: {letters}"));
    assert_eq!(list.len(), 1, "{engines}: one dead letter: {letters}");
    let letter = &list[0];
    assert_eq!(letter["subscriber"], url, "{engines}: {letter}");
    assert_eq!(letter["seq"], poison_seq, "{engines}: {letter}");
    assert!(
        letter["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{engines}: a reason: {letter}"
    );
    assert_eq!(
        letter["attempts"], 3,
        "{engines}: set aside after delivery_attempts = 3: {letter}"
    );
    let refusals = strict.seen().refused.len();
    assert_eq!(
        refusals, 3,
        "{engines}: the subscriber refused the poison event once per attempt"
    );
    // Our own services handled it: no dead letter for them.
    let status = system.get(&format!("{bus}/subscribers")).await.body;
    for subscriber in status["subscribers"].as_array().expect("subscribers") {
        if subscriber["url"] != url {
            assert_eq!(subscriber["deadLetters"], 0, "{engines}: {subscriber}");
        }
    }

    strict.mend();
    let replay = system
        .post(&format!("{bus}/dead-letters/replay"), &json!({}))
        .await;
    assert_eq!(
        (replay.status, &replay.body),
        (StatusCode::OK, &json!({"replayed": 1})),
        "{engines}: POST /dead-letters/replay"
    );
    system
        .until(
            &format!("{engines}: the replayed poison event reaches the mended subscriber"),
            || async { strict.seen().accepted_of("PostCreated", &poison) },
        )
        .await;
    system
        .until(
            &format!("{engines}: no dead letter left after the replay"),
            || async {
                subscriber_status(&system, &url).await["deadLetters"] == 0
                    && dead_letters(&system).await == json!([])
            },
        )
        .await;
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Readiness tells the truth

engine_tests!(readiness_says_when_the_relay_cannot_publish => readiness_while_the_bus_is_away: sqlite_http, postgres_http);

async fn readiness_while_the_bus_is_away(engines: Engines) {
    let mut system = TestSystem::spawn(engines).await;
    let posts = system.url(ServiceKind::Posts);
    let readyz = format!("{posts}/readyz");
    system.stop(ServiceKind::EventBus).await;
    // Kept in the outbox: still a 201.
    let post = system.create_post_at(&posts, "while the bus is away").await;
    system
        .until_ok(
            CONVERGE,
            &format!("{engines}: posts' /readyz is 503 and names the relay"),
            || async {
                let answer = system.get(&readyz).await;
                let text = answer.body.to_string();
                if answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && text.to_lowercase().contains("relay")
                {
                    Ok(())
                } else {
                    Err(format!("last answer {} {text}", answer.status))
                }
            },
        )
        .await;
    system.start(ServiceKind::EventBus).await;
    system
        .until_ok(
            CONVERGE,
            &format!("{engines}: posts ready again once the bus is back"),
            || async {
                let answer = system.get(&readyz).await;
                if answer.status == StatusCode::OK {
                    Ok(())
                } else {
                    Err(format!("last answer {} {}", answer.status, answer.body))
                }
            },
        )
        .await;
    system
        .until(
            &format!("{engines}: the post written while the bus was away reaches query"),
            || async { system.query().await.get(&post).is_some() },
        )
        .await;
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Causality for course peers

engine_tests!(a_course_peer_receives_each_post_before_its_comments => causality_for_a_course_peer: sqlite_http, postgres_http, sqlite_nats, postgres_nats);

/// One course flow: a post, then two comments on it at once; their ids.
async fn flow(
    system: &TestSystem,
    posts: &str,
    comments: &str,
    engines: Engines,
    i: usize,
) -> (String, Vec<String>) {
    let post = system.create_post_at(posts, &format!("flow {i}")).await;
    let on_post = format!("{comments}/posts/{post}/comments");
    let (first, second) = (format!("first {i}"), format!("second {i}"));
    let (first_body, second_body) = (json!({"content": first}), json!({"content": second}));
    let (a, b) = tokio::join!(
        system.post(&on_post, &first_body),
        system.post(&on_post, &second_body),
    );
    let mut ids = Vec::new();
    for (answer, content) in [(a, &first), (b, &second)] {
        assert_eq!(answer.status, StatusCode::CREATED, "{engines}: {answer:?}");
        ids.push(comment_with_content(&answer.body, content).expect("the new comment"));
    }
    (post, ids)
}

async fn causality_for_a_course_peer(engines: Engines) {
    const FLOWS: usize = 30;
    let strict = StrictSubscriber::start(Rule::Causal).await;
    let url = strict.url.clone();
    let system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers.push(url.clone());
    })
    .await;
    let posts = system.url(ServiceKind::Posts);
    let comments = system.url(ServiceKind::Comments);
    // All flows at once, as many browsers would: each creates a post and, as
    // soon as it has the post's id, two comments on it at once.
    // (post, [first comment, second comment])
    let flows: Vec<(String, Vec<String>)> =
        join_all((0..FLOWS).map(|i| flow(&system, &posts, &comments, engines, i))).await;

    system
        .until(
            &format!("{engines}: the strict subscriber got every post and comment, or refused one"),
            || async {
                let seen = strict.seen();
                !seen.refused.is_empty()
                    || flows.iter().all(|(post, ids)| {
                        seen.accepted_of("PostCreated", post)
                            && ids.iter().all(|c| seen.accepted_of("CommentCreated", c))
                    })
            },
        )
        .await;
    let seen = strict.seen();
    let refused: Vec<&String> = seen.refused.iter().map(|(_, why)| why).collect();
    let distinct: HashSet<&String> = refused.iter().copied().collect();
    assert!(
        refused.is_empty(),
        "{engines}: {} comment(s) reached the course peer before their post ({} refusal(s) with redeliveries): {distinct:#?}",
        distinct.len(),
        refused.len()
    );
    for (post, ids) in &flows {
        let post_at = seen.position("PostCreated", post).expect("post received");
        for comment in ids {
            let comment_at = seen
                .position("CommentCreated", comment)
                .expect("comment received");
            assert!(
                post_at < comment_at,
                "{engines}: comment {comment} came before its post {post}"
            );
        }
    }

    // Query lists each post's comments in the order comments created them.
    let query = format!("{}/posts", system.url(ServiceKind::Query));
    system
        .until(
            &format!("{engines}: query has both comments of every post"),
            || async {
                let view = system.get(&query).await.body;
                flows
                    .iter()
                    .all(|(post, _)| comment_ids(&view[post.as_str()]).len() == 2)
            },
        )
        .await;
    let view = system.get(&query).await.body;
    for (post, _) in &flows {
        let listed = system
            .get(&format!("{comments}/posts/{post}/comments"))
            .await
            .body;
        let created_order: Vec<String> = listed
            .as_array()
            .expect("comments")
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            comment_ids(&view[post.as_str()]),
            created_order,
            "{engines}: query lists post {post}'s comments in creation order"
        );
    }
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Chaos: every part crashed and restarted under write load

#[derive(Debug, Default)]
struct Written {
    posts: Vec<String>,
    /// (post, comment id, content) of every comment answered 201.
    comments: Vec<(String, String, String)>,
}

/// Writes comments (and now and then a post) until `stop`, recording every
/// write answered 201; failures (a part down, a 503) are expected and
/// retried.
async fn write_load(
    writer: usize,
    http: HttpClient,
    posts_url: String,
    comments_url: String,
    mut posts: Vec<String>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Written {
    let mut written = Written::default();
    let mut n = 0_usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let ok = if n.is_multiple_of(25) {
            let body = Bytes::from(json!({"title": format!("chaos {writer}.{n}")}).to_string());
            match http
                .post_json(&format!("{posts_url}/posts/create"), body)
                .await
            {
                Ok((StatusCode::CREATED, body)) => {
                    let body: Value = serde_json::from_slice(&body).expect("json");
                    let id = body["id"].as_str().expect("id").to_owned();
                    posts.push(id.clone());
                    written.posts.push(id);
                    true
                }
                _ => false,
            }
        } else {
            let post = posts[n % posts.len()].clone();
            let content = if n.is_multiple_of(4) {
                format!("orange {writer}.{n}")
            } else {
                format!("fine {writer}.{n}")
            };
            let body = Bytes::from(json!({"content": content}).to_string());
            match http
                .post_json(&format!("{comments_url}/posts/{post}/comments"), body)
                .await
            {
                Ok((StatusCode::CREATED, body)) => {
                    let body: Value = serde_json::from_slice(&body).expect("json");
                    let id = comment_with_content(&body, &content).expect("the new comment");
                    written.comments.push((post, id, content));
                    progress.fetch_add(1, Ordering::SeqCst);
                    true
                }
                _ => false,
            }
        };
        if !ok {
            // The part is down or refusing: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    written
}

/// Whether query and the bus show every acknowledged write exactly once,
/// decided; `Err` says what is not (yet) so.
async fn converged(system: &TestSystem, seeds: &[String], written: &Written) -> Result<(), String> {
    let url = format!("{}/posts", system.url(ServiceKind::Query));
    let view = system.get(&url).await;
    if view.status != StatusCode::OK {
        return Err(format!("GET /posts: {view:?}"));
    }
    let view = view.body;
    for post in seeds.iter().chain(&written.posts) {
        if view.get(post).is_none() {
            return Err(format!("post {post} missing in query"));
        }
    }
    let mut shown: HashMap<String, (usize, String)> = HashMap::new();
    for post in view.as_object().expect("object").values() {
        for comment in post["comments"].as_array().into_iter().flatten() {
            let id = comment["id"].as_str().unwrap_or_default().to_owned();
            let status = comment["status"].as_str().unwrap_or_default().to_owned();
            let entry = shown.entry(id).or_insert((0, status));
            entry.0 += 1;
        }
    }
    for (_, id, content) in &written.comments {
        let expected = if content.contains("orange") {
            "rejected"
        } else {
            "approved"
        };
        match shown.get(id) {
            None => return Err(format!("comment {id} ({content}) missing in query")),
            Some((n, _)) if *n != 1 => {
                return Err(format!("comment {id} shown {n} times in query"));
            }
            Some((_, status)) if status != expected => {
                return Err(format!("comment {id} ({content}) is {status} in query"));
            }
            Some(_) => {}
        }
    }
    let events = system.bus_events().await;
    let created = count_by_data_id(&events, "CommentCreated");
    let moderated = count_by_data_id(&events, "CommentModerated");
    for (_, id, _) in &written.comments {
        if !created.contains_key(id) {
            return Err(format!("no CommentCreated for {id} on the bus"));
        }
    }
    for (id, n) in &created {
        if *n != 1 {
            return Err(format!("{n} CommentCreated for {id} on the bus"));
        }
        match moderated.get(id) {
            Some(1) => {}
            Some(n) => return Err(format!("{n} CommentModerated for {id} on the bus")),
            None => return Err(format!("no CommentModerated for {id} on the bus yet")),
        }
    }
    let posts = count_by_data_id(&events, "PostCreated");
    for post in seeds.iter().chain(&written.posts) {
        if posts.get(post) != Some(&1) {
            return Err(format!(
                "{:?} PostCreated for {post} on the bus",
                posts.get(post)
            ));
        }
    }
    Ok(())
}

engine_tests!(crashes_under_load_lose_nothing_and_apply_nothing_twice => chaos: sqlite_http, postgres_http);

async fn chaos(engines: Engines) {
    /// Concurrent writers, so crashes land on batches, not single writes.
    const WRITERS: usize = 4;
    /// Acknowledged comments between one crash and the next.
    const BETWEEN_CRASHES: usize = 150;
    const VICTIMS: [ServiceKind; 5] = [
        ServiceKind::EventBus,
        ServiceKind::Posts,
        ServiceKind::Comments,
        ServiceKind::Query,
        ServiceKind::Moderation,
    ];
    let mut system = TestSystem::spawn(engines).await;
    let mut seeds = Vec::new();
    for i in 0..3 {
        seeds.push(system.create_post(&format!("chaos seed {i}")).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..WRITERS)
        .map(|writer| {
            tokio::spawn(write_load(
                writer,
                system.http.clone(),
                system.url(ServiceKind::Posts),
                system.url(ServiceKind::Comments),
                seeds.clone(),
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    for round in 0..2 {
        for kind in VICTIMS {
            let before = progress.load(Ordering::SeqCst);
            system
                .until(
                    &format!(
                        "{engines}: writes go on before crash {round} of {}",
                        kind.name()
                    ),
                    || async { progress.load(Ordering::SeqCst) >= before + BETWEEN_CRASHES },
                )
                .await;
            system.crash(kind).await;
            system.start(kind).await;
        }
    }
    let before = progress.load(Ordering::SeqCst);
    system
        .until(
            &format!("{engines}: writes go on after the last restart"),
            || async { progress.load(Ordering::SeqCst) >= before + BETWEEN_CRASHES },
        )
        .await;
    stop.store(true, Ordering::SeqCst);
    let mut written = Written::default();
    for task in load {
        let mine = task.await.expect("a writer task");
        written.posts.extend(mine.posts);
        written.comments.extend(mine.comments);
    }
    eprintln!(
        "{engines}: chaos: {} comments and {} posts acknowledged across {} crashes",
        written.comments.len(),
        written.posts.len(),
        2 * VICTIMS.len()
    );
    assert!(
        !written.comments.is_empty(),
        "{engines}: no comment was written"
    );
    system
        .until_ok(
            Duration::from_secs(60),
            &format!(
                "{engines}: after the crashes, every one of {} acknowledged comments once, decided, and each moderated once",
                written.comments.len()
            ),
            || converged(&system, &seeds, &written),
        )
        .await;
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// A subscriber that is down (its /readyz says so) is not handed dead letters

/// A subscriber that fails every event while its `/readyz` answers 503, as
/// one of our services does while its storage is down.
struct Unready {
    url: String,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Unready {
    async fn start() -> Self {
        let ready = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let (r1, r2, f) = (ready.clone(), ready.clone(), failed.clone());
        let router = Router::new()
            .route(
                "/events",
                post(move || {
                    let (ready, failed) = (r1.clone(), f.clone());
                    async move {
                        if ready.load(Ordering::SeqCst) {
                            StatusCode::OK
                        } else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            )
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let ready = r2.clone();
                    async move {
                        if ready.load(Ordering::SeqCst) {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            );
        let (base, server) = support::stand_in::serve(router).await;
        let url = format!("{base}/events");
        Self {
            url,
            ready,
            failed,
            server,
        }
    }
}

impl Drop for Unready {
    fn drop(&mut self) {
        self.server.abort();
    }
}

engine_tests!(an_unready_subscriber_gets_its_events_late_not_set_aside => unready_subscriber: sqlite_http, postgres_http, sqlite_nats, postgres_nats);

async fn unready_subscriber(engines: Engines) {
    let unready = Unready::start().await;
    let url = unready.url.clone();
    let system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers.push(url.clone());
        settings.delivery_attempts = 2;
    })
    .await;
    let post = system.create_post("while a subscriber is down").await;
    // Well past the attempts after which a ready subscriber's event is set
    // aside: still nothing is.
    system
        .until(
            &format!("{engines}: the unready subscriber failed the event 4 times"),
            || async { unready.failed.load(Ordering::SeqCst) >= 4 },
        )
        .await;
    assert_eq!(
        subscriber_status(&system, &url).await["deadLetters"],
        0,
        "{engines}: an event is not set aside while its subscriber says it is not ready"
    );
    unready.ready.store(true, Ordering::SeqCst);
    system
        .until(
            &format!("{engines}: delivered once the subscriber is ready"),
            || async { subscriber_status(&system, &url).await["lag"] == 0 },
        )
        .await;
    assert_eq!(subscriber_status(&system, &url).await["deadLetters"], 0);
    assert!(system.query().await.get(&post).is_some());
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// An event the bus refuses for good is set aside; the outbox goes on

/// A course-like bus (no batch route) that refuses, with a 400, any post
/// titled `refused` while its flag is up, and keeps the titles of what it
/// stored.
struct RefusingBus {
    url: String,
    stored: Arc<Mutex<Vec<String>>>,
    refusing: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

async fn refusing_bus() -> RefusingBus {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let refusing = Arc::new(AtomicBool::new(true));
    let (kept, refuse) = (stored.clone(), refusing.clone());
    let (url, server) = support::stand_in::on_events(move |event| {
        let title = event["data"]["title"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if title == "refused" && refuse.load(Ordering::Relaxed) {
            return (StatusCode::BAD_REQUEST, "never".to_owned());
        }
        kept.lock().unwrap().push(title);
        (StatusCode::OK, r#"{"status":"OK"}"#.to_owned())
    })
    .await;
    RefusingBus {
        url,
        stored,
        refusing,
        server,
    }
}

#[tokio::test]
async fn an_event_the_bus_refuses_is_set_aside_and_the_outbox_goes_on() {
    let RefusingBus {
        url: bus,
        stored,
        refusing,
        server,
    } = refusing_bus().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = blog::settings::Settings::local(dir.path().join("data"));
    settings.bus = blog_bus::BusConfig::Http { url: bus };
    let service = blog::startup::build(ServiceKind::Posts, &settings)
        .await
        .expect("posts");
    let listener = blog::startup::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let running = blog::startup::spawn(ServiceKind::Posts, service, listener).expect("spawn");
    let posts = running.url();
    let http = HttpClient::default();
    for title in ["refused", "fine"] {
        let (status, _) = http
            .post_json(
                &format!("{posts}/posts/create"),
                Bytes::from(json!({ "title": title }).to_string()),
            )
            .await
            .expect("posts answers");
        assert_eq!(status, StatusCode::CREATED, "{title}");
    }
    let started = std::time::Instant::now();
    while !stored.lock().unwrap().contains(&"fine".to_owned()) {
        assert!(
            started.elapsed() < CONVERGE,
            "the event behind the refused one never reached the bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http
        .get(&format!("{posts}/dead-letters"))
        .await
        .expect("dead letters");
    assert_eq!(status, StatusCode::OK);
    let letters: Value = serde_json::from_slice(&body).expect("json");
    let letters = letters.as_array().expect("an array");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["subject"], "outbox", "{letters:?}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("400")),
        "{letters:?}"
    );
    let (ready, _) = http.get(&format!("{posts}/readyz")).await.expect("readyz");
    assert_eq!(ready, StatusCode::OK, "the relay is healthy again");

    // Once the bus takes it, the letter is sent again: back in the outbox,
    // then published, and no longer a dead letter.
    refusing.store(false, Ordering::Relaxed);
    let (status, body) = http
        .post_json(&format!("{posts}/dead-letters/replay"), Bytes::new())
        .await
        .expect("replay");
    assert_eq!(status, StatusCode::OK);
    let replayed: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(replayed, json!({"replayed": 1, "failed": 0}));
    let started = std::time::Instant::now();
    while !stored.lock().unwrap().contains(&"refused".to_owned()) {
        assert!(
            started.elapsed() < CONVERGE,
            "the replayed event never reached the bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = http
        .get(&format!("{posts}/dead-letters"))
        .await
        .expect("dead letters");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        json!([])
    );
    running.stop().await.expect("stop");
    server.abort();
}

// ---------------------------------------------------------------------------
// A subscriber of ours gets only the event types it says it applies

engine_tests!(the_bus_sends_a_subscriber_only_the_types_it_applies => only_what_it_applies: sqlite_http, postgres_http);

async fn only_what_it_applies(engines: Engines) {
    // Says, as our services do, that it applies PostCreated only.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = received.clone();
    let (base, server) = support::stand_in::on_events(move |event| {
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        kept.lock().unwrap().push(kind);
        ([(blog_kit::http::CONSUMES_HEADER, "PostCreated")], "{}")
    })
    .await;
    let url = format!("{base}/events");
    let extra = url.clone();
    let system = TestSystem::spawn_with(engines, |settings| {
        settings.extra_subscribers.push(extra);
    })
    .await;
    // The first delivery tells the bus what the subscriber applies.
    let post = system.create_post("types").await;
    system
        .until(
            &format!("{engines}: the subscriber answered once"),
            || async {
                subscriber_status(&system, &url).await["consumes"] == json!(["PostCreated"])
            },
        )
        .await;
    let comment = system.comment(&post, "only posts, please").await;
    system.until_status(&post, &comment, "approved").await;
    let second = system.create_post("after the comment").await;
    system
        .until(
            &format!("{engines}: the second post reached it"),
            || async { subscriber_status(&system, &url).await["lag"] == 0 },
        )
        .await;
    let kinds = received.lock().unwrap().clone();
    assert_eq!(
        kinds,
        vec!["PostCreated".to_owned(), "PostCreated".to_owned()],
        "{engines}: only the type it applies, for {post} and {second}"
    );
    // Our own services say what they apply too; posts applies nothing.
    let posts = format!("{}/events", system.url(ServiceKind::Posts));
    assert_eq!(
        subscriber_status(&system, &posts).await["consumes"],
        json!([])
    );
    system.shutdown().await;
    server.abort();
}
