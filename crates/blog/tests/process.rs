//! The real binary: `blog up` killed with SIGKILL keeps everything it
//! acknowledged, and `blog routes` prints the Ingress table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blog_kit::client::HttpClient;
use bytes::Bytes;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Up {
    child: Child,
    gateway: String,
}

fn start(data_dir: &std::path::Path, ports: &[u16; 6]) -> Up {
    let child = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--gateway-port", &ports[0].to_string()])
        .args(["--posts-port", &ports[1].to_string()])
        .args(["--comments-port", &ports[2].to_string()])
        .args(["--query-port", &ports[3].to_string()])
        .args(["--moderation-port", &ports[4].to_string()])
        .args(["--event-bus-port", &ports[5].to_string()])
        .env("BLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("blog up");
    Up {
        child,
        gateway: format!("http://127.0.0.1:{}", ports[0]),
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
    let ports = [
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    ];
    let http = HttpClient::new(Duration::from_secs(5));
    let mut up = start(dir.path(), &ports);
    let posts_url = format!("{}/posts", up.gateway);
    until("up", async || json(&http, &posts_url).await.is_some()).await;

    let (status, body) = http
        .post_json(
            &format!("{}/posts/create", up.gateway),
            Bytes::from(json!({"title": "survives"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201);
    let post: Value = serde_json::from_slice(&body).unwrap();
    let id = post["id"].as_str().unwrap().to_owned();
    let (status, _) = http
        .post_json(
            &format!("{}/posts/{id}/comments", up.gateway),
            Bytes::from(json!({"content": "orange"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201);
    // Acknowledged: now kill -9 before anything had a chance to flow.
    up.child.kill().unwrap();
    up.child.wait().unwrap();

    let mut up = start(dir.path(), &ports);
    until("the comment is rejected after the restart", async || {
        json(&http, &posts_url)
            .await
            .is_some_and(|posts| posts[&id]["comments"][0]["status"] == "rejected")
    })
    .await;
    let events: Value = json(&http, &format!("http://127.0.0.1:{}/events", ports[5]))
        .await
        .unwrap();
    let types: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "PostCreated",
            "CommentCreated",
            "CommentModerated",
            "CommentUpdated"
        ]
    );
    up.child.kill().unwrap();
    up.child.wait().unwrap();
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
