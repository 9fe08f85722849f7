//! The real binary: `blog up` killed with SIGKILL keeps everything it
//! acknowledged, and `blog routes` prints the Ingress table.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use blog::settings::ServiceKind;
use blog_kit::client::HttpClient;
use bytes::Bytes;
use serde_json::{Value, json};

/// Where each part of `blog up` listens.
struct Ports(HashMap<ServiceKind, u16>);

impl Ports {
    fn of(&self, kind: ServiceKind) -> u16 {
        self.0[&kind]
    }

    fn url(&self, kind: ServiceKind) -> String {
        format!("http://127.0.0.1:{}", self.of(kind))
    }

    /// `--<part>-port N` for each part.
    fn args(&self) -> Vec<String> {
        blog::parts::up()
            .flat_map(|part| {
                [
                    format!("--{}-port", part.name),
                    self.of(part.kind).to_string(),
                ]
            })
            .collect()
    }
}

/// A free port for each part of `blog up`. Every listener is held until
/// the last is bound: a port released before the next is asked for can be
/// handed out again, and two parts then race for it.
fn ports() -> Ports {
    let held: Vec<(ServiceKind, std::net::TcpListener)> = blog::parts::up()
        .map(|part| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (part.kind, listener)
        })
        .collect();
    Ports(
        held.iter()
            .map(|(kind, listener)| (*kind, listener.local_addr().unwrap().port()))
            .collect(),
    )
}

struct Up {
    child: Child,
    gateway: String,
}

fn start(data_dir: &std::path::Path, ports: &Ports) -> Up {
    start_with(data_dir, ports, &[])
}

