//! The four course events and the envelope they travel in.
//!
//! On the wire an event is `{"type": T, "data": {...}}` (course). Ours adds
//! top-level `id` (a UUIDv7, set by the emitter), `seq` (set by the bus) and
//! `correlationId` (the request that caused it, passed on to the events it
//! causes in turn); course peers ignore them, and events without them are
//! accepted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

mod status;
pub use status::Status;

/// Longest id (post, comment or event) accepted from the wire.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` may serve as a correlation id: 1 to [`MAX_ID_LEN`] bytes of
/// visible ASCII (what request-id headers hold), so it is safe in a header
/// and a log line.
pub fn valid_correlation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A control character no text of the blog may hold, whatever the engine:
/// NUL (PostgreSQL cannot store it) and the other C0 controls and DEL, all
/// but tab, line feed and carriage return.
pub fn forbidden_control(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\x7f')
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostCreated {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: String,
    pub content: String,
    pub post_id: String,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: String,
    pub post_id: String,
    pub status: Status,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: String,
    pub post_id: String,
    pub content: String,
    pub status: Status,
}

/// The type names of the events this system knows.
pub const KNOWN_TYPES: [&str; 4] = [
    "PostCreated",
    "CommentCreated",
    "CommentModerated",
    "CommentUpdated",
];

/// An event type as a bounded metric label: a known type by name, anything
/// else (a course peer's own types) as `unknown`.
pub fn type_label(name: &str) -> &'static str {
    KNOWN_TYPES
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("unknown")
}

/// An event of a type this system knows: its `type` and its `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    PostCreated(PostCreated),
    CommentCreated(CommentCreated),
    CommentModerated(CommentModerated),
    CommentUpdated(CommentUpdated),
}

/// What a handler applies: one type of event (its payload, such as
/// [`CommentModerated`]), or [`Event`] for several. The consumer hands a
/// handler only what it applies.
pub trait Consumable: Sized {
    /// The event types it stands for.
    const TYPES: &'static [&'static str];

    /// `event`, if it is one of these.
    fn pick(event: &Event) -> Option<&Self>;
}

macro_rules! consumable_payloads {
    ($($name:ident),*) => {$(
        impl Consumable for $name {
            const TYPES: &'static [&'static str] = &[stringify!($name)];

            fn pick(event: &Event) -> Option<&Self> {
                match event {
                    Event::$name(payload) => Some(payload),
                    _ => None,
                }
            }
        }
    )*};
}

consumable_payloads!(
    PostCreated,
    CommentCreated,
    CommentModerated,
    CommentUpdated
);

impl Consumable for Event {
    const TYPES: &'static [&'static str] = &KNOWN_TYPES;

    fn pick(event: &Event) -> Option<&Self> {
        Some(event)
    }
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::PostCreated(_) => "PostCreated",
            Event::CommentCreated(_) => "CommentCreated",
            Event::CommentModerated(_) => "CommentModerated",
            Event::CommentUpdated(_) => "CommentUpdated",
        }
    }

    /// A key that names this event's effect, for events from course peers that
    /// carry no id: the same key means the same effect, so applying it again
    /// is a no-op.
    pub fn natural_key(&self) -> String {
        match self {
            Event::PostCreated(e) => format!("PostCreated:{}", e.id),
            Event::CommentCreated(e) => format!("CommentCreated:{}", e.id),
            Event::CommentModerated(e) => format!("CommentModerated:{}:{}", e.id, e.status),
            Event::CommentUpdated(e) => format!("CommentUpdated:{}:{}", e.id, e.status),
        }
    }

    /// Its free text, by field.
    fn texts(&self) -> Vec<(&'static str, &str)> {
        match self {
            Event::PostCreated(e) => vec![("data.title", &e.title)],
            Event::CommentCreated(e) => vec![("data.content", &e.content)],
            Event::CommentModerated(e) => vec![("data.content", &e.content)],
            Event::CommentUpdated(e) => vec![("data.content", &e.content)],
        }
    }

    fn ids(&self) -> Vec<(&'static str, &str)> {
        match self {
            Event::PostCreated(e) => vec![("data.id", &e.id)],
            Event::CommentCreated(e) => vec![("data.id", &e.id), ("data.postId", &e.post_id)],
            Event::CommentModerated(e) => vec![("data.id", &e.id), ("data.postId", &e.post_id)],
            Event::CommentUpdated(e) => vec![("data.id", &e.id), ("data.postId", &e.post_id)],
        }
    }
}

/// Why an incoming event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub message: String,
    pub field: Option<String>,
}

impl EventError {
    fn new(message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }
}

/// An event as received or emitted, with our optional extras.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Event id (ours). Absent on events from course peers.
    pub id: Option<String>,
    /// Bus sequence number (ours). Absent unless the event came through our bus.
    pub seq: Option<i64>,
    /// The request this event follows from (ours), through any events in
    /// between: what a log search for one user action finds everywhere.
    pub correlation_id: Option<String>,
    /// The type name as sent, known or not.
    pub type_name: String,
    /// `None` for types this system does not know (they are ignored, course rule).
    pub event: Option<Event>,
}

impl Envelope {
    /// A new event of ours, with a fresh time-ordered id.
    pub fn new(event: Event) -> Self {
        Self {
            id: Some(uuid::Uuid::now_v7().to_string()),
            seq: None,
            correlation_id: None,
            type_name: event.type_name().to_owned(),
            event: Some(event),
        }
    }

