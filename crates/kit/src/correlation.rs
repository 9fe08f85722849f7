//! The correlation id: born with each HTTP request (or taken from the
//! caller's `x-request-id` or `traceparent`), carried in the events the
//! request causes and in the events those cause, and named in the span of
//! every part that handles them, so one user action can be followed from
//! its POST to the read model.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries it in and out of every part (and through the
/// gateway to the service behind it).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: &str = "traceparent";

/// One request's correlation id (an extractor: always present on requests
/// that went through [`correlate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation(pub String);

impl Correlation {
    /// The caller's, when it sent a usable one: `x-request-id`, else the
    /// trace id of a W3C `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| blog_events::valid_correlation_id(id));
        if let Some(id) = request_id {
            return Some(Self(id.to_owned()));
        }
        // version-traceid-parentid-flags; the trace id is 32 hex digits,
        // not all zero.
        let traceparent = headers.get(TRACEPARENT)?.to_str().ok()?;
        let trace_id = traceparent.split('-').nth(1)?;
        (trace_id.len() == 32
            && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
            && trace_id.bytes().any(|b| b != b'0'))
        .then(|| Self(trace_id.to_ascii_lowercase()))
    }

    /// A fresh one, time-ordered like event ids.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl Default for Correlation {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Correlation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Correlation>()
            .cloned()
            .or_else(|| Correlation::from_headers(&parts.headers))
            .unwrap_or_default())
    }
}

/// Gives the request its correlation id (in its extensions and its
/// `x-request-id` header, so a proxy passes it on), runs it in a span that
/// names the part and the id, and answers with the id.
pub async fn correlate(
    State(service): State<&'static str>,
    mut req: Request,
    next: Next,
) -> Response {
    let correlation = Correlation::from_headers(req.headers()).unwrap_or_default();
    let header = HeaderValue::from_str(&correlation.0).ok();
    if let Some(value) = &header {
        req.headers_mut().insert(REQUEST_ID, value.clone());
    }
    let span = tracing::info_span!(
        "request",
        service,
        correlation_id = %correlation.0,
        method = %req.method(),
        path = %req.uri().path(),
    );
    req.extensions_mut().insert(correlation);
    let mut response = async move {
        let response = next.run(req).await;
        let status = response.status().as_u16();
        if response.status().is_server_error() {
            tracing::warn!(status, "answered with a server error");
        } else {
            tracing::debug!(status, "answered");
        }
        response
    }
    .instrument(span)
    .await;
    if let Some(value) = header {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("a value"));
        }
        map
    }

    #[test]
    fn takes_the_callers_id_or_trace_id_and_refuses_unfit_ones() {
        assert_eq!(
            Correlation::from_headers(&headers(&[("x-request-id", "abc-123")])),
            Some(Correlation("abc-123".into()))
        );
        let trace = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            Correlation::from_headers(&headers(&[("traceparent", trace)])),
            Some(Correlation("4bf92f3577b34da6a3ce929d0e0e4736".into()))
        );
        // The request id wins over the trace.
        assert_eq!(
            Correlation::from_headers(&headers(&[("x-request-id", "r"), ("traceparent", trace)])),
            Some(Correlation("r".into()))
        );
        for unfit in [
            ("x-request-id", "has space"),
            ("x-request-id", &"x".repeat(200)),
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("traceparent", "00-xyz-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(
                Correlation::from_headers(&headers(&[unfit])),
                None,
                "{unfit:?}"
            );
        }
        assert_ne!(Correlation::new(), Correlation::new());
    }
}
