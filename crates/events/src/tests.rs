use super::*;
use serde_json::json;

#[test]
fn parses_a_course_event_without_extras() {
    let env = Envelope::from_value(json!({
        "type": "CommentCreated",
        "data": {"id": "c1", "content": "hi", "postId": "p1", "status": "pending"}
    }))
    .expect("valid");
    assert_eq!(env.id, None);
    assert_eq!(env.seq, None);
    assert_eq!(
        env.event,
        Some(Event::CommentCreated(CommentCreated {
            id: "c1".into(),
            content: "hi".into(),
            post_id: "p1".into(),
            status: Status::Pending,
        }))
    );
    assert_eq!(env.dedup_key().as_deref(), Some("CommentCreated:c1"));
}

#[test]
fn round_trips_course_shape_with_our_extras() {
    let mut env = Envelope::new(Event::PostCreated(PostCreated {
        id: "p".into(),
        title: "t".into(),
    }));
    env.seq = Some(7);
    let value = env.to_value();
    assert_eq!(value["type"], "PostCreated");
    assert_eq!(value["data"], json!({"id": "p", "title": "t"}));
    assert_eq!(value["seq"], 7);
    let back = Envelope::from_value(value).expect("valid");
    assert_eq!(back, env);
    assert!(back.dedup_key().expect("key").starts_with("id:"));
}

#[test]
fn unknown_types_are_accepted_and_carry_no_event() {
    let env = Envelope::from_value(json!({"type": "PostLiked", "data": 3})).expect("valid");
    assert_eq!(env.event, None);
    assert_eq!(env.type_name, "PostLiked");
}

#[test]
fn refuses_malformed_events() {
    let cases = [
        (json!([1, 2]), None),
        (json!({"data": {}}), Some("type")),
        (json!({"type": 5, "data": {}}), Some("type")),
        (json!({"type": "PostCreated"}), Some("data")),
        (json!({"type": "PostCreated", "data": "x"}), Some("data")),
        (
            json!({"type": "PostCreated", "data": {"id": "p"}}),
            Some("data"),
        ),
        (
            json!({"type": "PostCreated", "data": {"id": 5, "title": "t"}}),
            Some("data"),
        ),
        (
            json!({"type": "PostCreated", "data": {"id": "", "title": "t"}}),
            Some("data.id"),
        ),
        (
            json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "weird"}}),
            Some("data"),
        ),
        (
            json!({"type": "PostCreated", "id": 3, "data": {"id": "p", "title": "t"}}),
            Some("id"),
        ),
        (
            json!({"type": "PostCreated", "seq": -1, "data": {"id": "p", "title": "t"}}),
            Some("seq"),
        ),
    ];
    for (value, field) in cases {
        let err = Envelope::from_value(value.clone()).expect_err(&value.to_string());
        assert_eq!(err.field.as_deref(), field, "{value}");
    }
    assert!(Envelope::from_slice(b"{not json").is_err());
}

#[test]
fn status_only_moves_forward() {
    assert!(Status::Approved.rank() > Status::Pending.rank());
    assert!(Status::Rejected.rank() > Status::Pending.rank());
    assert_eq!(Status::parse("approved"), Some(Status::Approved));
    assert_eq!(Status::parse("Approved"), None);
}