    /// This event, caused by the request or event with `correlation_id`.
    pub fn caused_by(mut self, correlation_id: Option<String>) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// When the event was created: the time its UUIDv7 id carries (ours
    /// only; course peers' events have no id). For the pipeline's latency.
    pub fn created_at(&self) -> Option<std::time::SystemTime> {
        let id = uuid::Uuid::try_parse(self.id.as_deref()?).ok()?;
        let (secs, nanos) = id.get_timestamp()?.to_unix();
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
    }

    /// The key a consumer records to apply this event once.
    pub fn dedup_key(&self) -> Option<String> {
        match (&self.id, &self.event) {
            (Some(id), _) => Some(format!("id:{id}")),
            (None, Some(event)) => Some(event.natural_key()),
            (None, None) => None,
        }
    }

    /// Parses and validates one event from JSON.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| EventError::new(format!("malformed JSON: {e}"), None))?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Self, EventError> {
        let Value::Object(mut map) = value else {
            return Err(EventError::new("an event must be a JSON object", None));
        };
        let type_name = match map.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(_) => {
                return Err(EventError::new(
                    "type must be a non-empty string",
                    Some("type"),
                ));
            }
            None => return Err(EventError::new("type is required", Some("type"))),
        };
        let id = match map.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => Some(id.clone()),
            Some(_) => {
                return Err(EventError::new(
                    format!("id must be a non-empty string of at most {MAX_ID_LEN} bytes"),
                    Some("id"),
                ));
            }
        };
        let seq = match map.get("seq") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(seq) if seq > 0 => Some(seq),
                _ => {
                    return Err(EventError::new(
                        "seq must be a positive integer",
                        Some("seq"),
                    ));
                }
            },
        };
        let correlation_id = match map.get("correlationId") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if valid_correlation_id(c) => Some(c.clone()),
            Some(_) => {
                return Err(EventError::new(
                    format!("correlationId must be 1 to {MAX_ID_LEN} visible ASCII characters"),
                    Some("correlationId"),
                ));
            }
        };
        let known = KNOWN_TYPES.contains(&type_name.as_str());
        let event = if known {
            let data = match map.remove("data") {
                Some(data @ Value::Object(_)) => data,
                Some(_) => return Err(EventError::new("data must be an object", Some("data"))),
                None => return Err(EventError::new("data is required", Some("data"))),
            };
            let mut tagged = Map::new();
            tagged.insert("type".into(), Value::String(type_name.clone()));
            tagged.insert("data".into(), data);
            let event: Event = serde_json::from_value(Value::Object(tagged)).map_err(|e| {
                EventError::new(format!("invalid {type_name} data: {e}"), Some("data"))
            })?;
            for (field, value) in event.ids() {
                if value.is_empty()
                    || value.len() > MAX_ID_LEN
                    || value.chars().any(char::is_control)
                {
                    return Err(EventError::new(
                        format!(
                            "{field} must be a non-empty string of at most {MAX_ID_LEN} bytes without control characters"
                        ),
                        Some(field),
                    ));
                }
            }
            for (field, value) in event.texts() {
                if value.chars().any(forbidden_control) {
                    return Err(EventError::new(
                        format!(
                            "{field} must not contain NUL or control characters other than tab and line breaks"
                        ),
                        Some(field),
                    ));
                }
            }
            Some(event)
        } else {
            None
        };
        Ok(Self {
            id,
            seq,
            correlation_id,
            type_name,
            event,
        })
    }

    /// The course JSON plus our extras: `{"type","data","id"?,"seq"?,"correlationId"?}`.
    /// Only known events are serialised; unknown ones are never emitted by us.
    pub fn to_value(&self) -> Value {
        let mut map = match self.event.as_ref().map(serde_json::to_value) {
            Some(Ok(Value::Object(map))) => map,
            _ => {
                let mut map = Map::new();
                map.insert("type".into(), Value::String(self.type_name.clone()));
                map
            }
        };
        if let Some(id) = &self.id {
            map.insert("id".into(), Value::String(id.clone()));
        }
        if let Some(seq) = self.seq {
            map.insert("seq".into(), Value::from(seq));
        }
        if let Some(correlation_id) = &self.correlation_id {
            map.insert(
                "correlationId".into(),
                Value::String(correlation_id.clone()),
            );
        }
        Value::Object(map)
    }

    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Our additions to a course event, each optional (course peers send none
/// and ignore them).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventExtras {
    /// The event's id, a UUIDv7 set by its emitter: what a consumer records
    /// to apply it once.
    #[schema(min_length = 1, max_length = 128)]
    pub id: Option<String>,
    /// Its place in the bus's log, set by the bus.
    #[schema(minimum = 1)]
    pub seq: Option<i64>,
    /// The request it follows from, through any events in between: 1 to 128
    /// visible ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub correlation_id: Option<String>,
}

/// An event on the wire, as `POST /events` takes it and the bus stores and
/// delivers it: `{"type","data"}` with our optional extras. A known `type`
/// must come with valid `data`; an event of any other type is stored and
/// delivered by the bus as it is, and answered but ignored by the services.
/// Free text may not hold NUL or control characters other than tab and line
/// breaks.
// A description only: `Envelope::from_value` reads the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct WireEvent {
    #[serde(flatten)]
    pub event: Event,
    #[serde(flatten)]
    pub extras: EventExtras,
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
