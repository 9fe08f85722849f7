//! Errors as the API reports them: `{"errors":[{"message","field"}]}`, mapped
//! to a status code here and nowhere else.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
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

#[derive(Serialize)]
struct ErrorBody {
    errors: Vec<FieldError>,
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

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
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
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
    }
}

/// Reads a required string field from a JSON object body, trimmed, not empty,
/// and at most `max_chars` characters long.
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
