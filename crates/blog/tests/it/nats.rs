//! JetStream-specific faults, against real NATS servers: a private
//! `nats-server` killed and restarted while events flow, replicas sharing
//! consumers, a consumer killed between its commit and its ack, and a poison
//! event. Each test runs only where NATS (and, for replicas, PostgreSQL) is
//! available; see `support::engines`.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use axum::http::StatusCode;
use blog::settings::{ServiceKind, Settings};
use blog::startup::{self, Running};
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Engines, TestSystem, count_type};

fn nats_engines() -> Vec<Engines> {
    support::engines().into_iter().filter(|e| e.nats).collect()
}

/// A NATS server of the test's own, on a free port, with its own store.
struct PrivateNats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// A configuration file, for limits the command line cannot set.
    config: Option<std::path::PathBuf>,
}

impl PrivateNats {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `jetstream` (the body of a `jetstream { }` block) as its config.
    fn start_with(jetstream: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let config = (!jetstream.is_empty()).then(|| {
            let path = store.path().join("nats.conf");
            let dir = store.path().join("js");
            std::fs::write(
                &path,
                format!("jetstream {{\n  store_dir: {dir:?}\n  {jetstream}\n}}\n"),
            )
            .unwrap();
            path
        });
        let mut nats = Self {
            child: None,
            port,
            store,
            config,
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let mut command = Command::new(binary);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"]);
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command.arg("-sd").arg(self.store.path()),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nats-server (Debian package nats-server) must be installed for the NATS tests",
            );
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nats-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nats_server_installed() -> bool {
    let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

engine_tests!(nats_killed_and_restarted_while_events_flow_loses_nothing: sqlite_nats, postgres_nats);
async fn nats_killed_and_restarted_while_events_flow_loses_nothing(engines: support::Engines) {
    if !nats_server_installed() {
        assert!(
            std::env::var("BLOG_TEST_REQUIRE_ENGINES").as_deref() != Ok("1"),
            "nats-server is required"
        );
        eprintln!("note: nats-server not installed; skipping the NATS restart test");
        return;
    }
    let mut nats = PrivateNats::start();
    let system = TestSystem::spawn_on(engines, &nats.url()).await;
    let post = system.create_post("through a NATS crash").await;
    let mut comments = Vec::new();
    let readyz = format!("{}/readyz", system.url(ServiceKind::Posts));
    for i in 0..30 {
        if i == 10 {
            nats.kill();
            // Readiness tells the truth: posts cannot publish, and says why.
            system
                .until("posts is not ready while NATS is away", || async {
                    let answer = system.get(&readyz).await;
                    answer.status == StatusCode::SERVICE_UNAVAILABLE
                        && answer.body.to_string().contains("bus")
                })
                .await;
        }
        if i == 20 {
            nats.restart();
        }
        let content = if i % 3 == 0 {
            format!("orange {i}")
        } else {
            format!("ok {i}")
        };
        comments.push((system.comment(&post, &content).await, i % 3 == 0));
    }
    system.until_decided(&post, &comments).await;
    system
        .until("posts is ready again", || async {
            system.get(&readyz).await.status == StatusCode::OK
        })
        .await;
    let events = system.bus_events().await;
    assert_eq!(count_type(&events, "PostCreated"), 1, "{engines}");
    assert_eq!(count_type(&events, "CommentCreated"), 30, "{engines}");
    assert_eq!(
        count_type(&events, "CommentModerated"),
        30,
        "{engines}: each moderated once"
    );
    assert_eq!(count_type(&events, "CommentUpdated"), 30, "{engines}");
    system.shutdown().await;
}

engine_tests!(two_replicas_of_comments_and_moderation_moderate_each_comment_once: postgres_nats);
async fn two_replicas_of_comments_and_moderation_moderate_each_comment_once(
    engines: support::Engines,
) {
    let system = TestSystem::spawn(engines).await;
    let comments_2 = system.spawn_replica(ServiceKind::Comments).await;
    let moderation_2 = system.spawn_replica(ServiceKind::Moderation).await;
    let query_2 = system.spawn_replica(ServiceKind::Query).await;
    let post = system.create_post("load").await;
    // Writes spread over both comments replicas, concurrently.
    let urls = [system.url(ServiceKind::Comments), comments_2.url()];
    let writes = (0..60).map(|i| {
        let url = format!("{}/posts/{post}/comments", urls[i % 2]);
        let content = if i % 4 == 0 {
            format!("orange {i}")
        } else {
            format!("fine {i}")
        };
        let system = &system;
        async move {
            let answer = system.post(&url, &json!({"content": content})).await;
            assert_eq!(answer.status, StatusCode::CREATED);
        }
    });
    futures_util::future::join_all(writes).await;
    system
        .until("all 60 decided in query", || async {
            system.query().await[&post]["comments"]
                .as_array()
                .is_some_and(|c| c.len() == 60 && c.iter().all(|c| c["status"] != "pending"))
        })
        .await;
    let events = system.bus_events().await;
    assert_eq!(count_type(&events, "CommentCreated"), 60);
    assert_eq!(
        count_type(&events, "CommentModerated"),
        60,
        "each comment moderated exactly once"
    );
    assert_eq!(count_type(&events, "CommentUpdated"), 60);
    // The second query replica serves the same full model.
    let other = system.get(&format!("{}/posts", query_2.url())).await.body;
    assert_eq!(other, system.query().await);
    for replica in [comments_2, moderation_2, query_2] {
        replica.stop().await.expect("clean stop");
    }
    system.shutdown().await;
}

async fn moderation_consumer(
    js: &jetstream::Context,
    stream: &str,
) -> jetstream::consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_consumer("moderation")
        .await
        .unwrap()
}

async fn js(system: &TestSystem) -> (jetstream::Context, String) {
    let blog_bus::BusConfig::Nats(nats) = &system.settings.bus else {
        panic!("a NATS system")
    };
    let client = async_nats::connect(nats.servers.as_str())
        .await
        .expect("connect");
    (jetstream::new(client), nats.stream.name.clone())
}

engine_tests!(a_consumer_killed_between_commit_and_ack_changes_nothing_on_redelivery: sqlite_nats, postgres_nats);
async fn a_consumer_killed_between_commit_and_ack_changes_nothing_on_redelivery(
    engines: support::Engines,
) {
    let mut system = TestSystem::spawn(engines).await;
    let (js, stream) = js(&system).await;
    system.stop(ServiceKind::Moderation).await;
    let post = system.create_post("p").await;
    let comment = system.comment(&post, "an orange").await;

    // Act as a moderation replica: take the event from moderation's
    // durable consumer, apply it (the commit), then die before acking.
    let consumer = moderation_consumer(&js, &stream).await;
    let mut payload = None;
    // The stopped service's last pull request may still hold the event
    // for one ack wait; keep pulling until it is ours.
    let started = std::time::Instant::now();
    while payload.is_none() && started.elapsed() < support::CONVERGE {
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let value: Value = serde_json::from_slice(&message.payload).unwrap();
            if value["type"] == "CommentCreated" {
                payload = Some(value);
            }
            // Dropped without an ack: the process "died" here.
        }
    }
    let event = payload.expect("the CommentCreated event");
    system.start(ServiceKind::Moderation).await;
    let applied = system
        .post(
            &format!("{}/events", system.url(ServiceKind::Moderation)),
            &event,
        )
        .await;
    assert_eq!(applied.status, StatusCode::OK);
    system.until_status(&post, &comment, "rejected").await;

    // JetStream redelivers to the restarted service, which acks a no-op.
    system
        .until("redelivered and acked", || async {
            let mut consumer = moderation_consumer(&js, &stream).await;
            let info = consumer.info().await.unwrap();
            info.num_ack_pending == 0 && info.num_pending == 0
        })
        .await;
    let events = system.bus_events().await;
    assert_eq!(
        count_type(&events, "CommentModerated"),
        1,
        "{engines}: the redelivery changed nothing"
    );
    system.shutdown().await;
}

engine_tests!(a_poison_event_goes_to_the_dead_letters_and_the_rest_flows: sqlite_nats, postgres_nats);
async fn a_poison_event_goes_to_the_dead_letters_and_the_rest_flows(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let (js, stream) = js(&system).await;
    // Something that is not a valid event, on a subject consumers read.
    js.publish(
        format!("{stream}.events.CommentCreated"),
        r#"{"type":"CommentCreated","data":{"id":7}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let post = system.create_post("after the poison").await;
    let comment = system.comment(&post, "still handled").await;
    system.until_status(&post, &comment, "approved").await;
    for kind in [
        ServiceKind::Moderation,
        ServiceKind::Query,
        ServiceKind::Comments,
    ] {
        let url = format!("{}/dead-letters", system.url(kind));
        system
            .until(&format!("{kind:?} dead letter"), || async {
                system
                    .get(&url)
                    .await
                    .body
                    .as_array()
                    .is_some_and(|letters| letters.len() == 1)
            })
            .await;
        let letters = system.get(&url).await.body;
        assert_eq!(letters[0]["seq"], 1, "{kind:?}");
        assert!(
            letters[0]["reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("malformed"),
            "{letters}"
        );
    }
    // Sent again, it is still no event: it fails again and stays.
    let moderation = system.url(ServiceKind::Moderation);
    let replayed = system
        .post(&format!("{moderation}/dead-letters/replay"), &json!({}))
        .await;
    assert_eq!(replayed.status, StatusCode::OK);
    assert_eq!(replayed.body, json!({"replayed": 0, "failed": 1}));
    let letters = system.get(&format!("{moderation}/dead-letters")).await.body;
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    system.shutdown().await;
}

/// A service on `bus` (and SQLite), started in the background; its URL.
async fn serve_posts(bus: blog_bus::BusConfig, dir: &std::path::Path) -> (String, Running) {
    let mut settings = Settings::local(dir.to_owned());
    settings.bus = bus;
    let service = startup::build(ServiceKind::Posts, &settings)
        .await
        .expect("build");
    let listener = startup::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let running = startup::spawn(ServiceKind::Posts, service, listener).unwrap();
    (running.url(), running)
}

#[tokio::test]
async fn a_stream_too_big_for_the_servers_is_unready_with_the_reason() {
    if nats_engines().is_empty() {
        return;
    }
    if !nats_server_installed() {
        assert!(
            std::env::var("BLOG_TEST_REQUIRE_ENGINES").as_deref() != Ok("1"),
            "nats-server is required"
        );
        return;
    }
    // Servers that may store 32 MiB, as a production config limits them.
    let nats = PrivateNats::start_with("max_file_store: 32MB");
    let http = blog_kit::client::HttpClient::new(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let bus = |max_bytes: u64| {
        let mut config = blog_bus::NatsConfig::parse(&nats.url())
            .unwrap()
            .with_stream(&support::unique("T"));
        config.stream.max_bytes = max_bytes;
        blog_bus::BusConfig::Nats(config)
    };

    let (url, too_big) = serve_posts(bus(1 << 30), &dir.path().join("a")).await;
    let created = http
        .post_json(
            &format!("{url}/posts/create"),
            bytes::Bytes::from_static(br#"{"title":"never crosses"}"#),
        )
        .await
        .unwrap();
    // Taken and kept in the outbox: it crosses once the stream is placed.
    assert!(created.0.is_success() || created.0 == StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = http.get(&format!("{url}/readyz")).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("cannot be placed"), "{body}");
    assert!(
        body.contains("1.0 GiB"),
        "the reason names the size: {body}"
    );
    too_big.abort();

    // The same servers take a stream that fits.
    let (url, fits) = serve_posts(bus(8 << 20), &dir.path().join("b")).await;
    let mut ready = false;
    for _ in 0..200 {
        if let Ok((status, _)) = http.get(&format!("{url}/readyz")).await
            && status.is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "a stream that fits is placed and the service is ready"
    );
    fits.abort();
}
