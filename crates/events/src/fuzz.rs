//! The decoder fuzzed: whatever arrives on the wire, it answers with an
//! event or a reason, never a panic; what it accepts it writes back the same.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Something shaped like an event: a known or odd type, data with the
/// fields the known types use, each of any value or a plausible one.
fn event_like() -> impl Strategy<Value = Value> {
    let event_type = prop_oneof![
        Just("PostCreated".to_owned()),
        Just("CommentCreated".to_owned()),
        Just("CommentModerated".to_owned()),
        Just("CommentUpdated".to_owned()),
        ".{0,10}",
    ];
    let text = prop_oneof![".{0,20}".prop_map(Value::String), json()];
    let status = prop_oneof![
        Just(Value::from("pending")),
        Just(Value::from("approved")),
        Just(Value::from("rejected")),
        json(),
    ];
    (
        event_type,
        text.clone(),
        text.clone(),
        text.clone(),
        text,
        status,
        prop::option::of(json()),
        prop::option::of(json()),
    )
        .prop_map(|(t, id, title, content, post_id, status, top_id, seq)| {
            let mut data = Map::new();
            data.insert("id".into(), id);
            data.insert("title".into(), title);
            data.insert("content".into(), content);
            data.insert("postId".into(), post_id);
            data.insert("status".into(), status);
            let mut event = Map::new();
            event.insert("type".into(), Value::String(t));
            event.insert("data".into(), Value::Object(data));
            if let Some(id) = top_id {
                event.insert("id".into(), id);
            }
            if let Some(seq) = seq {
                event.insert("seq".into(), seq);
            }
            Value::Object(event)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_are_an_event_or_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = Envelope::from_slice(&bytes) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn any_json_is_an_event_or_a_reason(value in json()) {
        if let Err(e) = Envelope::from_value(value) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn what_is_accepted_is_valid_and_written_back_the_same(value in event_like()) {
        match Envelope::from_value(value) {
            Ok(envelope) => {
                if let Some(event) = &envelope.event {
                    for (_, text) in event.texts() {
                        prop_assert!(!text.chars().any(forbidden_control));
                    }
                    for (_, id) in event.ids() {
                        prop_assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
                    }
                    let again = Envelope::from_value(envelope.to_value());
                    prop_assert_eq!(again.ok().and_then(|e| e.event), envelope.event.clone());
                }
            }
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }
}
