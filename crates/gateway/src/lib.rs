//! The local gateway: what ingress-nginx does for `posts.com` in the cluster,
//! on one machine. The Ingress's rules live in [`rules::INGRESS`], one table
//! that the manifests are checked against; requests are forwarded to the
//! services over HTTP exactly as the Ingress would, and the client's built
//! files are served in place of `client-srv`.

mod client;
mod proxy;
pub mod rules;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use blog_kit::ApiError;
use blog_kit::serve::Service;
use tower::ServiceExt;

pub use client::client_router;
pub use rules::{INGRESS, PathType, Rule, RuleSet};

pub const NAME: &str = "gateway";
pub const DEFAULT_PORT: u16 = 8080;
/// `blog serve client`'s port: the course's `client-srv:3000`.
pub const CLIENT_PORT: u16 = 3000;

/// Where the gateway sends what `client-srv` would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBackend {
    /// Serve the built client from this directory, in process.
    Dir(PathBuf),
    /// Forward to a client server at this base URL.
    Url(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub posts_url: String,
    pub comments_url: String,
    pub query_url: String,
    pub client: ClientBackend,
}

enum Backend {
    Proxy(String),
    Local(Router),
}

struct Gateway {
    rules: RuleSet,
    backends: Vec<(&'static str, Backend)>,
    proxy: proxy::Proxy,
}

pub fn build(config: &Config) -> Service {
    let client = match &config.client {
        ClientBackend::Dir(dir) => Backend::Local(client_router(dir.clone())),
        ClientBackend::Url(url) => Backend::Proxy(url.trim_end_matches('/').to_owned()),
    };
    let base = |url: &str| Backend::Proxy(url.trim_end_matches('/').to_owned());
    let gateway = Arc::new(Gateway {
        rules: RuleSet::new(&INGRESS),
        backends: vec![
            ("posts-clusterip-srv", base(&config.posts_url)),
            ("comments-srv", base(&config.comments_url)),
            ("query-srv", base(&config.query_url)),
            ("client-srv", client),
        ],
        proxy: proxy::Proxy::new(),
    });
    let router = Router::new().fallback(forward).with_state(gateway);
    Service::new(
        NAME,
        router.layer(tower_http::trace::TraceLayer::new_for_http()),
    )
}

async fn forward(State(gateway): State<Arc<Gateway>>, request: Request<Body>) -> Response {
    let Some(rule) = gateway.rules.route(request.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    let backend = gateway
        .backends
        .iter()
        .find(|(name, _)| *name == rule.service)
        .map(|(_, b)| b);
    match backend {
        Some(Backend::Proxy(base)) => gateway.proxy.forward(base, request).await,
        Some(Backend::Local(router)) => match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => ApiError::NotFound.into_response(),
    }
}
