use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blog_events::Envelope;
use blog_kit::error::JsonBody;
use blog_kit::http::BATCH_BODY_LIMIT;
use blog_kit::{ApiError, FieldError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::log::NewEvent;
use crate::undelivered;
use crate::{EventLog, Subscriber};

#[derive(Clone)]
struct AppState {
    log: Arc<EventLog>,
    subscribers: Arc<Vec<Arc<Subscriber>>>,
}

pub fn router(log: Arc<EventLog>, subscribers: Vec<Arc<Subscriber>>) -> Router {
    Router::new()
        .route("/events", get(list).post(publish))
        .route(
            "/events/batch",
            post(publish_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/subscribers", get(subscribers_status))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay))
        .with_state(AppState {
            log,
            subscribers: Arc::new(subscribers),
        })
}

fn invalid(e: blog_events::EventError) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        message: e.message,
        field: e.field,
    }])
}

/// Checks one event as the bus takes it: known types must be valid (every
/// consumer would refuse a malformed one); unknown types are stored and
/// delivered as they are.
fn new_event(body: Value) -> Result<NewEvent, ApiError> {
    let envelope = Envelope::from_value(body.clone()).map_err(invalid)?;
    let Value::Object(body) = body else {
        return Err(ApiError::BadRequest(
            "an event must be a JSON object".into(),
        ));
    };
    Ok(NewEvent {
        id: envelope.id,
        body,
    })
}

/// `POST /events` → 200 `{"status":"OK","seq"}` once stored.
async fn publish(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let event = new_event(body)?;
    let appended = state.log.append(vec![event]).await?;
    let seq = appended.first().map(|a| a.seq);
    tracing::debug!(?seq, "event stored");
    Ok(Json(json!({"status": "OK", "seq": seq})))
}

/// `POST /events/batch` (ours: what our relays send) → 200 `{"status":"OK",
/// "seqs":[...]}` once every event of the array is stored, in order, in one
/// commit. All or nothing: one invalid event refuses the batch.
async fn publish_batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let Value::Array(events) = body else {
        return Err(ApiError::BadRequest(
            "a batch must be a JSON array of events".into(),
        ));
    };
    let events = events
        .into_iter()
        .map(new_event)
        .collect::<Result<Vec<_>, _>>()?;
    let appended = state.log.append(events).await?;
    let seqs: Vec<i64> = appended.iter().map(|a| a.seq).collect();
    Ok(Json(json!({"status": "OK", "seqs": seqs})))
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

/// `GET /subscribers` (ours): each subscriber's cursor, how far behind it
/// is, and how many of its events are set aside as dead letters.
async fn subscribers_status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let last = state.log.last_seq();
    let counts: HashMap<String, i64> = undelivered::counts(state.log.db())
        .await?
        .into_iter()
        .collect();
    let list: Vec<Value> = state
        .subscribers
        .iter()
        .map(|s| {
            json!({
                "url": s.url,
                "cursor": s.cursor(),
                "lag": last - s.cursor(),
                "deadLetters": counts.get(&s.url).copied().unwrap_or(0),
                "batches": s.takes_batches(),
                // What it said it applies (sorted); null: everything.
                "consumes": s.consumes().map(|types| {
                    let mut types: Vec<String> = types.iter().cloned().collect();
                    types.sort();
                    types
                }),
            })
        })
        .collect();
    Ok(Json(json!({"lastSeq": last, "subscribers": list})))
}

/// `GET /dead-letters` (ours): events set aside, oldest first, with the
/// subscriber that could not take them and why.
async fn dead_letters(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for letter in undelivered::list(state.log.db()).await? {
        let event = state.log.get(letter.seq).await?;
        out.push(letter.to_json(event.as_deref()));
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    subscriber: Option<String>,
    ids: Option<Vec<i64>>,
}

/// `POST /dead-letters/replay {"subscriber"?, "ids"?}` (ours): sends the
/// selected dead letters (all by default) again, each to its subscriber.
async fn replay(
    State(state): State<AppState>,
    body: bytes::Bytes,
) -> Result<Json<Value>, ApiError> {
    // No body at all means everything, as `{}` does.
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"subscriber\"?: URL, \"ids\"?: [id, ...]}}: {e}"
            ))
        })?
    };
    let replayed = undelivered::replay(
        state.log.db(),
        undelivered::Selection {
            subscriber: request.subscriber,
            ids: request.ids,
        },
    )
    .await?;
    for subscriber in state.subscribers.iter() {
        subscriber.wake_replay();
    }
    Ok(Json(json!({ "replayed": replayed })))
}
