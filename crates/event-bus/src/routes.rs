use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blog_events::Envelope;
use blog_kit::error::{JsonBody, JsonBytes};
use blog_kit::http::BATCH_BODY_LIMIT;
use blog_kit::{ApiError, ErrorBody, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

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

/// The routes of [`router`], described.
#[derive(OpenApi)]
#[openapi(paths(publish, list, publish_batch, subscribers_status, dead_letters, replay))]
struct BusApi;

/// The description of [`router`].
pub fn api() -> utoipa::openapi::OpenApi {
    BusApi::openapi()
}

/// `"OK"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum OkStatus {
    #[serde(rename = "OK")]
    Ok,
}

/// `POST /events`'s answer: the event is stored, with its place in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    #[schema(inline)]
    pub status: OkStatus,
    /// The event's `seq` (a resent `id` gets its first `seq`).
    pub seq: Option<i64>,
}

/// `POST /events/batch`'s answer: every event stored, in array order, in
/// one commit.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedBatch {
    #[schema(inline)]
    pub status: OkStatus,
    /// `seqs[i]` is the `seq` of event `i`.
    pub seqs: Vec<i64>,
}

/// Where each subscriber stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscribers {
    /// The newest stored `seq`.
    pub last_seq: i64,
    pub subscribers: Vec<SubscriberStatus>,
}

/// One subscriber's place in the log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatus {
    /// Its `POST /events` URL.
    pub url: String,
    /// The last `seq` it took (in memory, saved at most every 250 ms).
    pub cursor: i64,
    /// `lastSeq - cursor`.
    pub lag: i64,
    /// Its events set aside, not counting those marked for replay.
    pub dead_letters: i64,
    /// False once it answered 404 or 405 to `POST <url>/batch` (a course service).
    pub batches: bool,
    /// The event types its last answer said it applies (sorted); `null` when it
    /// never said (a course service gets every event).
    pub consumes: Option<Vec<String>>,
}

/// `POST /dead-letters/replay`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// How many letters were marked to be sent again.
    pub replayed: u64,
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
///
/// The event is stored durably (fsync) with a sequence number before the
/// answer, then delivered to every subscriber, in order, at least once.
#[utoipa::path(
    post,
    path = "/events",
    operation_id = "publishEvent",
    request_body(content = blog_events::WireEvent, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored.", body = Published),
        (status = 400, description = "Not a valid event.", body = ErrorBody),
        (status = 503, description = "Not stored: storage failed.", body = ErrorBody)
    )
)]
async fn publish(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Published>, ApiError> {
    let event = new_event(body)?;
    let appended = state.log.append(vec![event]).await?;
    let seq = appended.first().map(|a| a.seq);
    tracing::debug!(?seq, "event stored");
    Ok(Json(Published {
        status: OkStatus::Ok,
        seq,
    }))
}

/// `POST /events/batch` (ours: what our relays send) → 200 `{"status":"OK",
/// "seqs":[...]}` once every event of the array is stored, in order, in one
/// commit. All or nothing: one invalid event refuses the batch.
#[utoipa::path(
    post,
    path = "/events/batch",
    operation_id = "publishEventBatch",
    request_body(content = Vec<blog_events::WireEvent>, content_type = "application/json"),
    responses(
        (status = 200, description = "Every event stored.", body = PublishedBatch),
        (
            status = 400,
            description = "Not an array, or one event is invalid: none stored.",
            body = ErrorBody
        ),
        (status = 503, description = "Storage failed: none stored.", body = ErrorBody)
    )
)]
async fn publish_batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<PublishedBatch>, ApiError> {
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
    Ok(Json(PublishedBatch {
        status: OkStatus::Ok,
        seqs,
    }))
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
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "listEvents",
    params(
        ("after" = Option<u64>, Query, description = "Only events with a greater `seq` (default 0)."),
        ("limit" = Option<u64>, Query, description = "At most this many events (default: all).")
    ),
    responses(
        (
            status = 200,
            description = "The stored events, oldest first, each with its `seq`.",
            body = Vec<blog_events::WireEvent>
        ),
        (
            status = 400,
            description = "`after` or `limit` is not a non-negative integer, or given twice.",
            body = ErrorBody
        )
    )
)]
async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    // A parameter given twice is ambiguous: say which.
    let Query(params) = params.map_err(|e| {
        let text = e.body_text();
        let field = ["after", "limit"]
            .into_iter()
            .find(|name| text.contains(&format!("`{name}`")));
        match field {
            Some(name) => ApiError::field(format!("{name} must be given once: {text}"), name),
            None => ApiError::BadRequest(text),
        }
    })?;
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
#[utoipa::path(
    get,
    path = "/subscribers",
    operation_id = "listSubscribers",
    responses((status = 200, description = "Where each subscriber stands.", body = Subscribers))
)]
async fn subscribers_status(State(state): State<AppState>) -> Result<Json<Subscribers>, ApiError> {
    let last = state.log.last_seq();
    let counts: HashMap<String, i64> = undelivered::counts(state.log.db())
        .await?
        .into_iter()
        .collect();
    let subscribers: Vec<SubscriberStatus> = state
        .subscribers
        .iter()
        .map(|s| SubscriberStatus {
            url: s.url.clone(),
            cursor: s.cursor(),
            lag: last - s.cursor(),
            dead_letters: counts.get(&s.url).copied().unwrap_or(0),
            batches: s.takes_batches(),
            // What it said it applies (sorted); null: everything.
            consumes: s.consumes().map(|types| {
                let mut types: Vec<String> = types.iter().cloned().collect();
                types.sort();
                types
            }),
        })
        .collect();
    Ok(Json(Subscribers {
        last_seq: last,
        subscribers,
    }))
}

