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

#[test]
fn carries_the_correlation_id_and_refuses_one_unfit_for_a_header() {
    let env = Envelope::new(Event::PostCreated(PostCreated {
        id: "p".into(),
        title: "t".into(),
    }))
    .caused_by(Some("req-42".into()));
    let value = env.to_value();
    assert_eq!(value["correlationId"], "req-42");
    assert_eq!(Envelope::from_value(value).expect("valid"), env);
    for bad in [
        json!(""),
        json!("a b"),
        json!("line\nbreak"),
        json!(7),
        json!("x".repeat(129)),
    ] {
        let err = Envelope::from_value(json!({
            "type": "PostCreated", "data": {"id": "p", "title": "t"}, "correlationId": bad
        }))
        .expect_err("refused");
        assert_eq!(err.field.as_deref(), Some("correlationId"));
    }
}

#[test]
fn knows_when_an_event_of_ours_was_created() {
    let before = std::time::SystemTime::now() - std::time::Duration::from_millis(2);
    let env = Envelope::new(Event::PostCreated(PostCreated {
        id: "p".into(),
        title: "t".into(),
    }));
    let created = env.created_at().expect("a UUIDv7 id");
    assert!(created >= before && created <= std::time::SystemTime::now());
    let course =
        Envelope::from_value(json!({"type": "PostCreated", "data": {"id": "p", "title": "t"}}))
            .expect("valid");
    assert_eq!(course.created_at(), None);
}

#[test]
fn the_wire_event_schema_names_every_known_type_and_our_extras() {
    use utoipa::PartialSchema;
    let event = serde_json::to_value(Event::schema()).expect("json");
    let variants = event["oneOf"].as_array().expect("one of the known events");
    let types: Vec<&str> = variants
        .iter()
        .filter_map(|v| v["properties"]["type"]["enum"][0].as_str())
        .collect();
    assert_eq!(types, KNOWN_TYPES);
    for variant in variants {
        assert_eq!(variant["required"], json!(["data", "type"]), "{variant}");
    }
    let extras = serde_json::to_value(EventExtras::schema()).expect("json");
    let names: Vec<&String> = extras["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(names, ["id", "seq", "correlationId"]);
    assert_eq!(extras["properties"]["id"]["maxLength"], json!(MAX_ID_LEN));
}
