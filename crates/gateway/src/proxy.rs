//! Forwarding a request to a service and streaming its answer back (live
//! updates are a stream that never ends).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use blog_kit::ApiError;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

pub struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Proxy {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn forward(&self, base: &str, request: Request<Body>) -> Response {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
            return ApiError::BadRequest("invalid request path".into()).into_response();
        };
        let host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(host) = host {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        parts.headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        parts.uri = uri;
        // A body the client breaks off or malforms is the client's fault
        // (400), not the upstream's (502): note when reading it fails.
        let broken = Arc::new(AtomicBool::new(false));
        let noted = broken.clone();
        let body = Body::from_stream(body.into_data_stream().inspect(move |chunk| {
            if chunk.is_err() {
                noted.store(true, Ordering::Relaxed);
            }
        }));
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Err(_) if broken.load(Ordering::Relaxed) => {
                ApiError::BadRequest("the request body could not be read".into()).into_response()
            }
            Err(e) => {
                tracing::warn!(upstream = %base, error = %e, "upstream unavailable");
                let mut response =
                    ApiError::Unavailable(format!("upstream {base} unavailable")).into_response();
                *response.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
                response
            }
        }
    }
}

impl Proxy {
    /// `GET url`, its answer read as JSON (at most `limit` bytes): for what
    /// the gateway asks a service itself.
    pub async fn get_json(&self, url: &str, limit: usize) -> Result<serde_json::Value, String> {
        let uri = url.parse::<Uri>().map_err(|e| e.to_string())?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let body = axum::body::to_bytes(Body::new(response.into_body()), limit)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
    }
}

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
