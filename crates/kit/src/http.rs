//! The layers every service's router gets: JSON 404/405, a body limit, CORS
//! and request tracing.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::trace::TraceLayer;

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

/// Wraps a service's routes with the shared layers.
pub fn finish(routes: Router, cors: &CorsOrigins, body_limit: usize) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors.layer())
        .layer(middleware::from_fn(preflight_no_content))
        .layer(TraceLayer::new_for_http())
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