/// `blog up` with `extra` arguments after the ports.
fn start_with(data_dir: &std::path::Path, ports: &Ports, extra: &[&str]) -> Up {
    let child = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(ports.args())
        .args(extra)
        .env("BLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("blog up");
    Up {
        child,
        gateway: ports.url(ServiceKind::Gateway),
    }
}

impl Up {
    /// POSTs `body` to `path` on the gateway, which must answer 201.
    async fn created(&self, http: &HttpClient, path: &str, body: Value) -> Value {
        let (status, answer) = http
            .post_json(
                &format!("{}{path}", self.gateway),
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201);
        serde_json::from_slice(&answer).unwrap()
    }

    /// Creates a post through the gateway; returns its id.
    async fn create_post(&self, http: &HttpClient, title: &str) -> String {
        let post = self
            .created(http, "/posts/create", json!({ "title": title }))
            .await;
        post["id"].as_str().unwrap().to_owned()
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails half-way leaves no `blog up` running behind it.
impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn json(http: &HttpClient, url: &str) -> Option<Value> {
    let (status, body) = http.get(url).await.ok()?;
    status
        .is_success()
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let http = HttpClient::new(Duration::from_secs(5));
    let mut up = start(dir.path(), &ports);
    let posts_url = format!("{}/posts", up.gateway);
    until("up", async || json(&http, &posts_url).await.is_some()).await;

    let id = up.create_post(&http, "survives").await;
    up.created(
        &http,
        &format!("/posts/{id}/comments"),
        json!({"content": "orange"}),
    )
    .await;
    // Acknowledged: now kill -9 before anything had a chance to flow.
    up.kill();

    let mut up = start(dir.path(), &ports);
    until("the comment is rejected after the restart", async || {
        json(&http, &posts_url)
            .await
            .is_some_and(|posts| posts[&id]["comments"][0]["status"] == "rejected")
    })
    .await;
    let events: Value = json(
        &http,
        &format!("{}/events", ports.url(ServiceKind::EventBus)),
    )
    .await
    .unwrap();
    assert_eq!(
        support::types(events.as_array().unwrap()),
        support::ONE_COMMENT_FLOW
    );
    up.kill();
}

fn nats_url() -> String {
    std::env::var("BLOG_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `blog up` on NATS still answers the course's HTTP bus protocol on the
/// bus port, as a bridge: a course service publishes there and reads the
/// log there, and our services (which read the stream) take its events.
#[tokio::test]
async fn up_on_nats_bridges_the_course_http_bus() {
    let nats = nats_url();
    let Ok(client) = async_nats::connect(nats.as_str()).await else {
        assert!(
            std::env::var("BLOG_TEST_REQUIRE_ENGINES").as_deref() != Ok("1"),
            "NATS is required"
        );
        return;
    };
    let stream = format!("UPBRIDGE{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let http = HttpClient::new(Duration::from_secs(5));
    let mut up = start_with(
        dir.path(),
        &ports,
        &["--bus", &nats, "--nats-stream", &stream],
    );
    let bus = ports.url(ServiceKind::EventBus);
    let posts_url = format!("{}/posts", up.gateway);
    until("up", async || json(&http, &posts_url).await.is_some()).await;
    until("the bridge is ready", async || {
        json(&http, &format!("{bus}/readyz")).await.is_some()
    })
    .await;

    let id = up.create_post(&http, "on NATS").await;
    // What the course's comments service sends the bus.
    let (status, body) = http
        .post_json(
            &format!("{bus}/events"),
            Bytes::from(
                json!({"type": "CommentCreated", "data": {
                    "id": "from-a-course-service", "content": "bridged",
                    "postId": id, "status": "pending"}})
                .to_string(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    let stored: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stored["status"], "OK");
    assert!(stored["seq"].as_u64().is_some(), "{stored}");

    // Query read it from the stream; moderation decided on it.
    until("query shows the bridged comment", async || {
        json(&http, &posts_url)
            .await
            .is_some_and(|posts| posts[&id]["comments"][0]["id"] == "from-a-course-service")
    })
    .await;
    until("the bus's log shows moderation's decision", async || {
        json(&http, &format!("{bus}/events"))
            .await
            .is_some_and(|events| {
                events.as_array().unwrap().iter().any(|e| {
                    e["type"] == "CommentModerated"
                        && e["data"]["id"] == "from-a-course-service"
                        && e["data"]["status"] == "approved"
                        && e["seq"].is_u64()
                })
            })
    })
    .await;
    // A type that cannot be a subject can never be stored: 400, not 503.
    let (status, _) = http
        .post_json(
            &format!("{bus}/events"),
            Bytes::from(json!({"type": "Not a subject", "data": {}}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400);

    up.kill();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}

#[test]
fn routes_prints_the_ingress_table() {
    let output = Command::new(env!("CARGO_BIN_EXE_blog"))
        .arg("routes")
        .output()
        .unwrap();
    assert!(output.status.success());
    let routes: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        routes[0],
        json!({"path": "/posts/create", "pathType": "Prefix", "service": "posts-clusterip-srv", "port": 4000})
    );
    assert_eq!(routes.as_array().unwrap().len(), 4);
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["serve", "--help"],
        vec!["routes", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_blog"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty());
    }
    let serve = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for option in ["--bus", "--data-dir", "--port", "--subscribers", "BLOG_BUS"] {
        assert!(text.contains(option), "serve --help lists {option}");
    }
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Clients that send a request's head one byte at a time, or never finish
/// it, are closed after the header-read timeout, and while they hold the
/// listener's every connection the others are served as soon as they go.
#[tokio::test]
async fn slow_clients_are_closed_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let http = HttpClient::new(Duration::from_secs(10));
    let mut up = start_with(
        dir.path(),
        &ports,
        &["--max-connections", "32", "--header-read-timeout", "1"],
    );
    let posts = format!("{}/posts", ports.url(ServiceKind::Posts));
    until("up", async || json(&http, &posts).await.is_some()).await;

    // The open-file limit was raised to what the process may have.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", up.child.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(files[0], files[1], "soft open-file limit = hard: {limits}");

    // More slow clients than the listener takes at once.
    let mut slow = Vec::new();
    for _ in 0..48 {
        let mut socket =
            tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Posts)))
                .await
                .unwrap();
        socket
            .write_all(b"GET /posts HTTP/1.1\r\nHo")
            .await
            .unwrap();
        slow.push(socket);
    }
    // Served nonetheless, once the first slow ones are closed.
    until("a normal request is answered", async || {
        json(&http, &posts).await.is_some()
    })
    .await;
    // Every slow client is closed by the server (EOF or reset), none answered.
    for (i, socket) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    !answer.starts_with("HTTP/1.1 200"),
                    "slow client {i} was answered: {answer}"
                );
            }
            Err(_) => panic!("slow client {i} was never closed"),
        }
    }
    // A client that keeps sending its head a byte at a time, never ending
    // it: the timeout counts from the start of the head, so it is closed too.
    let mut dribbler = tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Posts)))
        .await
        .unwrap();
    let (mut from_server, mut to_server) = dribbler.split();
    to_server
        .write_all(b"GET /posts HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let closed = async {
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                // EOF, a reset or an error answer: the server let go.
                _ = from_server.read(&mut buf) => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if to_server.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .is_ok(),
        "a client sending its head a byte at a time was never closed"
    );
    up.kill();
}

