//! One way to start the system for a test: the binary's own [`System`],
//! every part on a random port in this process, with its own temporary data
//! directory, and each part stoppable, crashable and restartable on its
//! port; its databases and stream removed when it is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blog::settings::{ServiceKind, Settings};
use blog::startup::{Running, System, Wiring};
use blog_kit::client::HttpClient;

use super::engines::{Engines, nats_url, postgres_url, unique};

/// How long a test waits for the system to converge before it fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// The parts that take `POST /events`: the bus, and every part it
/// delivers to.
pub fn taking_events() -> Vec<ServiceKind> {
    blog::parts::PARTS
        .iter()
        .filter(|part| {
            part.kind == ServiceKind::EventBus
                || part.subscription == blog::parts::Subscription::Events
        })
        .map(|part| part.kind)
        .collect()
}

/// Every part `blog up` runs, in start order.
pub fn all() -> Vec<ServiceKind> {
    blog::parts::up().map(|part| part.kind).collect()
}

pub struct TestSystem {
    pub engines: Engines,
    /// Removed, with the SQLite files, when the system is dropped.
    _dir: tempfile::TempDir,
    /// The settings the parts were built from, wired.
    pub settings: Settings,
    pub addrs: HashMap<ServiceKind, SocketAddr>,
    system: System,
    pub http: HttpClient,
}

impl TestSystem {
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
            base.bus = blog_bus::BusConfig::Nats(
                blog_bus::NatsConfig::parse(nats)
                    .expect("a NATS URL")
                    .with_stream(&unique("T")),
            );
        }
        configure(&mut base);
        let any_port: blog::startup::Ports = all().into_iter().map(|kind| (kind, 0)).collect();
        let mut system = System::start(
            "127.0.0.1".parse().unwrap(),
            &any_port,
            &all(),
            &base,
            Wiring::Together,
        )
        .await
        .expect("start");
        system.wait_ready(CONVERGE).await.expect("ready");
        let addrs = all()
            .into_iter()
            .filter_map(|kind| Some((kind, system.addr(kind)?)))
            .collect();
        Self {
            engines,
            _dir: dir,
            settings: system.settings.clone(),
            addrs,
            system,
            http: HttpClient::new(Duration::from_secs(10)),
        }
    }

    pub fn url(&self, kind: ServiceKind) -> String {
        format!("http://{}", self.addrs[&kind])
    }

    pub fn gateway(&self) -> String {
        self.url(ServiceKind::Gateway)
    }

    /// Stops a part gracefully.
    pub async fn stop(&mut self, kind: ServiceKind) {
        self.system.stop_part(kind).await.expect("clean stop");
    }

    /// Stops a part the way a crash would: its tasks are dropped wherever
    /// they are.
    pub async fn crash(&mut self, kind: ServiceKind) {
        self.system.crash(kind).await;
    }

    /// Starts a part again on its port, from its data on disk.
    pub async fn start(&mut self, kind: ServiceKind) {
        self.system.restart(kind, CONVERGE).await.expect("restart");
        let health = format!("{}/healthz", self.url(kind));
        self.until(&format!("{} healthy", kind.name()), || async {
            matches!(self.http.get(&health).await, Ok((s, _)) if s.is_success())
        })
        .await;
    }

    /// Starts one more replica of a part, on a new port, sharing its
    /// storage and its bus consumer.
    pub async fn spawn_replica(&self, kind: ServiceKind) -> Running {
        self.system.spawn_replica(kind).await.expect("replica")
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

    /// Waits until query shows each comment decided: `(id, rejected)`.
    pub async fn until_decided(&self, post: &str, comments: &[(String, bool)]) {
        for (comment, rejected) in comments {
            let status = if *rejected { "rejected" } else { "approved" };
            self.until_status(post, comment, status).await;
        }
    }

    pub async fn shutdown(mut self) {
        for kind in all().into_iter().rev() {
            self.stop(kind).await;
        }
    }
}
impl Drop for TestSystem {
    /// Removes the test's databases and stream, whether it passed or not.
    fn drop(&mut self) {
        self.system.abort();
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
                        for kind in all() {
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
                if let blog_bus::BusConfig::Nats(nats) = bus
                    && let Ok(client) = async_nats::connect(nats.servers.as_str()).await
                {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&nats.stream.name)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
