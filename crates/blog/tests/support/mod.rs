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

pub struct TestSystem {
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
    /// Starts every part and waits until all are ready.
    pub async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = Vec::new();
        let mut addrs = HashMap::new();
        for kind in ALL {
            let listener = startup::bind("127.0.0.1:0".parse().unwrap())
                .await
                .expect("bind");
            addrs.insert(kind, listener.local_addr().unwrap());
            listeners.push((kind, listener));
        }
        let mut base = Settings::local(dir.path().join("data"));
        base.client_dir = dir.path().join("no-client");
        let settings = startup::wire(&base, &addrs);
        let mut system = Self {
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
        for kind in ALL {
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

    /// The bus's stored events.
    pub async fn bus_events(&self) -> Vec<Value> {
        let answer = self
            .get(&format!("{}/events", self.url(ServiceKind::EventBus)))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.body.as_array().expect("array").clone()
    }

    /// Waits until `condition` holds, failing the test after [`CONVERGE`].
    pub async fn until<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        while !condition().await {
            assert!(started.elapsed() < CONVERGE, "never converged: {what}");
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

/// Counts the bus's stored events of one type.
pub fn count_type(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|e| e["type"] == event_type).count()
}
