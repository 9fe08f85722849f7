//! The layers every service's router gets: JSON errors everywhere, a body
//! limit, CORS on the routes browsers call, the internal token on the routes
//! only our own parts call, and (every part, see [`observe`]) `GET /metrics`,
//! request metrics and the correlation id.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::ApiError;

/// Default request body limit: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Body limit of the batch routes between our own parts (`POST
/// /events/batch`): many events of up to the default limit each. Senders
/// keep a batch under [`BATCH_BYTES`].
pub const BATCH_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// What a sender puts in one batch at most, in bytes of events.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// How many of the leading events (by their sizes in bytes) fit in one
/// batch of at most [`BATCH_BYTES`]; at least one, so a large event still
/// goes, alone.
pub fn fits_in_batch(sizes: impl IntoIterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut count = 0;
    for size in sizes {
        bytes += size + 1;
        if count > 0 && bytes > BATCH_BYTES {
            break;
        }
        count += 1;
    }
    count
}

/// The answer header in which a subscriber of ours lists the event types it
/// applies, so our bus sends it only those (course peers get everything).
pub const CONSUMES_HEADER: &str = "blog-consumes";

/// Which browser origins may call a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any origin (`Access-Control-Allow-Origin: *`), the course behaviour.
    Any,
    List(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" {
            return Ok(CorsOrigins::Any);
        }
        let origins: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        for origin in &origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || HeaderValue::from_str(origin).is_err()
            {
                return Err(format!(
                    "not an origin: {origin} (expected e.g. https://posts.com)"
                ));
            }
        }
        Ok(CorsOrigins::List(origins))
    }
}

impl CorsOrigins {
    fn layer(&self) -> CorsLayer {
        let origin = match self {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => {
                AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
            }
        };
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(Any)
            .allow_headers(Any)
    }
}

/// Answers a CORS preflight with 204, as the course's `cors()` middleware does.
async fn preflight_no_content(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(req).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The secret our own parts show each other on internal routes
/// (`Authorization: Bearer <token>`).
#[derive(Clone, PartialEq, Eq)]
pub struct InternalToken(String);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(..)")
    }
}

impl std::str::FromStr for InternalToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() < 16 {
            return Err("the internal token must be at least 16 characters".into());
        }
        if HeaderValue::from_str(&format!("Bearer {s}")).is_err() || s.contains(' ') {
            return Err("the internal token must be visible ASCII without spaces".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl InternalToken {
    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// Whether `presented` (an `Authorization` value) carries it; compared in
    /// time that does not depend on where they differ.
    fn admits(&self, presented: Option<&HeaderValue>) -> bool {
        let Some(token) = presented
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (token.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

async fn require_token(State(token): State<InternalToken>, req: Request, next: Next) -> Response {
    if token.admits(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let mut response = ApiError::Unauthorized(
        "this route is for the system's own parts: send the internal token".into(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// How a service faces the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surface {
    /// Browser origins allowed on the public routes.
    pub cors: CorsOrigins,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// When set, internal routes refuse calls without it.
    pub internal_token: Option<InternalToken>,
}

impl Default for Surface {
    fn default() -> Self {
        Self {
            cors: CorsOrigins::Any,
            body_limit: DEFAULT_BODY_LIMIT,
            internal_token: None,
        }
    }
}

/// A service's routes by who calls them, and their description.
#[derive(Default)]
pub struct Routes {
    /// What browsers call (the course's client): CORS applies.
    pub public: Router,
    /// What only our own parts call (events, the bus's API, dead letters):
    /// the internal token applies when set; never CORS.
    pub internal: Router,
    /// Liveness and readiness, for the orchestrator: neither.
    pub probes: Router,
    /// What the routers above serve, group by group, served at `GET
    /// /openapi.json` (see [`crate::openapi`]).
    pub api: crate::openapi::Api,
}

/// Wraps a service's routes with the shared layers, and serves their
/// description at `GET /openapi.json` (open to all, like the probes).
pub fn finish(service: &'static str, routes: Routes, surface: &Surface) -> Router {
    let description = crate::openapi::document(service, routes.api);
    // The fallback for other methods is set before CORS wraps the routes,
    // so that a preflight (OPTIONS) of a public route gets its answer.
    let public = routes
        .public
        .method_not_allowed_fallback(method_not_allowed)
        .layer(surface.cors.layer())
        .layer(middleware::from_fn(preflight_no_content));
    let internal = match &surface.internal_token {
        Some(token) => routes
            .internal
            .layer(middleware::from_fn_with_state(token.clone(), require_token)),
        None => routes.internal,
    };
    let router = public
        .merge(internal)
        .merge(routes.probes)
        .merge(crate::openapi::route(&description))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(surface.body_limit));
    observe(service, router)
}

/// The outer layers of every part, behind [`finish`] or not (the gateway,
/// the client server): `GET /metrics` (for the orchestrator, like the
/// probes: neither CORS nor the token), errors in the documented JSON,
/// request metrics by route template, and the correlation id.
pub fn observe(service: &'static str, router: Router) -> Router {
    crate::metrics::recorder();
    router
        .route("/metrics", get(crate::metrics::render))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            service,
            crate::metrics::track_requests,
        ))
        .layer(middleware::from_fn_with_state(
            service,
            crate::correlation::correlate,
        ))
}

/// Longest text of a plain error answer kept as the JSON error's message.
const ERROR_TEXT_LIMIT: usize = 1024;

/// Makes every error answer the documented JSON, whoever wrote it: axum's
/// extractors and static files answer some in plain text or empty.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_LIMIT)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty() && !text.starts_with('<'));
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_ascii_lowercase()
    });
    let body = serde_json::json!({"errors": [{"message": message}]}).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_batches_by_bytes_keeping_at_least_one_event() {
        assert_eq!(fits_in_batch([10, 20, 30]), 3);
        assert_eq!(fits_in_batch([BATCH_BYTES / 2, BATCH_BYTES / 2, 1]), 1);
        assert_eq!(fits_in_batch([BATCH_BYTES * 2, 1]), 1);
        assert_eq!(fits_in_batch(std::iter::empty()), 0);
    }

    #[test]
    fn parses_cors_origins() {
        assert_eq!("*".parse::<CorsOrigins>(), Ok(CorsOrigins::Any));
        assert_eq!(
            "https://posts.com, http://localhost:8080".parse::<CorsOrigins>(),
            Ok(CorsOrigins::List(vec![
                "https://posts.com".into(),
                "http://localhost:8080".into()
            ]))
        );
        assert!("posts.com".parse::<CorsOrigins>().is_err());
    }
}