/// The scheduling policy of each of a process's threads, by thread name.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // "tid (name) state ...": the policy is the 41st field, the
            // 39th after the name (which may hold spaces).
            let (head, rest) = stat.rsplit_once(") ")?;
            let name = head.split_once(" (")?.1.to_owned();
            let policy = rest.split_whitespace().nth(38)?.parse().ok()?;
            Some((name, policy))
        })
        .collect()
}

/// The binary serves live streams on threads of their own at the idle
/// priority (`--live-priority`), so a frame's fan-out to many streams
/// takes only what the rest leaves; everything else keeps its priority.
/// (A stream through the gateway is open meanwhile.)
#[tokio::test]
async fn the_binary_serves_live_streams_at_the_idle_priority() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let http = HttpClient::new(Duration::from_secs(10));
    let up = start(dir.path(), &ports);
    let query = ports.url(ServiceKind::Query);
    until("up", async || {
        json(&http, &format!("{query}/posts")).await.is_some()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Gateway)))
        .await
        .unwrap();
    stream
        .write_all(b"GET /posts/live HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("event: snapshot") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        head.extend_from_slice(&buf[..n]);
    }
    let threads = thread_policies(up.child.id());
    let of = |name: &str| -> Vec<u32> {
        threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, policy)| *policy)
            .collect()
    };
    let (rest, live) = (of("tokio-rt-worker"), of("blog-background"));
    assert!(!rest.is_empty() && !live.is_empty(), "{threads:?}");
    assert!(rest.iter().all(|&p| p == SCHED_OTHER), "{threads:?}");
    assert!(live.iter().all(|&p| p == SCHED_IDLE), "{threads:?}");
}

/// Idle live streams cost little: the snapshot every stream gets first is
/// built once and shared, not copied per stream; and what they took is
/// given back once they close.
#[tokio::test]
async fn idle_live_streams_cost_little_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STREAMS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let http = HttpClient::new(Duration::from_secs(10));
    let cap = (STREAMS + 1).to_string();
    let mut up = start_with(dir.path(), &ports, &["--max-live-streams", &cap]);
    let query = ports.url(ServiceKind::Query);
    until("up", async || {
        json(&http, &format!("{query}/posts")).await.is_some()
    })
    .await;
    // A snapshot of about 100 KiB.
    let posts = format!("{}/posts/create", ports.url(ServiceKind::Posts));
    for i in 0..500 {
        let title = format!("{i:04} {}", "t".repeat(190));
        let (status, _) = http
            .post_json(&posts, Bytes::from(json!({ "title": title }).to_string()))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201);
    }
    until("query has every post", async || {
        json(&http, &format!("{query}/posts"))
            .await
            .is_some_and(|p| p.as_object().unwrap().len() == 500)
    })
    .await;
    let snapshot_bytes = http.get(&format!("{query}/posts")).await.unwrap().1.len();

    // One stream first, so that everything a first stream allocates once
    // (the shared snapshot, buffers) is counted before.
    let open = async || {
        let mut socket =
            tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Query)))
                .await
                .unwrap();
        socket
            .write_all(b"GET /posts/live HTTP/1.1\r\nHost: q\r\n\r\n")
            .await
            .unwrap();
        // Read the whole snapshot, so nothing waits in the server's buffers.
        let mut seen = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while seen < snapshot_bytes {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended early");
            seen += n;
        }
        socket
    };
    // Measured once query counts the streams open (its gauge), not after a
    // guessed pause.
    let streams_open = async |n: usize| {
        until(&format!("{n} live streams counted"), async || {
            let Ok((_, body)) = http.get(&format!("{query}/metrics")).await else {
                return false;
            };
            String::from_utf8_lossy(&body)
                .lines()
                .any(|l| l == format!(r#"blog_live_streams{{service="query"}} {n}"#))
        })
        .await;
    };
    let first = open().await;
    streams_open(1).await;
    let pid = up.child.id();
    let before = rss_kib(pid);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(open().await);
    }
    streams_open(STREAMS + 1).await;
    let during = rss_kib(pid);
    let per_stream = (during.saturating_sub(before)) as f64 / STREAMS as f64;
    eprintln!(
        "live streams: {STREAMS} idle streams of a {} KiB snapshot: RSS {before} KiB -> {during} KiB, {per_stream:.1} KiB each",
        snapshot_bytes / 1024
    );
    assert!(
        per_stream <= 16.0,
        "an idle live stream takes {per_stream:.1} KiB (at most 16)"
    );

    // The cap is the first stream and these: one more is refused, in the
    // documented shape.
    let (status, body) = http.get(&format!("{query}/posts/live")).await.unwrap();
    assert_eq!(status.as_u16(), 503, "a stream beyond the cap is refused");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["errors"][0]["message"].is_string(), "{body}");

    // Once they close, the memory they took goes back to the system (the
    // allocator is asked to return what it holds free), not only to the
    // allocator's free lists.
    drop(streams);
    streams_open(1).await;
    let took = during.saturating_sub(before);
    until("the streams' memory is returned", async || {
        let after = rss_kib(pid);
        after.saturating_sub(before) <= took / 4
    })
    .await;
    eprintln!("live streams: RSS {} KiB after they closed", rss_kib(pid));
    drop(first);
    up.kill();
}

