use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use blog_events::Envelope;
use blog_kit::error::JsonBody;
use blog_kit::{ApiError, FieldError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{EventLog, Subscriber};

#[derive(Clone)]
struct AppState {
    log: Arc<EventLog>,
    subscribers: Arc<Vec<Arc<Subscriber>>>,
}

pub fn router(log: Arc<EventLog>, subscribers: Vec<Arc<Subscriber>>) -> Router {
    Router::new()
        .route("/events", get(list).post(publish))
        .route("/subscribers", get(subscribers_status))
        .with_state(AppState {
            log,
            subscribers: Arc::new(subscribers),
        })
}

/// `POST /events` → 200 `{"status":"OK"}` once stored. Known event types are
/// checked (a malformed one would be refused by every consumer); unknown
/// types are stored and delivered as they are.
async fn publish(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let envelope = Envelope::from_value(body.clone()).map_err(|e| {
        ApiError::Invalid(vec![FieldError {
            message: e.message,
            field: e.field,
        }])
    })?;
    let Value::Object(event) = body else {
        return Err(ApiError::BadRequest(
            "an event must be a JSON object".into(),
        ));
    };
    let appended = state.log.append(&envelope, event).await?;
    tracing::debug!(r#type = %envelope.type_name, seq = appended.seq, new = appended.new, "event stored");
    Ok(Json(json!({"status": "OK", "seq": appended.seq})))
}

#[derive(Deserialize)]
struct ListParams {
    after: Option<String>,
    limit: Option<String>,
}

fn parse_param(raw: Option<&str>, name: &str, default: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => {
            raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::field(format!("{name} must be a non-negative integer"), name)
            })
        }
    }
}

/// `GET /events[?after=SEQ][&limit=N]` → stored events, oldest first.
async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let after = parse_param(params.after.as_deref(), "after", 0)?;
    let limit = parse_param(params.limit.as_deref(), "limit", i64::MAX)?;
    let events = state.log.after(after, limit).await?;
    let mut body =
        String::with_capacity(events.iter().map(|(_, b)| b.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, (_, event)) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push(']');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /subscribers` (ours): each subscriber's cursor and how far behind it is.
async fn subscribers_status(State(state): State<AppState>) -> Json<Value> {
    let last = state.log.last_seq();
    let list: Vec<Value> = state
        .subscribers
        .iter()
        .map(|s| json!({"url": s.url, "cursor": s.cursor(), "lag": last - s.cursor()}))
        .collect();
    Json(json!({"lastSeq": last, "subscribers": list}))
}
