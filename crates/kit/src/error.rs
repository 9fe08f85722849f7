//! Errors as the API reports them: `{"errors":[{"message","field"}]}`, mapped
//! to a status code here and nowhere else.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

/// One problem with a request: what is wrong and, when one field of the
/// request is at fault, which (`title`, `content`, `id`, `data.postId`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    #[schema(min_length = 1, example = "title is required")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "title")]
    pub field: Option<String>,
}

impl FieldError {
    pub fn new(message: impl Into<String>, field: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was understood but its content is not acceptable.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Too much is going on to take this request now (a cap was reached).
    #[error("{0}")]
    Busy(String),
    /// An internal route called without the internal token.
    #[error("{0}")]
    Unauthorized(String),
    /// The request clashes with work in progress (a rebuild already running).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (storage, the bus) failed: the client may retry.
    #[error("service temporarily unavailable")]
    Unavailable(String),
}

impl ApiError {
    pub fn field(message: impl Into<String>, field: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(message, field)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn errors(&self) -> Vec<FieldError> {
        match self {
            ApiError::Invalid(errors) => errors.clone(),
            other => vec![FieldError {
                message: other.to_string(),
                field: None,
            }],
        }
    }
}

/// The answers of a route that creates something from a JSON body, besides
/// its own: described once, named in each such route's `responses(..)`.
#[derive(utoipa::IntoResponses)]
pub enum CreateRefusals {
    #[response(status = 413, description = "Larger than the body limit.")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "Not declared as JSON.")]
    NotJson(ErrorBody),
    #[response(status = 503, description = "Storage failed: nothing was created.")]
    StorageFailed(ErrorBody),
}

/// Every error answer of every part: `{"errors":[{"message","field"?}]}`,
/// at least one error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[schema(min_items = 1)]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unavailable(cause) = &self {
            tracing::warn!(%cause, "request failed on a dependency");
        }
        let body = ErrorBody {
            errors: self.errors(),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// A JSON request body: checked for content type and size, then parsed into
/// a generic value that the route validates into its own domain types.
#[derive(Debug)]
pub struct JsonBody(pub Value);

/// Whether a `Content-Type` value names JSON (`application/json`, `application/*+json`).
fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A request body declared as JSON, read but not parsed yet (for a route
/// that gives an empty body a meaning of its own): the content type and the
/// size are checked as for [`JsonBody`].
#[derive(Debug)]
pub struct JsonBytes(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        bytes::Bytes::from_request(req, state)
            .await
            .map(JsonBytes)
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                }
            })
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    /// axum's `Json`, its rejections in the documented shape.
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                std::error::Error::source(&e).map_or_else(|| e.body_text(), ToString::to_string)
            ))),
            Err(e) => Err(ApiError::BadRequest(format!(
                "could not read the request body: {}",
                e.body_text()
            ))),
        }
    }
}

/// Reads a required string field from a JSON object body, trimmed, not empty,
/// at most `max_chars` characters long, without forbidden control characters.
pub fn required_string(body: &Value, field: &str, max_chars: usize) -> Result<String, FieldError> {
    let Value::Object(map) = body else {
        return Err(FieldError::new("body must be a JSON object", field));
    };
    match map.get(field) {
        None | Some(Value::Null) => Err(FieldError::new(format!("{field} is required"), field)),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(FieldError::new(format!("{field} must not be empty"), field))
            } else if s.chars().any(blog_events::forbidden_control) {
                Err(FieldError::new(
                    format!(
                        "{field} must not contain NUL or control characters other than tab and line breaks"
                    ),
                    field,
                ))
            } else if s.chars().count() > max_chars {
                Err(FieldError::new(
                    format!("{field} must be at most {max_chars} characters"),
                    field,
                ))
            } else {
                Ok(s.to_owned())
            }
        }
        Some(_) => Err(FieldError::new(format!("{field} must be a string"), field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json;charset=utf-8"));
        assert!(is_json("Application/JSON; charset=UTF-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn validates_required_strings() {
        let max = 5;
        assert_eq!(
            required_string(&json!({"t": " ab "}), "t", max),
            Ok("ab".into())
        );
        let msg = |v: Value| required_string(&v, "t", max).expect_err("invalid").message;
        assert_eq!(msg(json!({})), "t is required");
        assert_eq!(msg(json!({"t": null})), "t is required");
        assert_eq!(msg(json!({"t": "  "})), "t must not be empty");
        assert_eq!(msg(json!({"t": 3})), "t must be a string");
        assert_eq!(
            msg(json!({"t": "abcdef"})),
            "t must be at most 5 characters"
        );
        assert_eq!(msg(json!([1])), "body must be a JSON object");
        // characters, not bytes
        assert!(required_string(&json!({"t": "ééééé"}), "t", max).is_ok());
    }
}