/// `blog up` says what it started, where, what it runs on and what needs
/// attention, and stops cleanly on SIGTERM (what Ctrl-C and Kubernetes send).
#[test]
fn up_says_what_it_runs_and_stops_cleanly() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--client-dir")
        .arg(dir.path().join("no-client"))
        .args([
            "--gateway-port",
            "0",
            "--posts-port",
            "0",
            "--comments-port",
            "0",
        ])
        .args([
            "--query-port",
            "0",
            "--moderation-port",
            "0",
            "--event-bus-port",
            "0",
        ])
        .env("BLOG_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("blog up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Ctrl-C stops everything");
        said.push(line);
        if done {
            break;
        }
    }
    let text = said.join("\n");
    assert!(text.contains("blog is up in"), "{text}");
    assert!(text.contains("open http://127.0.0.1:"), "{text}");
    for part in crate::support::all()
        .into_iter()
        .map(blog::settings::ServiceKind::name)
    {
        assert!(
            said.iter()
                .any(|l| l.trim_start().starts_with(part) && l.contains("ms")),
            "a line for {part} with its address and readiness: {text}"
        );
    }
    assert!(text.contains("the embedded HTTP event bus"), "{text}");
    assert!(text.contains("the client is not built"), "{text}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("stopped in")),
        "says it stopped: {rest:?}"
    );
}

