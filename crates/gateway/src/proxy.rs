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
    /// For requests that ask for an event stream (`Accept:
    /// text/event-stream`, what a browser's `EventSource` sends). Its
    /// connections are made, and then read, on the background threads with
    /// the streams they feed (see `blog_kit::background`): relaying a frame
    /// to thousands of pages must not take a thread the rest needs. A pool
    /// of its own, so that no other request waits on those threads.
    streams: Client<HttpConnector, Body>,
}

impl Proxy {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector.clone()),
            // A stream's read buffer stays as large as the largest read
            // it ever needed (a snapshot): at a fixed 8 KiB, 2,000 relayed
            // streams do not hold hundreds of megabytes between frames.
            streams: Client::builder(TokioExecutor::new())
                .http1_read_buf_exact_size(8 * 1024)
                .build(connector),
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
        let request = Request::from_parts(parts, body);
        let answer = if wants_event_stream(&request) {
            let streams = self.streams.clone();
            blog_kit::background::run(async move { streams.request(request).await }).await
        } else {
            self.client.request(request).await
        };
        match answer {
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

fn wants_event_stream(request: &Request<Body>) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/event-stream"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers `/stream` with an endless event stream and
    /// `/plain` with a word; its address.
    async fn upstream() -> String {
        let stream = || async {
            let frames = futures_util::stream::repeat_with(|| {
                Ok::<_, std::convert::Infallible>("data: x\n\n".to_owned())
            })
            .then(|frame| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                frame
            });
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(frames),
            )
        };
        let app = axum::Router::new()
            .route("/stream", axum::routing::get(stream))
            .route("/plain", axum::routing::get(|| async { "plain" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn background_tasks() -> usize {
        blog_kit::background::handle()
            .expect("the background runtime")
            .metrics()
            .num_alive_tasks()
    }

    /// A relayed event stream is read from upstream on the background
    /// threads (its connection's task lives there); other requests keep
    /// theirs on the caller's runtime.
    #[tokio::test]
    async fn a_relayed_event_stream_is_read_on_the_background_threads() {
        let base = upstream().await;
        let proxy = Proxy::new();
        let request = |path: &str, accept: &str| {
            Request::get(path)
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .expect("a request")
        };
        let before = background_tasks();
        let plain = proxy
            .forward(&base, request("/plain", "application/json"))
            .await;
        assert_eq!(plain.status(), axum::http::StatusCode::OK);
        assert_eq!(background_tasks(), before, "a plain request stays here");

        let streamed = proxy
            .forward(&base, request("/stream", "text/event-stream"))
            .await;
        assert_eq!(streamed.status(), axum::http::StatusCode::OK);
        assert!(
            background_tasks() > before,
            "the stream's connection is there"
        );
        let mut body = streamed.into_body().into_data_stream();
        for _ in 0..3 {
            let frame = body.next().await.expect("a frame").expect("read");
            assert_eq!(&frame[..], b"data: x\n\n");
        }
    }
}
