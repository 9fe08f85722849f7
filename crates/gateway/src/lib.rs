//! The local gateway: what ingress-nginx does for `posts.com` in the cluster,
//! on one machine. It is given the Ingress's rules (the registry of parts
//! holds them, and the manifests are checked against them) and where each
//! service the rules name answers; requests are forwarded to the services
//! over HTTP exactly as the Ingress would, and the client's built files are
//! served in place of the client server.

mod client;
pub mod openapi;
mod page;
mod proxy;
pub mod rules;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blog_kit::ApiError;
use blog_kit::metrics::RouteLabel;
use blog_kit::serve::Service;
use tower::ServiceExt;

pub use client::client_router;
pub use rules::{PathType, Rule, RuleSet};

pub const NAME: &str = "gateway";
pub const DEFAULT_PORT: u16 = 8080;
/// `blog serve client`: the course's `client-srv:3000`.
pub const CLIENT_NAME: &str = "client";
pub const CLIENT_PORT: u16 = 3000;

/// Where the gateway sends what `client-srv` would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBackend {
    /// Serve the built client from this directory, in process.
    Dir(PathBuf),
    /// Forward to a client server at this base URL.
    Url(String),
}

/// What answers for a service the Ingress rules name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One of the blog's services at this base URL: forwarded to, and its
    /// public routes are described.
    Service(String),
    /// The client's files.
    Client(ClientBackend),
}

/// A service the Ingress rules name, and what answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Its name in the rules (the Kubernetes Service's).
    pub service: &'static str,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The Ingress's rules, in the order its manifest lists them.
    pub rules: Vec<Rule>,
    /// Every service the rules name.
    pub upstreams: Vec<Upstream>,
}

enum Backend {
    Proxy(String),
    Local(Router),
}

struct Gateway {
    rules: RuleSet,
    backends: Vec<(&'static str, Backend)>,
    /// The services whose public routes the gateway describes: name and
    /// base URL.
    described: Vec<(&'static str, String)>,
    proxy: proxy::Proxy,
}

pub fn build(config: &Config) -> Service {
    let base = |url: &str| url.trim_end_matches('/').to_owned();
    let mut backends = Vec::new();
    let mut described = Vec::new();
    for upstream in &config.upstreams {
        let backend = match &upstream.target {
            Target::Service(url) => {
                described.push((upstream.service, base(url)));
                Backend::Proxy(base(url))
            }
            Target::Client(ClientBackend::Url(url)) => Backend::Proxy(base(url)),
            Target::Client(ClientBackend::Dir(dir)) => Backend::Local(client_router(dir.clone())),
        };
        backends.push((upstream.service, backend));
    }
    let gateway = Arc::new(Gateway {
        rules: RuleSet::new(&config.rules),
        backends,
        described,
        proxy: proxy::Proxy::new(),
    });
    // Answered here before the Ingress rules, which would send these paths
    // to the client (see `openapi::OWN_PATHS`).
    let router = Router::new()
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/api", get(openapi::api_page))
        .fallback(forward)
        .with_state(gateway);
    Service::new(NAME, blog_kit::http::observe(NAME, router))
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
    let mut response = match backend {
        Some(Backend::Proxy(base)) => gateway.proxy.forward(base, request).await,
        Some(Backend::Local(router)) => match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => ApiError::NotFound.into_response(),
    };
    // Metrics name the Ingress rule that routed the request.
    response.extensions_mut().insert(RouteLabel(rule.path));
    response
}