/// One user action followed across the system by its correlation id: the
/// post and the comment sent with one `x-request-id`, as a client would
/// for one session's action; every part that handles them names it.
#[tokio::test]
async fn one_comment_is_followed_across_services_by_its_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("blog.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let ports = ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["up", "--log-format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(ports.args())
        .env(
            "BLOG_LOG",
            "warn,blog_kit::correlation=debug,blog_bus=debug",
        )
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("blog up");
    let gateway = ports.url(ServiceKind::Gateway);
    let http = HttpClient::default();
    until("the gateway is ready", async || {
        json(&http, &format!("{gateway}/readyz")).await.is_some()
    })
    .await;
    let correlation = "follow-me-0042";
    // A request with its own x-request-id, as a browser's fetch would send it.
    let send = async |path: &str, body: Value| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.to_string();
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Gateway)))
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: posts.com\r\nContent-Type: application/json\r\n\
             X-Request-Id: {correlation}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("x-request-id: {correlation}")),
            "the answer names the id: {answer}"
        );
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        serde_json::from_str::<Value>(body).unwrap()
    };
    let post = send("/posts/create", json!({"title": "Followed"})).await;
    let post = post["id"].as_str().unwrap().to_owned();
    send(
        &format!("/posts/{post}/comments"),
        json!({"content": "orange"}),
    )
    .await;
    until("query shows the comment rejected", async || {
        json(&http, &format!("{gateway}/posts"))
            .await
            .is_some_and(|posts| posts[&post]["comments"][0]["status"] == "rejected")
    })
    .await;
    // A decision for a comment comments does not know: its warning is
    // logged inside the apply's span, which names the event and its cause.
    let stray = json!({"type": "CommentModerated", "correlationId": "stray-decision",
        "data": {"id": "no-such-comment", "postId": post, "status": "approved", "content": "x"}});
    let (status, _) = http
        .post_json(
            &format!("{}/events", ports.url(ServiceKind::Comments)),
            Bytes::from(stray.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();

    // Each JSON line that names the id, by the part its span or fields name.
    let text = std::fs::read_to_string(&log_path).unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    for line in text.lines().filter(|l| l.contains(correlation)) {
        let line: Value = serde_json::from_str(line).unwrap();
        let service = line["fields"]["service"]
            .as_str()
            .or(line["span"]["service"].as_str())
            .unwrap_or_default()
            .to_owned();
        let what = line["fields"]["type"]
            .as_str()
            .map_or_else(|| "request".to_owned(), str::to_owned);
        seen.push((service, what));
    }
    for (service, what) in [
        ("gateway", "request"),
        ("posts", "request"),
        ("comments", "request"),
        ("query", "PostCreated"),
        ("moderation", "CommentCreated"),
        ("comments", "CommentModerated"),
        ("query", "CommentCreated"),
        ("query", "CommentUpdated"),
    ] {
        assert!(
            seen.iter().any(|(s, w)| s == service && w == what),
            "no line of {service} handling {what} with the correlation id; saw {seen:?}"
        );
    }
    let warning = text
        .lines()
        .filter(|l| l.contains("unknown comment"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .next()
        .unwrap_or_else(|| panic!("no warning for the stray decision:\n{text}"));
    let apply = &warning["span"];
    assert_eq!(apply["name"], "apply", "{warning}");
    assert_eq!(apply["service"], "comments", "{warning}");
    assert_eq!(apply["type"], "CommentModerated", "{warning}");
    assert_eq!(apply["correlation_id"], "stray-decision", "{warning}");
}

/// The gauges of a running binary (one system in the process): live
/// streams, the bus's log and lag, outboxes and pools.
#[tokio::test]
async fn the_gauges_of_a_running_binary_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let mut up = start(dir.path(), &ports);
    let http = HttpClient::default();
    let gateway = up.gateway.clone();
    until("up", async || {
        json(&http, &format!("{gateway}/posts")).await.is_some()
    })
    .await;
    let post = up.create_post(&http, "gauged").await;
    // Two live streams open on query.
    let mut streams = Vec::new();
    for _ in 0..2 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.of(ServiceKind::Query)))
            .await
            .unwrap();
        tcp.write_all(b"GET /posts/live HTTP/1.1\r\nHost: query\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 64];
        let _ = tcp.read(&mut first).await.unwrap();
        streams.push(tcp);
    }
    let metrics = async || {
        let (_, body) = http
            .get(&format!("{}/metrics", ports.url(ServiceKind::EventBus)))
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    until("the post reaches every subscriber", async || {
        let text = metrics().await;
        value(&text, r#"blog_bus_last_seq{service="event-bus"}"#) == Some(1.0)
            && text
                .lines()
                .filter(|l| l.starts_with("blog_bus_subscriber_lag{"))
                .count()
                == 4
            && text
                .lines()
                .filter(|l| l.starts_with("blog_bus_subscriber_lag{"))
                .all(|l| l.ends_with(" 0"))
    })
    .await;
    let text = metrics().await;
    assert_eq!(
        value(&text, r#"blog_live_streams{service="query"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"blog_outbox_depth{service="posts"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"blog_db_connections_max{service="posts"}"#),
        Some(4.0),
        "SQLite's pool size: {text}"
    );
    assert!(
        text.contains(r#"blog_events_published_total{service="posts",type="PostCreated"} 1"#),
        "{text}"
    );
    assert!(!text.contains(&post), "no id in a label");
    drop(streams);
    until("the closed streams are counted out", async || {
        value(&metrics().await, r#"blog_live_streams{service="query"}"#) == Some(0.0)
    })
    .await;
    up.kill();
}

/// A service whose bus is away keeps what it wrote in its outbox, and its
/// gauges say so: the outbox's depth, and its storage pool in use and idle
/// within its size.
#[tokio::test]
async fn the_outbox_and_pool_gauges_of_a_service_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let posts = ports.url(ServiceKind::Posts);
    // The bus's port, with nothing listening on it.
    let bus = ports.url(ServiceKind::EventBus);
    let mut child = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["serve", "posts", "--data-dir"])
        .arg(dir.path())
        .args(["--port", &ports.of(ServiceKind::Posts).to_string()])
        .args(["--bus", &bus])
        .env("BLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("blog serve posts");
    let http = HttpClient::new(Duration::from_secs(10));
    until("posts is up", async || {
        json(&http, &format!("{posts}/healthz")).await.is_some()
    })
    .await;
    for title in ["kept", "kept too"] {
        let (status, _) = http
            .post_json(
                &format!("{posts}/posts/create"),
                Bytes::from(json!({ "title": title }).to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "written and kept in the outbox");
    }
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    let mut text = String::new();
    until("the outbox's depth is 2", async || {
        let Ok((_, body)) = http.get(&format!("{posts}/metrics")).await else {
            return false;
        };
        text = String::from_utf8_lossy(&body).into_owned();
        value(&text, r#"blog_outbox_depth{service="posts"}"#) == Some(2.0)
    })
    .await;
    let pool = |state: &str| {
        value(
            &text,
            &format!(r#"blog_db_connections{{service="posts",state="{state}"}}"#),
        )
        .unwrap_or_else(|| panic!("the pool's {state} connections:\n{text}"))
    };
    let max = value(&text, r#"blog_db_connections_max{service="posts"}"#).expect("pool size");
    assert!(max >= 1.0, "{text}");
    assert!(pool("idle") + pool("used") <= max, "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// At an open-file limit of 1,024, 1,100 clients that never finish their
/// request on the gateway take no more than its share of the files: the
/// other parts go on answering, and events go on flowing between them. (Before,
/// the gateway took every file and the whole process stopped answering.)
#[tokio::test]
async fn a_flood_of_connections_on_one_port_leaves_the_other_parts_their_files() {
    use tokio::io::AsyncWriteExt;

    // This test's own sockets: as many as its own limit allows (raised,
    // where it may be), up to 1,100.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, 8192, 8192);
    let own = rlimit::increase_nofile_limit(8192).unwrap();
    let in_use = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    // Room left for the test's HTTP calls and the tests running beside it.
    let flood = own.saturating_sub(in_use + 128).min(1100);
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let child = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_blog"))
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .args(ports.args())
        // The slow clients stay for the whole test.
        .args(["--header-read-timeout", "300"])
        .env("BLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs blog up");
    let mut up = Up {
        child,
        gateway: ports.url(ServiceKind::Gateway),
    };
    let http = HttpClient::new(Duration::from_secs(5));
    let posts = ports.url(ServiceKind::Posts);
    let query = ports.url(ServiceKind::Query);
    until("up", async || {
        json(&http, &format!("{}/posts", up.gateway))
            .await
            .is_some()
    })
    .await;

    // Until the gateway's backlog is full too (the connections it does not
    // take wait there, and beyond it are refused or dropped). How many wait
    // depends on the machine (`net.core.somaxconn`, the test's own limit):
    // what matters is that the gateway is handed more than it may hold.
    let gateway = ("127.0.0.1", ports.of(ServiceKind::Gateway));
    let mut slow = Vec::new();
    for _ in 0..flood {
        let connect = tokio::net::TcpStream::connect(gateway);
        let Ok(Ok(mut socket)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            break;
        };
        if socket
            .write_all(b"GET /posts HTTP/1.1\r\nHo")
            .await
            .is_err()
        {
            break;
        }
        slow.push(socket);
    }
    // At 1,024 files, six listeners share what 256 reserved files leave:
    // 128 connections each.
    const GATEWAY_CAP: usize = (1024 - 256) / 6;
    assert!(
        slow.len() > GATEWAY_CAP,
        "only {} connections (own file limit {own}, {in_use} in use)",
        slow.len()
    );
    // The other parts answer, and a write flows from posts through the bus
    // to query.
    let (status, body) = http
        .post_json(
            &format!("{posts}/posts/create"),
            Bytes::from(json!({"title": "still here"}).to_string()),
        )
        .await
        .expect("posts answers");
    assert_eq!(status.as_u16(), 201);
    let post: Value = serde_json::from_slice(&body).unwrap();
    let id = post["id"].as_str().unwrap().to_owned();
    until("query shows the new post", async || {
        json(&http, &format!("{query}/posts"))
            .await
            .is_some_and(|posts| posts.get(&id).is_some())
    })
    .await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", up.child.id()))
        .unwrap()
        .count();
    assert!(open < 1024, "{open} files open, at the limit");
    drop(slow);
    up.kill();
}
