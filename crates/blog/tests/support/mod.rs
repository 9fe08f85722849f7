//! One way to start the system for a test: every part on a random port in
//! this process, with its own temporary data directory, and each part
//! stoppable, crashable and restartable on its port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use blog::settings::{ServiceKind, Settings};
use blog::startup::{self, Running};
use blog_kit::client::HttpClient;
use bytes::Bytes;
use serde_json::{Value, json};

/// How long a test waits for the system to converge before it fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

pub const ALL: [ServiceKind; 6] = ServiceKind::UP;

/// Which engines a test system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub postgres: bool,
    pub nats: bool,
}

impl std::fmt::Display for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let storage = if self.postgres {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        let bus = if self.nats {
            "NATS JetStream"
        } else {
            "HTTP bus"
        };
        write!(f, "{storage} + {bus}")
    }
}

pub fn postgres_url() -> String {
    std::env::var("BLOG_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("BLOG_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(host_port.to_owned())
}

fn reachable(url: &str) -> bool {
    host_port(url)
        .and_then(|hp| std::net::ToSocketAddrs::to_socket_addrs(&hp).ok()?.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
}

static AVAILABLE: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();

/// The engine combinations to run every test on: embedded always, and each
/// real engine that answers here. A missing engine is said plainly (on the
/// terminal, past the test harness's capture), and is an error when
/// `BLOG_TEST_REQUIRE_ENGINES=1` (CI).
pub fn engines() -> Vec<Engines> {
    let (postgres, nats) = *AVAILABLE.get_or_init(|| {
        use std::io::Write;
        let require = std::env::var("BLOG_TEST_REQUIRE_ENGINES").is_ok_and(|v| v == "1");
        let postgres = reachable(&postgres_url());
        let nats = reachable(&nats_url());
        for (name, ok, var, url) in [
            ("PostgreSQL", postgres, "BLOG_TEST_POSTGRES", postgres_url()),
            ("NATS", nats, "BLOG_TEST_NATS", nats_url()),
        ] {
            if !ok {
                assert!(!require, "{name} is required (BLOG_TEST_REQUIRE_ENGINES=1) but {url} does not answer");
                let _ = writeln!(
                    std::io::stderr(),
                    "note: skipping the {name} variants of the tests: nothing answers at {url} (set {var})"
                );
            }
        }
        (postgres, nats)
    });
    let mut out = vec![Engines {
        postgres: false,
        nats: false,
    }];
    if postgres {
        out.push(Engines {
            postgres: true,
            nats: false,
        });
    }
    if nats {
        out.push(Engines {
            postgres: false,
            nats: true,
        });
    }
    if postgres && nats {
        out.push(Engines {
            postgres: true,
            nats: true,
        });
    }
    out
}

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A name no other test system (in this or another test process) uses.
pub fn unique(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{n}_{nanos:x}", std::process::id())
}

pub struct TestSystem {
    pub engines: Engines,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub addrs: HashMap<ServiceKind, SocketAddr>,
    running: HashMap<ServiceKind, Running>,
    pub http: HttpClient,
}

/// A response: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl TestSystem {
    /// The parts this system runs: no HTTP event bus on NATS.
    pub fn kinds(&self) -> Vec<ServiceKind> {
        ALL.into_iter()
            .filter(|k| *k != ServiceKind::EventBus || !self.engines.nats)
            .collect()
    }

    /// Starts every part on `engines` and waits until all are ready.
    pub async fn spawn(engines: Engines) -> Self {
        Self::spawn_on(engines, &nats_url()).await
    }

    /// As [`spawn`](Self::spawn), with the NATS server at `nats`.
    pub async fn spawn_on(engines: Engines, nats: &str) -> Self {
        Self::spawn_full(engines, nats, None, |_| {}).await
    }

    /// As [`spawn`](Self::spawn), with `configure` applied to the base
    /// settings before they are wired to the parts' addresses (for example
    /// `extra_subscribers` or `delivery_attempts`).
    pub async fn spawn_with(engines: Engines, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_full(engines, &nats_url(), None, configure).await
    }

    /// As [`spawn`](Self::spawn), with the SQLite files under `data_dir`
    /// (for example on a small filesystem the test mounted).
    pub async fn spawn_in(engines: Engines, data_dir: std::path::PathBuf) -> Self {
        Self::spawn_full(engines, &nats_url(), Some(data_dir), |_| {}).await
    }

    async fn spawn_full(
        engines: Engines,
        nats: &str,
        data_dir: Option<std::path::PathBuf>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = Vec::new();
        let mut addrs = HashMap::new();
        let kinds: Vec<ServiceKind> = ALL
            .into_iter()
            .filter(|k| *k != ServiceKind::EventBus || !engines.nats)
            .collect();
        for kind in kinds.iter().copied() {
            let listener = startup::bind("127.0.0.1:0".parse().unwrap())
                .await
                .expect("bind");
            addrs.insert(kind, listener.local_addr().unwrap());
            listeners.push((kind, listener));
        }
        let mut base = Settings::local(data_dir.unwrap_or_else(|| dir.path().join("data")));
        base.client_dir = dir.path().join("no-client");
        if engines.postgres {
            base.postgres = Some(blog::settings::Postgres {
                server: postgres_url(),
                prefix: format!("{}_", unique("blog_t")),
                database: None,
            });
        }
        if engines.nats {
            base.bus = blog_bus::BusConfig::Nats {
                url: nats.to_owned(),
                stream: unique("T"),
                replicas: 1,
            };
        }
        configure(&mut base);
        let settings = startup::wire(&base, &addrs);
        let mut system = Self {
            engines,
            dir,
            settings,
            addrs,
            running: HashMap::new(),
            http: HttpClient::new(Duration::from_secs(10)),
        };
        for (kind, listener) in listeners {
            let service = startup::build(kind, &system.settings).await.expect("build");
            system.running.insert(
                kind,
                startup::spawn(kind, service, listener).expect("spawn"),
            );
        }
        for kind in kinds {
            startup::wait_ready(&system.http, kind, &system.url(kind), CONVERGE)
                .await
                .expect("ready");
        }
        system
    }

    pub fn url(&self, kind: ServiceKind) -> String {
        format!("http://{}", self.addrs[&kind])
    }

    pub fn gateway(&self) -> String {
        self.url(ServiceKind::Gateway)
    }

    /// Stops a part gracefully.
    pub async fn stop(&mut self, kind: ServiceKind) {
        if let Some(running) = self.running.remove(&kind) {
            running.stop().await.expect("clean stop");
        }
    }

    /// Stops a part the way a crash would: its tasks are dropped wherever
    /// they are.
    pub async fn crash(&mut self, kind: ServiceKind) {
        if let Some(running) = self.running.remove(&kind) {
            running.abort();
            // Let the runtime drop the aborted tasks and close the listener.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a part again on its port, from its data on disk.
    pub async fn start(&mut self, kind: ServiceKind) {
        let addr = self.addrs[&kind];
        let started = Instant::now();
        let listener = loop {
            match startup::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if started.elapsed() < CONVERGE => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        };
        let service = startup::build(kind, &self.settings).await.expect("build");
        self.running.insert(
            kind,
            startup::spawn(kind, service, listener).expect("spawn"),
        );
        let health = format!("{}/healthz", self.url(kind));
        self.until(&format!("{} healthy", kind.name()), || async {
            matches!(self.http.get(&health).await, Ok((s, _)) if s.is_success())
        })
        .await;
    }

    /// Starts one more replica of a part, on a new port, sharing its
    /// storage and its bus consumer.
    pub async fn spawn_replica(&self, kind: ServiceKind) -> Running {
        let listener = startup::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let service = startup::build(kind, &self.settings).await.expect("build");
        let running = startup::spawn(kind, service, listener).expect("spawn");
        startup::wait_ready(&self.http, kind, &running.url(), CONVERGE)
            .await
            .expect("ready");
        running
    }

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
        let answer = self
            .post(
                &format!("{}/posts/create", self.gateway()),
                &json!({"title": title}),
            )
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

    /// Waits until `condition` holds, failing the test after [`CONVERGE`].
    pub async fn until<F, Fut>(&self, what: &str, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.until_within(CONVERGE, what, condition).await;
    }

    /// Waits until `condition` holds, failing the test after `limit`.
    pub async fn until_within<F, Fut>(&self, limit: Duration, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        while !condition().await {
            assert!(
                started.elapsed() < limit,
                "never converged within {limit:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `check` answers `Ok`, failing the test after `limit` with
    /// what `check` last said was missing.
    pub async fn until_ok<F, Fut>(&self, limit: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        loop {
            match check().await {
                Ok(()) => return,
                Err(why) => assert!(
                    started.elapsed() < limit,
                    "never converged within {limit:?}: {what}: {why}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until query shows `status` for the comment.
    pub async fn until_status(&self, post: &str, comment: &str, status: &str) {
        self.until(&format!("comment {comment} {status}"), || async {
            self.status_in_query(post, comment).await.as_deref() == Some(status)
        })
        .await;
    }

    pub async fn shutdown(mut self) {
        for kind in ALL.iter().rev() {
            self.stop(*kind).await;
        }
    }
}

impl Drop for TestSystem {
    /// Removes the test's databases and stream, whether it passed or not.
    fn drop(&mut self) {
        for running in self.running.drain().map(|(_, r)| r) {
            running.abort();
        }
        let postgres = self.settings.postgres.clone();
        let bus = self.settings.bus.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Some(pg) = postgres {
                    sqlx::any::install_default_drivers();
                    if let Ok(pool) = sqlx::AnyPool::connect(&pg.server).await {
                        for kind in ALL {
                            let name = blog_storage::StorageConfig::postgres_database(
                                &pg.prefix,
                                kind.name(),
                            );
                            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                        }
                        pool.close().await;
                    }
                }
                if let blog_bus::BusConfig::Nats { url, stream, .. } = bus
                    && let Ok(client) = async_nats::connect(url).await
                {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(stream)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Runs `test` once per available engine combination.
#[macro_export]
macro_rules! for_each_engine {
    (|$system:ident| $body:block) => {
        for engines in support::engines() {
            #[allow(unused_mut)]
            let mut $system = support::TestSystem::spawn(engines).await;
            $body
            $system.shutdown().await;
        }
    };
}

/// The engine combinations with the HTTP event bus (the tests that talk to
/// the bus's own routes).
pub fn http_bus_engines() -> Vec<Engines> {
    engines().into_iter().filter(|e| !e.nats).collect()
}

/// Runs `test` once per engine combination in `engines`, each in a task of
/// its own, and fails after all ran, naming every combination that failed
/// and why (a failure on one does not hide the others).
pub async fn on_each<F, Fut>(engines: Vec<Engines>, test: F)
where
    F: Fn(Engines) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failures = Vec::new();
    let total = engines.len();
    for engines in engines {
        if let Err(e) = tokio::spawn(test(engines)).await {
            let why = if e.is_panic() {
                let panic = e.into_panic();
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".to_owned())
            } else {
                e.to_string()
            };
            failures.push(format!("--- {engines} ---\n{why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failed on {} of {total} engine combinations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Counts the bus's stored events of one type.
pub fn count_type(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|e| e["type"] == event_type).count()
}