/// `GET /dead-letters` (ours): events set aside, oldest first, with the
/// subscriber that could not take them and why.
#[utoipa::path(
    get,
    path = "/dead-letters",
    operation_id = "listBusDeadLetters",
    responses((
        status = 200,
        description = "The events set aside, oldest first; letters marked for replay and not \
                       yet sent are not listed.",
        body = Vec<undelivered::Shown>
    ))
)]
async fn dead_letters(
    State(state): State<AppState>,
) -> Result<Json<Vec<undelivered::Shown>>, ApiError> {
    let mut out = Vec::new();
    for letter in undelivered::list(state.log.db()).await? {
        let event = state.log.get(letter.seq).await?;
        out.push(letter.shown(event.as_deref()));
    }
    Ok(Json(out))
}

/// Which dead letters to send again: `{}` (or an empty body) for all, a
/// subscriber's, some by id, or those ids of that subscriber.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// A subscriber's `/events` URL: only its letters.
    subscriber: Option<String>,
    /// Only the letters with these ids.
    ids: Option<Vec<i64>>,
}

/// `POST /dead-letters/replay {"subscriber"?, "ids"?}` (ours): sends the
/// selected dead letters (all by default) again, each to its subscriber.
///
/// Each subscriber's delivery sends its marked letters before its new
/// events, with the same bounded retries: a letter delivered is forgotten;
/// one that fails again is listed again, its attempts added.
#[utoipa::path(
    post,
    path = "/dead-letters/replay",
    operation_id = "replayDeadLetters",
    request_body(
        content = ReplayRequest,
        content_type = "application/json",
        description = "Which letters; an empty body means all, as `{}` does."
    ),
    responses(
        (status = 200, description = "The letters marked.", body = Replayed),
        (status = 400, description = "Not that shape (other fields are refused).", body = ErrorBody),
        (status = 415, description = "Not declared as JSON.", body = ErrorBody)
    )
)]
async fn replay(
    State(state): State<AppState>,
    // JSON only: a form or plain text is what a page on another origin can
    // send without asking first.
    JsonBytes(body): JsonBytes,
) -> Result<Json<Replayed>, ApiError> {
    // An empty body means everything, as `{}` does.
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
    Ok(Json(Replayed { replayed }))
}
