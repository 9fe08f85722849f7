//! A small HTTP/1 client for service-to-bus traffic (JSON in, JSON out).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// An answer in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    /// The internal token's `Authorization` value, on every request.
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            inner,
            timeout,
            authorization: None,
        }
    }

    /// This client, showing `token` on every request (calls between our parts).
    pub fn with_token(mut self, token: &crate::http::InternalToken) -> Self {
        self.authorization = Some(token.header_value());
        self
    }

    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::POST, url, Some(body)).await
    }

    pub async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::GET, url, None).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let content_type = body.as_ref().map(|_| "application/json");
        self.request(method, url, content_type, body.unwrap_or_default())
            .await
    }

    /// Any request, with the given content type (if any) and body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let reply = self.exchange(method, url, content_type, body).await?;
        Ok((reply.status, reply.body))
    }

    /// `POST` of a JSON body, with the answer's headers.
    pub async fn post_json_reply(&self, url: &str, body: Bytes) -> Result<Reply, ClientError> {
        self.exchange(Method::POST, url, Some("application/json"), body)
            .await
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|_| ClientError::Url(url.to_owned()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Request(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError::Request(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }
}

/// Events (each already JSON) as one JSON array: the body of a batch.
pub fn json_array<'a>(events: impl Iterator<Item = &'a str> + Clone) -> Bytes {
    let mut body = Vec::with_capacity(events.clone().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, event) in events.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event.as_bytes());
    }
    body.push(b']');
    Bytes::from(body)
}
