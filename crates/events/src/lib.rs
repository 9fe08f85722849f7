//! The four course events and the envelope they travel in.
//!
//! On the wire an event is `{"type": T, "data": {...}}` (course). Ours adds
//! top-level `id` (a UUIDv7, set by the emitter) and `seq` (set by the bus);
//! course peers ignore them, and events without them are accepted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod status;
pub use status::Status;

/// Longest id (post, comment or event) accepted from the wire.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostCreated {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: String,
    pub content: String,
    pub post_id: String,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: String,
    pub post_id: String,
    pub status: Status,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: String,
    pub post_id: String,
    pub content: String,
    pub status: Status,
}

/// An event of a type this system knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    PostCreated(PostCreated),
    CommentCreated(CommentCreated),
    CommentModerated(CommentModerated),
    CommentUpdated(CommentUpdated),
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
            type_name: event.type_name().to_owned(),
            event: Some(event),
        }
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
        let known = matches!(
            type_name.as_str(),
            "PostCreated" | "CommentCreated" | "CommentModerated" | "CommentUpdated"
        );
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
                if value.is_empty() || value.len() > MAX_ID_LEN {
                    return Err(EventError::new(
                        format!("{field} must be a non-empty string of at most {MAX_ID_LEN} bytes"),
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
            type_name,
            event,
        })
    }

    /// The course JSON plus our extras: `{"type","data","id"?,"seq"?}`.
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
        Value::Object(map)
    }

    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

#[cfg(test)]
mod tests;
