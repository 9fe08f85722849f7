//! Bad input gets a clear 4xx JSON error and changes nothing.

use crate::support;

use axum::http::{Method, StatusCode};
use blog::settings::ServiceKind;
use serde_json::{Value, json};
use support::TestSystem;

fn first_error(body: &Value) -> (&str, Option<&str>) {
    let error = &body["errors"][0];
    (
        error["message"].as_str().unwrap_or_default(),
        error["field"].as_str(),
    )
}

engine_tests!(bad_requests_get_4xx_json_and_change_nothing: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn bad_requests_get_4xx_json_and_change_nothing(engines: support::Engines) {
    let system = TestSystem::spawn(engines).await;
    let create = format!("{}/posts/create", system.gateway());
    let comment = format!("{}/posts/some-post/comments", system.gateway());
    let json_type = Some("application/json");
    let long_title = "t".repeat(201);
    let long_content = "c".repeat(1001);
    let huge = format!("{{\"title\":\"{}\"}}", "x".repeat(70 * 1024));
    // (what, url, content type, body, expected status, expected field)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        String,
        StatusCode,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            &create,
            json_type,
            "{\"title\":".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "not an object",
            &create,
            json_type,
            "[1,2]".into(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "wrong type",
            &create,
            json_type,
            r#"{"title":42}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "missing",
            &create,
            json_type,
            "{}".into(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "empty",
            &create,
            json_type,
            r#"{"title":"   "}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "over-long",
            &create,
            json_type,
            json!({"title": long_title}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "wrong content type",
            &create,
            Some("text/plain"),
            r#"{"title":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "no content type",
            &create,
            None,
            r#"{"title":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "over the body limit",
            &create,
            json_type,
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "comment wrong type",
            &comment,
            json_type,
            r#"{"content":[]}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("content"),
        ),
        (
            "comment missing",
            &comment,
            json_type,
            r#"{"title":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("content"),
        ),
        (
            "comment over-long",
            &comment,
            json_type,
            json!({"content": long_content}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("content"),
        ),
        // Before: 201 on SQLite, a retryable 503 for ever on PostgreSQL.
        (
            "NUL in a title",
            &create,
            json_type,
            r#"{"title":"a\u0000b"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("title"),
        ),
        (
            "a control character in a comment",
            &comment,
            json_type,
            r#"{"content":"bell \u0007"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("content"),
        ),
    ];
    for (what, url, content_type, body, status, field) in cases {
        let answer = system.send(Method::POST, url, content_type, body).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        let (message, got_field) = first_error(&answer.body);
        assert!(!message.is_empty(), "{what}: a message");
        assert_eq!(got_field, field, "{what}");
    }
    // Unknown routes and methods, on a service directly and through the gateway.
    let unknown = system
        .get(&format!("{}/nope", system.url(ServiceKind::Posts)))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(first_error(&unknown.body).0, "not found");
    let wrong_method = system.send(Method::DELETE, &create, None, "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(first_error(&wrong_method.body).0, "method not allowed");

    // Nothing was stored or emitted.
    assert_eq!(system.query().await, json!({}));
    assert_eq!(
        system
            .get(&format!("{}/posts", system.url(ServiceKind::Posts)))
            .await
            .body,
        json!({})
    );
    assert_eq!(system.get(&comment).await.body, json!([]));
    assert!(system.bus_events().await.is_empty());
    system.shutdown().await;
}

engine_tests!(malformed_events_are_refused_everywhere_and_unknown_ones_ignored: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn malformed_events_are_refused_everywhere_and_unknown_ones_ignored(
    engines: support::Engines,
) {
    let system = TestSystem::spawn(engines).await;
    let malformed = [
        json!("just a string"),
        json!({"data": {}}),
        json!({"type": "PostCreated"}),
        json!({"type": "PostCreated", "data": {"id": 1, "title": "t"}}),
        json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "x", "status": "maybe"}}),
        json!({"type": "CommentUpdated", "data": {"id": "", "postId": "p", "content": "x", "status": "approved"}}),
        json!({"type": "PostCreated", "data": {"id": "p", "title": "a\u{0}b"}}),
        json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "\u{1b}[2J", "status": "pending"}}),
    ];
    for kind in support::taking_events() {
        let url = format!("{}/events", system.url(kind));
        for event in &malformed {
            let answer = system.post(&url, event).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{kind:?} {event}");
            assert!(!first_error(&answer.body).0.is_empty());
        }
        let broken = system
            .send(Method::POST, &url, Some("application/json"), "{oops")
            .await;
        assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{kind:?}");
        let unknown = system
            .post(&url, &json!({"type": "PostLiked", "data": {"id": "p"}}))
            .await;
        assert_eq!(
            unknown.status,
            StatusCode::OK,
            "{kind:?}: unknown types are ignored"
        );
    }
    // Only the unknown event was stored (by the bus, or the bridge on
    // NATS), and delivered, and ignored.
    let events = system.bus_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "PostLiked");
    assert_eq!(system.query().await, json!({}));
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// The table: every port, every kind of bad input, each sent as a hand-made
// HTTP/1.1 request over TCP (so that what no ordinary client can send, an
// invalid UTF-8 path or a body broken off, is sent too), each answer read
// from the wire: status line, headers, body.
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a case expects besides its status.
#[derive(Debug, Clone)]
enum Expect {
    /// The documented error shape; the first error names this field (`None`:
    /// no field).
    Error(Option<&'static str>),
    /// A consumer's `POST /events/batch` answer: 200 with one result per
    /// event, these statuses, each refusal with its reason.
    Results(Vec<u16>),
    /// Refused by the HTTP layer before a request exists (a request line no
    /// URL can be made of): the status, with an empty body or the error shape.
    Unparsed,
}

struct Case {
    what: String,
    port: ServiceKind,
    request: Vec<u8>,
    /// The client shuts its write side after the request (a body broken off).
    half_close: bool,
    status: u16,
    expect: Expect,
}

const JSON: Option<&str> = Some("application/json");

/// A request as a client writes it; `Content-Length` is the body's.
fn request(
    method: &str,
    path: impl AsRef<[u8]>,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let length =
        (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")).then_some(body.len());
    head(method, path.as_ref(), content_type, length, body)
}

/// A request whose head promises `promised` bytes of body, of which only
/// `body` follows.
fn broken_off(path: &str, body: &[u8], promised: usize) -> Vec<u8> {
    assert!(promised > body.len());
    head("POST", path.as_bytes(), JSON, Some(promised), body)
}

fn head(
    method: &str,
    path: &[u8],
    content_type: Option<&str>,
    length: Option<usize>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: blog.test\r\nConnection: close\r\n");
    if let Some(content_type) = content_type {
        out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    if let Some(length) = length {
        out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// An answer as it came off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect();
        format!(
            "{} [{}] body \"{}\"",
            self.status,
            headers.join(", "),
            shorten(&self.body)
        )
    }
}

/// Up to 300 bytes of `bytes`, exactly: what is not printable ASCII escaped.
fn shorten(bytes: &[u8]) -> String {
    const KEEP: usize = 300;
    let text = bytes[..bytes.len().min(KEEP)].escape_ascii().to_string();
    if bytes.len() > KEEP {
        format!("{text}... ({} bytes)", bytes.len())
    } else {
        text
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one answer (after any interim 1xx answers) from what the server
/// wrote before it closed the connection.
fn parse_reply(mut raw: &[u8]) -> Result<Reply, String> {
    loop {
        let end = find(raw, b"\r\n\r\n")
            .ok_or_else(|| format!("no complete answer head in {:?}", shorten(raw)))?;
        let head =
            std::str::from_utf8(&raw[..end]).map_err(|_| "an answer head that is not text")?;
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        reply.body = if reply
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            dechunk(rest)?
        } else if let Some(length) = reply.header("content-length") {
            let length: usize = length.parse().map_err(|_| "a bad content-length")?;
            rest.get(..length)
                .ok_or_else(|| format!("a body cut short: {} of {length} bytes", rest.len()))?
                .to_vec()
        } else {
            rest.to_vec()
        };
        return Ok(reply);
    }
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or("a chunk without its size line")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| "a bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "a bad chunk size")?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(raw.get(..size).ok_or("a chunk cut short")?);
        raw = raw.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

/// Sends `request` on a new connection and reads until the server closes it
/// (every request says `Connection: close`). Writing and reading go on at
/// once: a server may answer (413) before it read the whole body.
async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Result<Reply, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // The server may close before it read everything: it answered.
        let _ = writer.write_all(request).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
    };
    let read = async {
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return raw,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    let ((), raw) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .map_err(|_| "no answer (or the connection never closed) within 20 s".to_owned())?;
    if raw.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    parse_reply(&raw)
}

/// Whether `reply` is what `case` expects: its exact status, JSON, and the
/// documented shape.
fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    let mut problems = Vec::new();
    if reply.status != case.status {
        problems.push(format!(
            "status {} instead of {}",
            reply.status, case.status
        ));
    }
    if matches!(case.expect, Expect::Unparsed) && reply.body.is_empty() {
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
    }
    let content_type = reply.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        problems.push(format!(
            "content type {content_type:?}, not application/json"
        ));
    }
    let body: Value = match serde_json::from_slice(&reply.body) {
        Ok(body) => body,
        Err(_) => {
            problems.push("a body that is not JSON".into());
            Value::Null
        }
    };
    match &case.expect {
        Expect::Unparsed => {
            if body.get("errors").and_then(Value::as_array).is_none() {
                problems.push("a body, but not the error shape".into());
            }
        }
        Expect::Error(field) => match body.get("errors").and_then(Value::as_array) {
            Some(errors) if !errors.is_empty() => {
                for error in errors {
                    let keys_ok = error
                        .as_object()
                        .is_some_and(|o| o.keys().all(|k| k == "message" || k == "field"));
                    let message_ok = error["message"]
                        .as_str()
                        .is_some_and(|m| !m.trim().is_empty());
                    let field_ok = error
                        .get("field")
                        .is_none_or(|f| f.as_str().is_some_and(|f| !f.is_empty()));
                    if !(keys_ok && message_ok && field_ok) {
                        problems.push(format!("an error not of the documented shape: {error}"));
                    }
                }
                let got = errors[0].get("field").and_then(Value::as_str);
                if got != *field {
                    problems.push(format!("field {got:?} instead of {field:?}"));
                }
            }
            _ => problems.push("no non-empty \"errors\" array".into()),
        },
        Expect::Results(statuses) => match body.get("results").and_then(Value::as_array) {
            Some(results) => {
                let got: Vec<u16> = results
                    .iter()
                    .map(|r| {
                        r["status"]
                            .as_u64()
                            .and_then(|s| u16::try_from(s).ok())
                            .unwrap_or(0)
                    })
                    .collect();
                if got != *statuses {
                    problems.push(format!("results {got:?} instead of {statuses:?}"));
                }
                for result in results.iter().filter(|r| r["status"] != 200) {
                    if result["error"].as_str().is_none_or(|e| e.trim().is_empty()) {
                        problems.push(format!("a refused event without its reason: {result}"));
                    }
                }
            }
            None => problems.push("no \"results\" array".into()),
        },
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The parts that take events: the four services and the bus.
const EVENT_PARTS: [ServiceKind; 5] = [
    ServiceKind::Posts,
    ServiceKind::Comments,
    ServiceKind::Query,
    ServiceKind::Moderation,
    ServiceKind::EventBus,
];

/// Malformed events, each with the field its refusal names.
fn malformed_events() -> Vec<(&'static str, Value, Option<&'static str>)> {
    let long_id = "x".repeat(129);
    vec![
        ("a string", json!("just a string"), None),
        ("an array", json!([{"type": "PostLiked"}]), None),
        ("a number", json!(42), None),
        ("null", Value::Null, None),
        ("no type", json!({"data": {}}), Some("type")),
        (
            "an empty type",
            json!({"type": "", "data": {}}),
            Some("type"),
        ),
        (
            "a numeric type",
            json!({"type": 7, "data": {}}),
            Some("type"),
        ),
        ("no data", json!({"type": "PostCreated"}), Some("data")),
        (
            "data an array",
            json!({"type": "PostCreated", "data": []}),
            Some("data"),
        ),
        (
            "a numeric post id",
            json!({"type": "PostCreated", "data": {"id": 1, "title": "t"}}),
            Some("data"),
        ),
        (
            "no title",
            json!({"type": "PostCreated", "data": {"id": "p"}}),
            Some("data"),
        ),
        (
            "an unknown status",
            json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "x", "status": "maybe"}}),
            Some("data"),
        ),
        (
            "an empty comment id",
            json!({"type": "CommentUpdated", "data": {"id": "", "postId": "p", "content": "x", "status": "approved"}}),
            Some("data.id"),
        ),
        (
            "an over-long post id",
            json!({"type": "PostCreated", "data": {"id": long_id, "title": "t"}}),
            Some("data.id"),
        ),
        (
            "a line break in a post id",
            json!({"type": "CommentModerated", "data": {"id": "c", "postId": "p\nq", "content": "x", "status": "approved"}}),
            Some("data.postId"),
        ),
        (
            "NUL in a title",
            json!({"type": "PostCreated", "data": {"id": "p", "title": "a\u{0}b"}}),
            Some("data.title"),
        ),
        (
            "ESC in a comment",
            json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "\u{1b}[2J", "status": "pending"}}),
            Some("data.content"),
        ),
        (
            "an empty event id",
            json!({"type": "PostLiked", "data": {}, "id": ""}),
            Some("id"),
        ),
        (
            "an over-long event id",
            json!({"type": "PostLiked", "data": {}, "id": "i".repeat(129)}),
            Some("id"),
        ),
        (
            "a zero seq",
            json!({"type": "PostLiked", "data": {}, "seq": 0}),
            Some("seq"),
        ),
        (
            "a string seq",
            json!({"type": "PostLiked", "data": {}, "seq": "1"}),
            Some("seq"),
        ),
    ]
}

/// Bodies every JSON route refuses before it looks at their content, with
/// the status: malformed, truncated, not UTF-8, or not sent as JSON at all.
fn unreadable_bodies(valid: &str) -> Vec<(&'static str, Option<&'static str>, Vec<u8>, u16)> {
    let truncated = valid.as_bytes()[..valid.len() / 2].to_vec();
    vec![
        ("malformed JSON", JSON, b"{oops".to_vec(), 400),
        ("truncated JSON", JSON, truncated, 400),
        (
            "trailing garbage",
            JSON,
            format!("{valid} x").into_bytes(),
            400,
        ),
        ("an empty body", JSON, Vec::new(), 400),
        (
            "invalid UTF-8 in the body",
            JSON,
            b"{\"title\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "a raw control character in a JSON string",
            JSON,
            b"{\"title\":\"a\x01b\"}".to_vec(),
            400,
        ),
        (
            "text/plain",
            Some("text/plain"),
            valid.as_bytes().to_vec(),
            415,
        ),
        ("no content type", None, valid.as_bytes().to_vec(), 415),
        (
            "a form",
            Some("application/x-www-form-urlencoded"),
            b"title=x&content=y".to_vec(),
            415,
        ),
        (
            "text/json",
            Some("text/json"),
            valid.as_bytes().to_vec(),
            415,
        ),
    ]
}

/// Body-field cases of a `{"<field>": text}` route (posts' title, comments'
/// content), each with the status and field of its refusal.
fn field_cases(
    field: &'static str,
    max: usize,
) -> Vec<(String, Vec<u8>, u16, Option<&'static str>)> {
    let body = |v: Value| json!({ field: v }).to_string().into_bytes();
    let over = "x".repeat(max + 1);
    let over_wide = "é".repeat(max + 1);
    let mut cases: Vec<(String, Vec<u8>, u16, Option<&'static str>)> = vec![
        ("an array".into(), b"[]".to_vec(), 400, Some(field)),
        (
            "an array of the object".into(),
            format!("[{}]", json!({field: "x"})).into_bytes(),
            400,
            Some(field),
        ),
        ("a number".into(), b"42".to_vec(), 400, Some(field)),
        (
            "a string".into(),
            format!("\"{field}\"").into_bytes(),
            400,
            Some(field),
        ),
        ("null".into(), b"null".to_vec(), 400, Some(field)),
        ("true".into(), b"true".to_vec(), 400, Some(field)),
        (format!("{field} missing"), b"{}".to_vec(), 400, Some(field)),
        (
            format!("{field} misspelt"),
            json!({"tilte": "x", "contnet": "x"})
                .to_string()
                .into_bytes(),
            400,
            Some(field),
        ),
        (format!("{field} null"), body(Value::Null), 400, Some(field)),
        (format!("{field} empty"), body(json!("")), 400, Some(field)),
        (
            format!("{field} blank"),
            body(json!(" \t\r\n ")),
            400,
            Some(field),
        ),
        (
            format!("{field} a number"),
            body(json!(42)),
            400,
            Some(field),
        ),
        (
            format!("{field} an array"),
            body(json!(["x"])),
            400,
            Some(field),
        ),
        (
            format!("{field} an object"),
            body(json!({"text": "x"})),
            400,
            Some(field),
        ),
        (
            format!("{field} a boolean"),
            body(json!(true)),
            400,
            Some(field),
        ),
        (
            format!("{field} over {max} characters"),
            body(json!(over)),
            400,
            Some(field),
        ),
        (
            format!("{field} over {max} two-byte characters"),
            body(json!(over_wide)),
            400,
            Some(field),
        ),
        (
            "over the body limit".into(),
            body(json!("x".repeat(70 * 1024))),
            413,
            None,
        ),
        (
            "just over 64 KiB".into(),
            vec![b' '; 64 * 1024 + 1],
            413,
            None,
        ),
    ];
    for (name, text) in [
        ("NUL", "a\u{0}b"),
        ("only NUL", "\u{0}"),
        ("BEL", "bell \u{7}"),
        ("ESC", "\u{1b}[2J clear"),
        ("DEL", "a\u{7f}b"),
        ("a vertical tab", "a\u{b}b"),
        ("a form feed", "a\u{c}b"),
        ("a backspace", "a\u{8}b"),
        ("a unit separator", "a\u{1f}b"),
    ] {
        cases.push((
            format!("{name} in the {field}"),
            body(json!(text)),
            400,
            Some(field),
        ));
    }
    cases
}

/// The cases, as they are written down.
#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    /// A case answered with the documented error shape, naming `field`.
    fn error(
        &mut self,
        port: ServiceKind,
        what: String,
        request: Vec<u8>,
        status: u16,
        field: Option<&'static str>,
    ) {
        self.push(port, what, request, status, Expect::Error(field));
    }

    fn push(
        &mut self,
        port: ServiceKind,
        what: String,
        request: Vec<u8>,
        status: u16,
        expect: Expect,
    ) {
        self.0.push(Case {
            what,
            port,
            request,
            half_close: false,
            status,
            expect,
        });
    }

    /// A request the HTTP layer refuses with a 400 before a request exists.
    fn unparsed(&mut self, port: ServiceKind, what: String, request: Vec<u8>) {
        self.refused_by_http(port, what, request, 400);
    }

    /// A request the HTTP layer refuses with `status` before a request
    /// exists (its answer may have no body).
    fn refused_by_http(&mut self, port: ServiceKind, what: String, request: Vec<u8>, status: u16) {
        self.push(port, what, request, status, Expect::Unparsed);
    }
}

/// Every case of the table.
fn table() -> Vec<Case> {
    let mut t = Table::default();

    // Creating a post and commenting, on the service and through the
    // gateway: the body's one text field, then bodies that cannot be read.
    let create = "/posts/create";
    let comments = "/posts/some-post/comments";
    for (service, path, text_field, longest, valid) in [
        (
            ServiceKind::Posts,
            create,
            "title",
            200,
            r#"{"title":"a post"}"#,
        ),
        (
            ServiceKind::Comments,
            comments,
            "content",
            1000,
            r#"{"content":"a comment"}"#,
        ),
    ] {
        for (port, via) in [(service, service.name()), (ServiceKind::Gateway, "gateway")] {
            for (what, body, status, field) in field_cases(text_field, longest) {
                t.error(
                    port,
                    format!("{via}: POST {path}: {what}"),
                    request("POST", path, JSON, &body),
                    status,
                    field,
                );
            }
            for (what, content_type, body, status) in unreadable_bodies(valid) {
                t.error(
                    port,
                    format!("{via}: POST {path}: {what}"),
                    request("POST", path, content_type, &body),
                    status,
                    None,
                );
            }
        }
    }
    for (port, via) in [
        (ServiceKind::Comments, "comments"),
        (ServiceKind::Gateway, "gateway"),
    ] {
        // Post ids in the path: not UTF-8, over-long, with control characters.
        let valid = br#"{"content":"a comment"}"#;
        let long = "x".repeat(129);
        let long_wide = "%C3%A9".repeat(65);
        for (what, path, field) in [
            (
                "a percent-encoded invalid UTF-8 id",
                "/posts/%FF%FE/comments".to_owned(),
                Some("id"),
            ),
            (
                "a truncated UTF-8 sequence as id",
                "/posts/%C3%28/comments".to_owned(),
                Some("id"),
            ),
            (
                "an overlong UTF-8 encoding as id",
                "/posts/%C0%AF/comments".to_owned(),
                Some("id"),
            ),
            (
                "a 129-byte id",
                format!("/posts/{long}/comments"),
                Some("id"),
            ),
            (
                "a 65-character (130-byte) id",
                format!("/posts/{long_wide}/comments"),
                Some("id"),
            ),
            (
                "NUL in the id",
                "/posts/a%00b/comments".to_owned(),
                Some("id"),
            ),
            (
                "a line break in the id",
                "/posts/a%0Ab/comments".to_owned(),
                Some("id"),
            ),
            (
                "ESC in the id",
                "/posts/%1B/comments".to_owned(),
                Some("id"),
            ),
        ] {
            t.error(
                port,
                format!("{via}: GET with {what}"),
                request("GET", &path, None, b""),
                400,
                field,
            );
            t.error(
                port,
                format!("{via}: POST with {what}"),
                request("POST", &path, JSON, valid),
                400,
                field,
            );
        }
        // What no ordinary client sends: raw bytes that are not UTF-8 in
        // the path, refused by the HTTP layer before a request exists.
        t.unparsed(
            port,
            format!("{via}: GET with raw invalid UTF-8 bytes in the path"),
            request("GET", b"/posts/\xff\xfe/comments", None, b""),
        );
        t.unparsed(
            port,
            format!("{via}: POST with raw invalid UTF-8 bytes in the path"),
            request("POST", b"/posts/\xc3\x28/comments", JSON, valid),
        );
        t.error(
            port,
            format!("{via}: GET with an empty id"),
            request("GET", "/posts//comments", None, b""),
            400,
            Some("id"),
        );
        t.error(
            port,
            format!("{via}: POST with an empty id"),
            request("POST", "/posts//comments", JSON, valid),
            400,
            Some("id"),
        );
    }

    // Raw bytes that are not UTF-8 in the request target of every other
    // part: a request line no URL can be made of is a 400 from the HTTP
    // layer, which may have no body (no request exists to answer in JSON).
    for (port, method, target, body) in [
        (ServiceKind::Posts, "GET", &b"/posts/\xff"[..], &b""[..]),
        (ServiceKind::Query, "GET", b"/posts/\xff\xfe", b""),
        (
            ServiceKind::Moderation,
            "POST",
            b"/events/\xff",
            br#"{"type":"PostLiked","data":{}}"#,
        ),
        (ServiceKind::EventBus, "GET", b"/events?after=\xff", b""),
    ] {
        let content_type = (!body.is_empty()).then_some("application/json");
        t.unparsed(
            port,
            format!(
                "{}: {method} with raw invalid UTF-8 bytes in the target",
                port.name()
            ),
            request(method, target, content_type, body),
        );
    }

    // What the HTTP layer refuses before a request exists, on every port:
    // a 4xx, never an answer from the application, never a hang.
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(1024 * 1024));
    for port in support::all() {
        let name = port.name();
        for (what, request, status) in [
            ("a garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), 400),
            (
                "a 1 MiB header",
                format!("GET /posts HTTP/1.1\r\nHost: t\r\n{big_header}\r\n").into_bytes(),
                431,
            ),
            (
                "300 headers",
                format!("GET /posts HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n").into_bytes(),
                431,
            ),
            (
                "two different Content-Length values",
                b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                    .to_vec(),
                400,
            ),
            (
                "an unknown Transfer-Encoding",
                b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n{}".to_vec(),
                400,
            ),
        ] {
            t.refused_by_http(port, format!("{name}: {what}"), request, status);
        }
    }

    // Unknown paths.
    for (port, path) in [
        (ServiceKind::Posts, "/nope"),
        (ServiceKind::Posts, "/posts/create/x"),
        (ServiceKind::Posts, "/posts/p/comments"),
        (ServiceKind::Posts, "/events/x"),
        (ServiceKind::Comments, "/"),
        (ServiceKind::Comments, "/posts"),
        (ServiceKind::Comments, "/posts/p/comments/x"),
        (ServiceKind::Query, "/posts/p"),
        (ServiceKind::Query, "/posts/live/x"),
        (ServiceKind::Query, "/posts/create"),
        (ServiceKind::Query, "/subscribers"),
        (ServiceKind::Moderation, "/"),
        (ServiceKind::Moderation, "/posts"),
        (ServiceKind::Moderation, "/moderate"),
        (ServiceKind::EventBus, "/nope"),
        (ServiceKind::EventBus, "/events/batch/x"),
        (ServiceKind::EventBus, "/dead-letters/replay/x"),
        (ServiceKind::EventBus, "/posts"),
        (ServiceKind::Gateway, "/posts/nope"),
        (ServiceKind::Gateway, "/postsxyz"),
        (ServiceKind::Gateway, "/posts/create/x"),
        (ServiceKind::Gateway, "/posts/p/comments/x"),
        (ServiceKind::Gateway, "/posts/live/x"),
    ] {
        t.error(
            port,
            format!("{}: GET {path}: unknown", port.name()),
            request("GET", path, None, b""),
            404,
            None,
        );
    }
    t.error(
        ServiceKind::Posts,
        "posts: POST /posts/create/: unknown".into(),
        request("POST", "/posts/create/", JSON, br#"{"title":"x"}"#),
        404,
        None,
    );

    // Wrong methods on each route.
    for (port, method, path) in [
        (ServiceKind::Posts, "GET", "/posts/create"),
        (ServiceKind::Posts, "PUT", "/posts/create"),
        (ServiceKind::Posts, "DELETE", "/posts/create"),
        (ServiceKind::Posts, "BREW", "/posts/create"),
        (ServiceKind::Posts, "POST", "/posts"),
        (ServiceKind::Posts, "PATCH", "/posts"),
        (ServiceKind::Posts, "GET", "/events"),
        (ServiceKind::Posts, "PUT", "/events"),
        (ServiceKind::Posts, "GET", "/events/batch"),
        (ServiceKind::Posts, "POST", "/dead-letters"),
        (ServiceKind::Posts, "POST", "/healthz"),
        (ServiceKind::Posts, "DELETE", "/readyz"),
        (ServiceKind::Comments, "PUT", "/posts/p/comments"),
        (ServiceKind::Comments, "DELETE", "/posts/p/comments"),
        (ServiceKind::Comments, "PATCH", "/posts/p/comments"),
        (ServiceKind::Comments, "GET", "/events"),
        (ServiceKind::Comments, "GET", "/events/batch"),
        (ServiceKind::Comments, "DELETE", "/dead-letters"),
        (ServiceKind::Comments, "POST", "/healthz"),
        (ServiceKind::Query, "POST", "/posts"),
        (ServiceKind::Query, "PUT", "/posts"),
        (ServiceKind::Query, "DELETE", "/posts"),
        (ServiceKind::Query, "POST", "/posts/live"),
        (ServiceKind::Query, "GET", "/events"),
        (ServiceKind::Query, "GET", "/events/batch"),
        (ServiceKind::Query, "POST", "/dead-letters"),
        (ServiceKind::Query, "POST", "/readyz"),
        (ServiceKind::Moderation, "GET", "/events"),
        (ServiceKind::Moderation, "DELETE", "/events"),
        (ServiceKind::Moderation, "GET", "/events/batch"),
        (ServiceKind::Moderation, "POST", "/dead-letters"),
        (ServiceKind::Moderation, "POST", "/healthz"),
        (ServiceKind::EventBus, "PUT", "/events"),
        (ServiceKind::EventBus, "DELETE", "/events"),
        (ServiceKind::EventBus, "OPTIONS", "/events"),
        (ServiceKind::EventBus, "GET", "/events/batch"),
        (ServiceKind::EventBus, "POST", "/subscribers"),
        (ServiceKind::EventBus, "POST", "/dead-letters"),
        (ServiceKind::EventBus, "DELETE", "/dead-letters"),
        (ServiceKind::EventBus, "GET", "/dead-letters/replay"),
        (ServiceKind::EventBus, "POST", "/readyz"),
        // The gateway: the client's files take GET and HEAD only ...
        (ServiceKind::Gateway, "POST", "/"),
        (ServiceKind::Gateway, "PUT", "/index.html"),
        (ServiceKind::Gateway, "DELETE", "/index.html"),
        (ServiceKind::Gateway, "PATCH", "/"),
        (ServiceKind::Gateway, "POST", "/assets/index-abc123.js"),
        (ServiceKind::Gateway, "PUT", "/favicon.ico"),
        (ServiceKind::Gateway, "DELETE", "/some/client/route"),
        (ServiceKind::Gateway, "POST", "/healthz"),
        // ... and the services' routes keep theirs.
        (ServiceKind::Gateway, "GET", "/posts/create"),
        (ServiceKind::Gateway, "PUT", "/posts"),
        (ServiceKind::Gateway, "POST", "/posts"),
        (ServiceKind::Gateway, "DELETE", "/posts/p/comments"),
        (ServiceKind::Gateway, "POST", "/posts/live"),
    ] {
        t.error(
            port,
            format!("{}: {method} {path}: wrong method", port.name()),
            request(method, path, None, b""),
            405,
            None,
        );
    }
    for path in ["/", "/index.html"] {
        t.error(
            ServiceKind::Gateway,
            format!("gateway: PUT {path} with a page"),
            request("PUT", path, Some("text/html"), b"<h1>defaced</h1>"),
            405,
            None,
        );
    }
    t.error(
        ServiceKind::Gateway,
        "gateway: POST / with JSON".into(),
        request("POST", "/", JSON, br#"{"title":"x"}"#),
        405,
        None,
    );

    // Events: malformed ones on each part's POST /events, and batches.
    let unknown = json!({"type": "PostLiked", "data": {"id": "p"}});
    let valid_event = json!({"type": "PostLiked", "data": {}}).to_string();
    for port in EVENT_PARTS {
        let name = port.name();
        for (what, event, field) in malformed_events() {
            t.error(
                port,
                format!("{name}: POST /events: {what}"),
                request("POST", "/events", JSON, event.to_string().as_bytes()),
                400,
                field,
            );
        }
        for (what, content_type, body, status) in unreadable_bodies(&valid_event) {
            t.error(
                port,
                format!("{name}: POST /events: {what}"),
                request("POST", "/events", content_type, &body),
                status,
                None,
            );
        }
        let huge = json!({"type": "PostLiked", "data": {"x": "x".repeat(70 * 1024)}}).to_string();
        t.error(
            port,
            format!("{name}: POST /events: over the body limit"),
            request("POST", "/events", JSON, huge.as_bytes()),
            413,
            None,
        );

        // Batches that are not arrays.
        for (what, body) in [
            ("an object", "{}".to_owned()),
            ("one event, not in an array", unknown.to_string()),
            ("a number", "42".to_owned()),
            ("a string", "\"[]\"".to_owned()),
            ("null", "null".to_owned()),
        ] {
            t.error(
                port,
                format!("{name}: POST /events/batch: {what}"),
                request("POST", "/events/batch", JSON, body.as_bytes()),
                400,
                None,
            );
        }
        for (what, content_type, body, status) in unreadable_bodies(&format!("[{valid_event}]")) {
            t.error(
                port,
                format!("{name}: POST /events/batch: {what}"),
                request("POST", "/events/batch", content_type, &body),
                status,
                None,
            );
        }
        let over_batch = format!(
            "[{}]",
            json!({"type": "PostLiked", "data": {"x": "x".repeat(4 * 1024 * 1024)}})
        );
        t.error(
            port,
            format!("{name}: POST /events/batch: over the 4 MiB batch limit"),
            request("POST", "/events/batch", JSON, over_batch.as_bytes()),
            413,
            None,
        );
    }

    // Arrays with bad events: the bus refuses the whole batch (and stores
    // none, not even the good event before it); a consumer refuses each bad
    // event in its result.
    let batches: Vec<(&str, Value, Option<&'static str>, Vec<u16>)> = vec![
        (
            "a good event then one with NUL in its title",
            json!([unknown, {"type": "PostCreated", "data": {"id": "p", "title": "a\u{0}b"}}]),
            Some("data.title"),
            vec![200, 400],
        ),
        (
            "a good event then a string",
            json!([unknown, "not an event"]),
            None,
            vec![200, 400],
        ),
        (
            "an event without a type then a good one",
            json!([{"data": {}}, unknown]),
            Some("type"),
            vec![400, 200],
        ),
        (
            "only bad events",
            json!([42, {"type": "CommentCreated", "data": {"id": "c", "postId": "", "content": "x", "status": "pending"}}]),
            None,
            vec![400, 400],
        ),
        (
            "an event with an unknown status",
            json!([{"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "maybe"}}]),
            Some("data"),
            vec![400],
        ),
    ];
    for port in EVENT_PARTS {
        for (what, batch, field, results) in &batches {
            let request = request("POST", "/events/batch", JSON, batch.to_string().as_bytes());
            let (status, expect) = if port == ServiceKind::EventBus {
                (400, Expect::Error(*field))
            } else {
                (200, Expect::Results(results.clone()))
            };
            t.0.push(Case {
                what: format!("{}: POST /events/batch: {what}", port.name()),
                port,
                request,
                half_close: false,
                status,
                expect,
            });
        }
    }

    // The bus's GET /events: repeated and invalid query parameters.
    for (query, field) in [
        ("after=1&after=2", Some("after")),
        ("limit=1&limit=2", Some("limit")),
        ("after=x", Some("after")),
        ("after=", Some("after")),
        ("after=-1", Some("after")),
        ("after=1.5", Some("after")),
        ("after=0x10", Some("after")),
        ("after=99999999999999999999", Some("after")),
        ("after=%FF", Some("after")),
        ("limit=x", Some("limit")),
        ("limit=-1", Some("limit")),
        ("after=1&limit=ten", Some("limit")),
    ] {
        t.error(
            ServiceKind::EventBus,
            format!("event-bus: GET /events?{query}"),
            request("GET", format!("/events?{query}"), None, b""),
            400,
            field,
        );
    }

    // The bus's POST /dead-letters/replay: bodies of the wrong shape.
    for (what, content_type, body, status) in [
        ("an array", JSON, "[]".to_owned(), 400),
        ("a number", JSON, "42".to_owned(), 400),
        ("a string", JSON, "\"all\"".to_owned(), 400),
        ("null", JSON, "null".to_owned(), 400),
        ("true", JSON, "true".to_owned(), 400),
        ("an unknown field", JSON, r#"{"all":true}"#.to_owned(), 400),
        ("ids a string", JSON, r#"{"ids":"1"}"#.to_owned(), 400),
        (
            "ids an object",
            JSON,
            r#"{"ids":{"1":true}}"#.to_owned(),
            400,
        ),
        ("ids of strings", JSON, r#"{"ids":["a"]}"#.to_owned(), 400),
        ("ids of fractions", JSON, r#"{"ids":[1.5]}"#.to_owned(), 400),
        (
            "ids too large",
            JSON,
            r#"{"ids":[99999999999999999999]}"#.to_owned(),
            400,
        ),
        (
            "subscriber a number",
            JSON,
            r#"{"subscriber":5}"#.to_owned(),
            400,
        ),
        (
            "subscriber an array",
            JSON,
            r#"{"subscriber":["http://x/events"]}"#.to_owned(),
            400,
        ),
        ("malformed JSON", JSON, "{oops".to_owned(), 400),
        ("truncated JSON", JSON, r#"{"ids":[1,"#.to_owned(), 400),
        ("a trailing comma", JSON, r#"{"ids":[1],}"#.to_owned(), 400),
        (
            "over the body limit",
            JSON,
            format!("{{\"subscriber\":\"{}\"}}", "x".repeat(70 * 1024)),
            413,
        ),
        ("text/plain", Some("text/plain"), "{}".to_owned(), 415),
        (
            "a form",
            Some("application/x-www-form-urlencoded"),
            "ids=1".to_owned(),
            415,
        ),
    ] {
        t.error(
            ServiceKind::EventBus,
            format!("event-bus: POST /dead-letters/replay: {what}"),
            request(
                "POST",
                "/dead-letters/replay",
                content_type,
                body.as_bytes(),
            ),
            status,
            None,
        );
    }
    t.error(
        ServiceKind::EventBus,
        "event-bus: POST /dead-letters/replay: invalid UTF-8".into(),
        request(
            "POST",
            "/dead-letters/replay",
            JSON,
            b"{\"subscriber\":\"\xff\"}",
        ),
        400,
        None,
    );

    // Bodies the client breaks off: it promises more than it sends, then
    // shuts its write side. Through the gateway too (400, not 502).
    for (port, path, body) in [
        (ServiceKind::Gateway, "/posts/create", r#"{"title":"#),
        (
            ServiceKind::Gateway,
            "/posts/some-post/comments",
            r#"{"content":"#,
        ),
        (ServiceKind::Posts, "/posts/create", r#"{"title":"#),
        (
            ServiceKind::Comments,
            "/posts/some-post/comments",
            r#"{"content":"#,
        ),
        (ServiceKind::Posts, "/events", r#"{"type":"#),
        (ServiceKind::Comments, "/events", r#"{"type":"#),
        (ServiceKind::Query, "/events", r#"{"type":"#),
        (ServiceKind::Moderation, "/events", r#"{"type":"#),
        (ServiceKind::EventBus, "/events", r#"{"type":"#),
        (ServiceKind::EventBus, "/events/batch", r#"[{"type":"#),
        (ServiceKind::Query, "/events/batch", r#"[{"type":"#),
        (ServiceKind::EventBus, "/dead-letters/replay", r#"{"ids":"#),
    ] {
        t.0.push(Case {
            what: format!("{}: POST {path}: a body broken off", port.name()),
            port,
            request: broken_off(path, body.as_bytes(), 1000),
            half_close: true,
            status: 400,
            expect: Expect::Error(None),
        });
    }
    t.0
}

/// What must still be true after every case: nothing stored, nothing emitted.
async fn nothing_changed(system: &TestSystem) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: Value, want: Value| {
        if got != want {
            problems.push(format!("{what}: {got} instead of {want}"));
        }
    };
    expect(
        "query (through the gateway)",
        system.query().await,
        json!({}),
    );
    for kind in [ServiceKind::Query, ServiceKind::Posts] {
        let url = format!("{}/posts", system.url(kind));
        expect(
            &format!("{} GET /posts", kind.name()),
            system.get(&url).await.body,
            json!({}),
        );
    }
    for post in ["some-post", "p", "a"] {
        let url = format!(
            "{}/posts/{post}/comments",
            system.url(ServiceKind::Comments)
        );
        expect(
            &format!("comments of {post}"),
            system.get(&url).await.body,
            json!([]),
        );
    }
    for kind in EVENT_PARTS {
        let url = format!("{}/dead-letters", system.url(kind));
        expect(
            &format!("{} dead letters", kind.name()),
            system.get(&url).await.body,
            json!([]),
        );
    }
    expect(
        "the bus's log",
        Value::Array(system.bus_events().await),
        json!([]),
    );
    let subscribers = system
        .get(&format!(
            "{}/subscribers",
            system.url(ServiceKind::EventBus)
        ))
        .await
        .body;
    expect(
        "the bus's last seq",
        subscribers["lastSeq"].clone(),
        json!(0),
    );
    problems
}

engine_tests!(a_table_of_bad_input_on_every_port_gets_the_documented_errors_and_changes_nothing: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
async fn a_table_of_bad_input_on_every_port_gets_the_documented_errors_and_changes_nothing(
    engines: support::Engines,
) {
    let mut failures = Vec::new();
    let system = TestSystem::spawn(engines).await;
    let cases = table();
    let mut per_port: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        *per_port.entry(case.port.name()).or_default() += 1;
    }
    eprintln!(
        "bad input on {engines}: {} cases ({})",
        cases.len(),
        per_port
            .iter()
            .map(|(port, n)| format!("{port} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    for kind in support::all() {
        assert!(
            per_port.contains_key(kind.name()),
            "no case on {}",
            kind.name()
        );
    }
    let mut failed = 0;
    for case in &cases {
        let outcome = match exchange(system.addrs[&case.port], &case.request, case.half_close).await
        {
            Ok(reply) => check(case, &reply)
                .map_err(|why| format!("{why}\n    answer:  {}", reply.describe())),
            Err(why) => Err(why),
        };
        if let Err(why) = outcome {
            failed += 1;
            failures.push(format!(
                "[{engines}] {}: {why}\n    request: \"{}\"",
                case.what,
                shorten(&case.request)
            ));
        }
    }
    for problem in nothing_changed(&system).await {
        failures.push(format!("[{engines}] afterwards, {problem}"));
    }
    eprintln!(
        "bad input on {engines}: {} passed, {failed} failed",
        cases.len() - failed
    );
    system.shutdown().await;
    support::assert_none(&failures, "failures");
}

engine_tests!(random_bodies_on_every_route_that_reads_one_get_2xx_or_4xx_json: sqlite_http, postgres_http, sqlite_nats, postgres_nats);
/// Request bodies fuzzed: random JSON (shaped like what each route takes,
/// or not) and random bytes, on every route that reads a body, get a 2xx or
/// a 4xx in the documented shape; never a 5xx, a hang or a crash.
async fn random_bodies_on_every_route_that_reads_one_get_2xx_or_4xx_json(
    engines: support::Engines,
) {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    const CASES: usize = 48;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
        ".{0,8}".prop_map(Value::String),
    ];
    let json_value = leaf.prop_recursive(3, 16, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("data".to_owned()),
                    Just("id".to_owned()),
                    Just("title".to_owned()),
                    Just("content".to_owned()),
                    Just("postId".to_owned()),
                    Just("status".to_owned()),
                    Just("ids".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let bytes = prop::collection::vec(any::<u8>(), 0..64);
    let mut runner = TestRunner::deterministic();
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..CASES {
        let value = json_value.new_tree(&mut runner).expect("a value").current();
        bodies.push((format!("JSON {value}"), value.to_string().into_bytes()));
        // As an event's data, so the decoder's deeper checks run too.
        for event_type in ["PostCreated", "CommentCreated", "CommentUpdated"] {
            let event = json!({"type": event_type, "data": value});
            bodies.push((format!("event {event}"), event.to_string().into_bytes()));
        }
    }
    for _ in 0..CASES / 2 {
        let raw = bytes.new_tree(&mut runner).expect("bytes").current();
        bodies.push((format!("bytes {raw:?}"), raw));
    }

    let system = TestSystem::spawn(engines).await;
    let routes = [
        (ServiceKind::Posts, "/posts/create"),
        (ServiceKind::Comments, "/posts/fuzzed/comments"),
        (ServiceKind::Posts, "/events"),
        (ServiceKind::Comments, "/events/batch"),
        (ServiceKind::Query, "/events"),
        (ServiceKind::Query, "/events/batch"),
        (ServiceKind::Moderation, "/events"),
        (ServiceKind::EventBus, "/events"),
        (ServiceKind::EventBus, "/events/batch"),
        (ServiceKind::EventBus, "/dead-letters/replay"),
    ];
    let mut answered = 0;
    for (kind, path) in routes {
        let url = format!("{}{path}", system.url(kind));
        for (what, body) in &bodies {
            let (status, answer) = system
                .http
                .request(
                    Method::POST,
                    &url,
                    Some("application/json"),
                    bytes::Bytes::from(body.clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{engines} {url} {what}: no answer: {e}"));
            assert!(
                status.is_success() || status.is_client_error(),
                "{engines} {url} {what}: {status} {}",
                String::from_utf8_lossy(&answer)
            );
            if status.is_client_error() {
                let body: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                assert!(
                    body["errors"][0]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{engines} {url} {what}: {status} not in the documented shape: {body}"
                );
            }
            answered += 1;
        }
    }
    eprintln!("fuzzed bodies on {engines}: {answered} requests, each 2xx or 4xx JSON");
    system.shutdown().await;
}

// ---------------------------------------------------------------------------
// The OpenAPI descriptions (`GET /openapi.json` on every part): every route
// a part serves is described and every route described is served, and real
// answers match the schemas the descriptions give them.
// ---------------------------------------------------------------------------

/// The parts of `blog up`.
const PARTS: [ServiceKind; 6] = [
    ServiceKind::EventBus,
    ServiceKind::Posts,
    ServiceKind::Comments,
    ServiceKind::Query,
    ServiceKind::Moderation,
    ServiceKind::Gateway,
];

/// The routes each part serves, as docs/interfaces.md and the README list
/// them: what its description must hold, exactly.
fn documented_routes(kind: ServiceKind) -> Vec<(&'static str, &'static str)> {
    const PROBES: [(&str, &str); 4] = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ];
    const EVENTS: [(&str, &str); 4] = [
        ("POST", "/events"),
        ("POST", "/events/batch"),
        ("GET", "/dead-letters"),
        ("POST", "/dead-letters/replay"),
    ];
    let own: Vec<(&str, &str)> = match kind {
        ServiceKind::Posts => vec![("POST", "/posts/create"), ("GET", "/posts")],
        ServiceKind::Comments => vec![
            ("GET", "/posts/{id}/comments"),
            ("POST", "/posts/{id}/comments"),
        ],
        ServiceKind::Query => vec![
            ("GET", "/posts"),
            ("GET", "/posts/live"),
            ("GET", "/rebuild"),
            ("POST", "/rebuild"),
        ],
        ServiceKind::Moderation => vec![],
        ServiceKind::EventBus => {
            return [
                ("GET", "/events"),
                ("POST", "/events"),
                ("POST", "/events/batch"),
                ("GET", "/subscribers"),
                ("GET", "/dead-letters"),
                ("POST", "/dead-letters/replay"),
            ]
            .into_iter()
            .chain(PROBES)
            .collect();
        }
        // The public routes as the Ingress routes them, the gateway's own,
        // and the client server's probes behind the catch-all.
        ServiceKind::Gateway => {
            return vec![
                ("POST", "/posts/create"),
                ("GET", "/posts/{id}/comments"),
                ("POST", "/posts/{id}/comments"),
                ("GET", "/posts"),
                ("GET", "/posts/live"),
                ("GET", "/openapi.json"),
                ("GET", "/api"),
                ("GET", "/metrics"),
                ("GET", "/healthz"),
                ("GET", "/readyz"),
            ];
        }
        other => panic!("{} is not a part of `blog up`", other.name()),
    };
    own.into_iter().chain(EVENTS).chain(PROBES).collect()
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `(METHOD, path)` a description holds.
fn described(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                out.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// A described path as a request has it: each parameter filled in.
fn filled(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("a closed parameter") + open;
        out.push_str("some-post");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The media type of a `Content-Type`, without its parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Sends a request and reads only the answer's head (for a stream that
/// never ends): its status and headers.
async fn head_of(addr: SocketAddr, request: &[u8]) -> Result<Reply, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while find(&raw, b"\r\n\r\n").is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let end = find(&raw, b"\r\n\r\n").ok_or("no answer head")?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| "a head that is not text")?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or("no status line")?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok::<_, String>(Reply {
            status,
            headers,
            body: Vec::new(),
        })
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer head within 20 s".to_owned())?
}

/// Asks `kind` for `path` with `method` (a POST with `{}`), for real; for a
/// path described as an event stream, reads only the head.
async fn ask(system: &TestSystem, kind: ServiceKind, method: &str, path: &str) -> Reply {
    let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
    let content_type = (method == "POST").then_some("application/json");
    let raw = request(method, path, content_type, body);
    let addr = system.addrs[&kind];
    let reply = if path.ends_with("/live") && method == "GET" {
        head_of(addr, &raw).await
    } else {
        exchange(addr, &raw, false).await
    };
    reply.unwrap_or_else(|e| panic!("{} {method} {path}: {e}", kind.name()))
}

/// `doc`'s answer for `status` of an operation: the one listed, or the
/// `default` one for an error.
fn declared_answer(operation: &Value, status: u16) -> Option<&Value> {
    let responses = &operation["responses"];
    responses
        .get(status.to_string())
        .or_else(|| (status >= 400).then(|| responses.get("default")).flatten())
}

/// Resolves a local `$ref` of `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Result<&'a Value, String> {
    reference
        .strip_prefix('#')
        .and_then(|pointer| doc.pointer(pointer))
        .ok_or_else(|| format!("a $ref that names nothing: {reference}"))
}

/// Checks `value` against `schema` (of `doc`), for the part of JSON Schema
/// the descriptions use; a keyword outside it is a problem too, so a
/// description cannot pass by using what this does not check.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    /// Keywords that say something about a value without constraining it
    /// (and `pattern`, used only for events' `correlationId`, unchecked).
    const ANNOTATIONS: [&str; 6] = [
        "description",
        "example",
        "examples",
        "format",
        "title",
        "pattern",
    ];
    let Some(map) = schema.as_object() else {
        problems.push(format!("{at}: a schema that is not an object: {schema}"));
        return;
    };
    let passes = |sub: &Value| {
        let mut inner = Vec::new();
        validate(doc, sub, value, at, &mut inner);
        inner.is_empty()
    };
    for (keyword, arg) in map {
        match keyword.as_str() {
            "$ref" => match resolve(doc, arg.as_str().unwrap_or_default()) {
                Ok(target) => validate(doc, target, value, at, problems),
                Err(e) => problems.push(format!("{at}: {e}")),
            },
            "allOf" => {
                for sub in arg.as_array().into_iter().flatten() {
                    validate(doc, sub, value, at, problems);
                }
            }
            "oneOf" => {
                let n = arg
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| passes(s))
                    .count();
                if n != 1 {
                    problems.push(format!("{at}: {value} matches {n} of oneOf, not 1"));
                }
            }
            "anyOf" => {
                if !arg.as_array().into_iter().flatten().any(passes) {
                    problems.push(format!("{at}: {value} matches none of anyOf"));
                }
            }
            "enum" => {
                if !arg.as_array().is_some_and(|values| values.contains(value)) {
                    problems.push(format!("{at}: {value} is not one of {arg}"));
                }
            }
            "const" => {
                if arg != value {
                    problems.push(format!("{at}: {value} is not {arg}"));
                }
            }
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::String(t) => vec![t.as_str()],
                    other => other
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect(),
                };
                let fits = |t: &str| match t {
                    "null" => value.is_null(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "string" => value.is_string(),
                    "array" => value.is_array(),
                    "object" => value.is_object(),
                    _ => false,
                };
                if !types.iter().any(|t| fits(t)) {
                    problems.push(format!("{at}: {value} is not of type {arg}"));
                }
            }
            "minLength" | "maxLength" => {
                if let (Some(s), Some(n)) = (value.as_str(), arg.as_u64()) {
                    let len = s.chars().count() as u64;
                    if (keyword == "minLength" && len < n) || (keyword == "maxLength" && len > n) {
                        problems.push(format!("{at}: {len} characters, {keyword} {n}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let (Some(x), Some(n)) = (value.as_f64(), arg.as_f64())
                    && ((keyword == "minimum" && x < n) || (keyword == "maximum" && x > n))
                {
                    problems.push(format!("{at}: {x}, {keyword} {n}"));
                }
            }
            "minItems" | "maxItems" => {
                if let (Some(items), Some(n)) = (value.as_array(), arg.as_u64()) {
                    let len = items.len() as u64;
                    if (keyword == "minItems" && len < n) || (keyword == "maxItems" && len > n) {
                        problems.push(format!("{at}: {len} items, {keyword} {n}"));
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    validate(doc, arg, item, &format!("{at}[{i}]"), problems);
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in arg
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        if !object.contains_key(name) {
                            problems.push(format!("{at}: no {name}"));
                        }
                    }
                }
            }
            "properties" => {
                if let (Some(object), Some(properties)) = (value.as_object(), arg.as_object()) {
                    for (name, property) in properties {
                        if let Some(field) = object.get(name) {
                            validate(doc, property, field, &format!("{at}.{name}"), problems);
                        }
                    }
                }
            }
            "propertyNames" => {
                for name in value.as_object().into_iter().flatten().map(|(k, _)| k) {
                    validate(
                        doc,
                        arg,
                        &Value::String(name.clone()),
                        &format!("{at} key"),
                        problems,
                    );
                }
            }
            "additionalProperties" => {
                let known = map.get("properties").and_then(Value::as_object);
                for (name, field) in value.as_object().into_iter().flatten() {
                    if known.is_some_and(|k| k.contains_key(name)) {
                        continue;
                    }
                    match arg {
                        Value::Bool(false) => {
                            problems.push(format!("{at}: {name} is not allowed"));
                        }
                        Value::Bool(true) => {}
                        sub => validate(doc, sub, field, &format!("{at}.{name}"), problems),
                    }
                }
            }
            other if ANNOTATIONS.contains(&other) => {}
            other => problems.push(format!(
                "{at}: the schema uses {other}, which this check does not know"
            )),
        }
    }
}

/// Whether `reply` (to `method` `path` on a part) is what `doc` says that
/// route answers: its status listed (or an error under `default`), its
/// content type one the answer lists, and a JSON body valid against the
/// schema given.
fn conforms(doc: &Value, method: &str, path: &str, reply: &Reply) -> Result<(), String> {
    let operation = doc["paths"][path]
        .get(method.to_ascii_lowercase())
        .ok_or_else(|| format!("{method} {path} is not described"))?;
    let answer = declared_answer(operation, reply.status).ok_or_else(|| {
        format!(
            "{method} {path}: {} is not a described answer",
            reply.status
        )
    })?;
    let content_type = essence(reply.header("content-type").unwrap_or_default());
    let media = answer["content"]
        .as_object()
        .and_then(|content| {
            content
                .iter()
                .find(|(media, _)| essence(media) == content_type)
                .map(|(_, m)| m)
        })
        .ok_or_else(|| {
            format!(
                "{method} {path}: {} answered {content_type:?}, described as {}",
                reply.status, answer["content"]
            )
        })?;
    if content_type != "application/json" {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("{method} {path}: {} not JSON: {e}", reply.status))?;
    let mut problems = Vec::new();
    validate(doc, &media["schema"], &body, "answer", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {path}: {} {body} does not match its schema: {}",
            reply.status,
            problems.join("; ")
        ))
    }
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// What any description must be: OpenAPI 3.1, each `$ref` naming something,
/// each operation with a unique id, a tag, a success answer and the error
/// shape as its `default`.
fn well_formed(name: &str, doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        problems.push(format!("{name}: not OpenAPI 3.1: {}", doc["openapi"]));
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for reference in all {
        if let Err(e) = resolve(doc, &reference) {
            problems.push(format!("{name}: {e}"));
        }
    }
    let error = doc.pointer("/components/schemas/ErrorBody");
    if error.is_none_or(|e| e["required"] != json!(["errors"])) {
        problems.push(format!("{name}: no error shape: {error:?}"));
    }
    let mut ids = Vec::new();
    for (method, path) in described(doc) {
        let operation = &doc["paths"][&path][method.to_ascii_lowercase()];
        let what = format!("{name} {method} {path}");
        match operation["operationId"].as_str() {
            Some(id) if !ids.contains(&id.to_owned()) => ids.push(id.to_owned()),
            other => problems.push(format!("{what}: operationId {other:?} missing or repeated")),
        }
        if operation["tags"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("{what}: no tag"));
        }
        let responses = operation["responses"].as_object().expect("responses");
        if !responses.keys().any(|status| status.starts_with('2')) {
            problems.push(format!("{what}: no success answer"));
        }
        if responses["default"]["content"]["application/json"]["schema"]["$ref"]
            != "#/components/schemas/ErrorBody"
        {
            problems.push(format!("{what}: the error shape is not its default answer"));
        }
    }
    problems
}

/// Each part's description, from its `GET /openapi.json`.
async fn descriptions(system: &TestSystem) -> Vec<(ServiceKind, Value)> {
    let mut out = Vec::new();
    for kind in PARTS {
        let reply = ask(system, kind, "GET", "/openapi.json").await;
        assert_eq!(reply.status, 200, "{}: {}", kind.name(), reply.describe());
        assert_eq!(
            essence(reply.header("content-type").unwrap_or_default()),
            "application/json"
        );
        let doc: Value = serde_json::from_slice(&reply.body).expect("a JSON description");
        out.push((kind, doc));
    }
    out
}

/// Every `METHOD /path` that docs/interfaces.md and the README name, the
/// path cut before any query or option and `:param` written `{param}`.
fn routes_named_in_the_docs() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out: Vec<(String, String)> = Vec::new();
    for file in ["docs/interfaces.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(file)).expect("the docs");
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || "`()\"',;|".contains(c))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            let method = pair[0];
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
                continue;
            }
            let path = pair[1]
                .split(['?', '[', '*'])
                .next()
                .unwrap_or_default()
                .trim_end_matches(['.', ':']);
            if !path.starts_with('/') || path.contains('<') {
                continue;
            }
            let path = path
                .split('/')
                .map(|segment| match segment.strip_prefix(':') {
                    Some(param) => format!("{{{param}}}"),
                    None => segment.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let route = (method.to_owned(), path);
            if !out.contains(&route) {
                out.push(route);
            }
        }
    }
    out
}

#[tokio::test]
async fn every_route_each_part_serves_is_described_and_every_route_described_is_served() {
    let engines = support::Engines::SQLITE_HTTP;
    let system = TestSystem::spawn(engines).await;
    let docs = descriptions(&system).await;
    let mut failures = Vec::new();
    let rules = blog_gateway::RuleSet::new(&blog::parts::ingress_rules());
    for (kind, doc) in &docs {
        let name = kind.name();
        failures.extend(well_formed(name, doc));
        // The description holds exactly the part's routes.
        let got = described(doc);
        let want: Vec<(String, String)> = documented_routes(*kind)
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        for route in &want {
            if !got.contains(route) {
                failures.push(format!("{name}: {} {} is not described", route.0, route.1));
            }
        }
        for route in &got {
            if !want.contains(route) {
                failures.push(format!(
                    "{name}: {} {} is described but not in the list of its routes",
                    route.0, route.1
                ));
            }
        }
        // Each route described answers for real: not the router's 404 or
        // 405, but an answer that route describes (a POST sends `{}`).
        for (method, path) in &got {
            let reply = ask(&system, *kind, method, &filled(path)).await;
            if [404, 405].contains(&reply.status) {
                failures.push(format!(
                    "{name}: {method} {path} is described but not served: {}",
                    reply.describe()
                ));
            } else if let Err(why) = conforms(doc, method, path, &reply) {
                failures.push(format!("{name}: {why}"));
            }
        }
        // And no route the docs name is served undescribed (the gateway's
        // catch-all serves any path: there, only the paths a rule sends to
        // a service).
        for (method, path) in routes_named_in_the_docs() {
            for method in [method.as_str(), "GET", "POST"] {
                let route = (method.to_owned(), path.clone());
                if got.contains(&route) {
                    continue;
                }
                if *kind == ServiceKind::Gateway
                    && rules
                        .route(&filled(&path))
                        .is_none_or(|rule| rule.service == "client-srv")
                {
                    continue;
                }
                let reply = ask(&system, *kind, method, &filled(&path)).await;
                if ![404, 405].contains(&reply.status) {
                    failures.push(format!(
                        "{name}: {method} {path} is served ({}) but not described",
                        reply.status
                    ));
                }
            }
        }
    }
    eprintln!(
        "descriptions: {} routes described and served; asked of every part, the routes the docs name: {}",
        docs.iter()
            .map(|(_, doc)| described(doc).len())
            .sum::<usize>(),
        routes_named_in_the_docs()
            .iter()
            .map(|(method, path)| format!("{method} {path}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The gateway's public routes are each service's, as the Ingress
    // routes them, and the description is complete.
    let gateway = &docs
        .iter()
        .find(|(kind, _)| *kind == ServiceKind::Gateway)
        .expect("the gateway")
        .1;
    let description = gateway["info"]["description"].as_str().unwrap_or_default();
    if description.contains("Not complete") {
        failures.push(format!("gateway: {description}"));
    }
    for (method, path) in described(gateway) {
        let operation = &gateway["paths"][&path][method.to_ascii_lowercase()];
        let Some(service) = operation["x-service"].as_str() else {
            continue;
        };
        let routed = rules.route(&filled(&path)).map(|rule| rule.service);
        if routed != Some(service) || operation["tags"] != json!(["public"]) {
            failures.push(format!(
                "gateway: {method} {path} from {service} (tags {}), routed to {routed:?}",
                operation["tags"]
            ));
        }
    }
    let from = |method: &str, path: &str| {
        gateway["paths"][path][method]["x-service"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(from("get", "/posts"), "query-srv");
    assert_eq!(from("post", "/posts/create"), "posts-clusterip-srv");
    assert_eq!(from("post", "/posts/{id}/comments"), "comments-srv");
    system.shutdown().await;
    support::assert_none(&failures, "problems with the descriptions");
}

/// Whether `reply` has `status` and matches what `doc` says of it.
fn answered(
    doc: &Value,
    kind: ServiceKind,
    method: &str,
    path: &str,
    status: u16,
    reply: &Reply,
) -> Result<(), String> {
    if reply.status != status {
        return Err(format!(
            "{} {method} {path}: {} instead of {status}",
            kind.name(),
            reply.describe()
        ));
    }
    conforms(doc, method, path, reply).map_err(|why| format!("{}: {why}", kind.name()))
}

#[tokio::test]
async fn answers_match_the_schemas_their_descriptions_give() {
    let engines = support::Engines::SQLITE_HTTP;
    let mut system = TestSystem::spawn(engines).await;
    let docs: std::collections::HashMap<ServiceKind, Value> =
        descriptions(&system).await.into_iter().collect();
    let mut failures = Vec::new();
    // (part, method, path as described, path as asked, body)
    let send = |kind: ServiceKind, method: &str, path: &str, body: &str| {
        let content_type = (method == "POST").then_some("application/json");
        let raw = request(method, path, content_type, body.as_bytes());
        let addr = system.addrs[&kind];
        async move { exchange(addr, &raw, false).await.expect("an answer") }
    };
    let mut check = |kind: ServiceKind, method: &str, path: &str, status: u16, reply: &Reply| {
        failures.extend(answered(&docs[&kind], kind, method, path, status, reply).err());
    };

    // A post and a comment, on the services and through the gateway.
    for kind in [ServiceKind::Posts, ServiceKind::Gateway] {
        let reply = send(kind, "POST", "/posts/create", r#"{"title":"Described"}"#).await;
        check(kind, "POST", "/posts/create", 201, &reply);
    }
    let post: Value = {
        let reply = send(
            ServiceKind::Posts,
            "POST",
            "/posts/create",
            r#"{"title":"x"}"#,
        )
        .await;
        serde_json::from_slice(&reply.body).expect("a post")
    };
    let post_id = post["id"].as_str().expect("an id").to_owned();
    let comments = format!("/posts/{post_id}/comments");
    for kind in [ServiceKind::Comments, ServiceKind::Gateway] {
        let reply = send(kind, "POST", &comments, r#"{"content":"orange"}"#).await;
        check(kind, "POST", "/posts/{id}/comments", 201, &reply);
        let reply = send(kind, "GET", &comments, "").await;
        check(kind, "GET", "/posts/{id}/comments", 200, &reply);
    }
    // Query once it shows the comments moderated.
    system
        .until("query shows the comments moderated", || async {
            let posts = system.query().await;
            posts[&post_id]["comments"]
                .as_array()
                .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["status"] == "rejected"))
        })
        .await;
    for kind in [ServiceKind::Query, ServiceKind::Gateway, ServiceKind::Posts] {
        let reply = send(kind, "GET", "/posts", "").await;
        check(kind, "GET", "/posts", 200, &reply);
    }
    // Errors: 400 (with a field and without), 415, 404 from the router.
    let reply = send(ServiceKind::Posts, "POST", "/posts/create", "{}").await;
    check(ServiceKind::Posts, "POST", "/posts/create", 400, &reply);
    let reply = send(ServiceKind::Gateway, "POST", "/posts/create", "{\"title\":").await;
    check(ServiceKind::Gateway, "POST", "/posts/create", 400, &reply);
    let reply = exchange(
        system.addrs[&ServiceKind::Comments],
        &request("POST", &comments, Some("text/plain"), b"{}"),
        false,
    )
    .await
    .expect("an answer");
    check(
        ServiceKind::Comments,
        "POST",
        "/posts/{id}/comments",
        415,
        &reply,
    );
    let mut not_found = Vec::new();
    for kind in PARTS {
        let path = if kind == ServiceKind::Gateway {
            "/posts/nope"
        } else {
            "/nope"
        };
        let reply = send(kind, "GET", path, "").await;
        let doc = &docs[&kind];
        let mut problems = Vec::new();
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        validate(
            doc,
            &json!({"$ref": "#/components/schemas/ErrorBody"}),
            &body,
            "answer",
            &mut problems,
        );
        if reply.status != 404 || !problems.is_empty() {
            not_found.push(format!(
                "{} GET {path}: {} {problems:?}",
                kind.name(),
                reply.describe()
            ));
        }
    }
    // Between the parts: the bus's routes, and a consumer's batch.
    let event = json!({"type": "PostCreated", "data": {"id": "described", "title": "t"}, "id": "0192-described"});
    let reply = send(ServiceKind::EventBus, "POST", "/events", &event.to_string()).await;
    check(ServiceKind::EventBus, "POST", "/events", 200, &reply);
    for path in ["/events", "/subscribers", "/dead-letters"] {
        let reply = send(ServiceKind::EventBus, "GET", path, "").await;
        check(ServiceKind::EventBus, "GET", path, 200, &reply);
    }
    let reply = send(ServiceKind::EventBus, "POST", "/dead-letters/replay", "{}").await;
    check(
        ServiceKind::EventBus,
        "POST",
        "/dead-letters/replay",
        200,
        &reply,
    );
    let batch = json!([event, {"type": "PostCreated"}]).to_string();
    let reply = send(ServiceKind::Query, "POST", "/events/batch", &batch).await;
    check(ServiceKind::Query, "POST", "/events/batch", 200, &reply);
    let reply = send(ServiceKind::Moderation, "POST", "/events", "{}").await;
    check(ServiceKind::Moderation, "POST", "/events", 400, &reply);
    let reply = send(ServiceKind::Comments, "GET", "/dead-letters", "").await;
    check(ServiceKind::Comments, "GET", "/dead-letters", 200, &reply);
    // Probes: ready, then not ready once the bus is gone.
    for kind in PARTS {
        for path in ["/healthz", "/readyz"] {
            let reply = send(kind, "GET", path, "").await;
            check(kind, "GET", path, 200, &reply);
        }
    }
    failures.extend(not_found);
    let failures_before = failures.len();
    system.stop(ServiceKind::EventBus).await;
    let readyz = format!("{}/readyz", system.url(ServiceKind::Posts));
    system
        .until("posts is not ready without the bus", || async {
            system.get(&readyz).await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
    let reply = exchange(
        system.addrs[&ServiceKind::Posts],
        &request("GET", "/readyz", None, b""),
        false,
    )
    .await
    .expect("an answer");
    if reply.status != 503 {
        failures.push(format!("posts GET /readyz: {}", reply.describe()));
    } else if let Err(why) = conforms(&docs[&ServiceKind::Posts], "GET", "/readyz", &reply) {
        failures.push(format!("posts: {why}"));
    }
    eprintln!(
        "answers checked against their schemas: {} problems before the bus stopped, {} after",
        failures_before,
        failures.len() - failures_before
    );
    system.shutdown().await;
    support::assert_none(&failures, "answers do not match their descriptions");
}

#[tokio::test]
async fn the_gateway_shows_its_description_as_a_page_without_script() {
    let engines = support::Engines::SQLITE_HTTP;
    let system = TestSystem::spawn(engines).await;
    let gateway = system.addrs[&ServiceKind::Gateway];
    let doc = exchange(gateway, &request("GET", "/openapi.json", None, b""), false)
        .await
        .expect("an answer");
    let doc: Value = serde_json::from_slice(&doc.body).expect("a description");
    let page = exchange(gateway, &request("GET", "/api", None, b""), false)
        .await
        .expect("an answer");
    assert_eq!(page.status, 200, "{}", page.describe());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = String::from_utf8(page.body).expect("UTF-8");
    assert!(!html.to_ascii_lowercase().contains("<script"), "no script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    for (method, path) in described(&doc) {
        let row = format!(
            "<span class=\"method {}\">{method}</span></td><td><a href=\"#",
            method.to_ascii_lowercase()
        );
        assert!(html.contains(&row), "{method} in the table");
        assert!(html.contains(&format!("<code>{path}</code>")), "{path}");
    }
    for name in doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        assert!(
            html.contains(&format!("<section id=\"schema-{name}\">")),
            "schema {name}"
        );
    }
    for shown in [
        "<h4>Parameters</h4>",
        "<h4>Request body</h4>",
        "<h4>Answers</h4>",
        "<a href=\"#schema-ErrorBody\">ErrorBody</a>",
        "<code>comments-srv</code>",
    ] {
        assert!(html.contains(shown), "{shown}");
    }
    // Any other method is refused as before, in the error shape.
    let refused = exchange(gateway, &request("POST", "/api", JSON, b"{}"), false)
        .await
        .expect("an answer");
    assert_eq!(refused.status, 405, "{}", refused.describe());
    assert_eq!(refused.header("content-type"), Some("application/json"));
    system.shutdown().await;
}

/// The request collection (docs/blog.http) holds a request for every route
/// of every part, and only routes the part it is sent to serves.
#[test]
fn the_request_collection_covers_every_route_and_only_real_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/blog.http")).expect("docs/blog.http");
    let parts = [
        ("host", ServiceKind::Gateway),
        ("posts", ServiceKind::Posts),
        ("comments", ServiceKind::Comments),
        ("query", ServiceKind::Query),
        ("moderation", ServiceKind::Moderation),
        ("bus", ServiceKind::EventBus),
    ];
    let mut sent: Vec<(ServiceKind, String, String)> = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let Some((method, target)) = line.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
            continue;
        }
        let Some((variable, path)) = target
            .strip_prefix("{{")
            .and_then(|rest| rest.split_once("}}"))
        else {
            problems.push(format!("{line}: not sent to a part's variable"));
            continue;
        };
        let Some(&(_, kind)) = parts.iter().find(|(name, _)| *name == variable) else {
            problems.push(format!("{line}: unknown variable {variable}"));
            continue;
        };
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .replace("{{postId}}", "{id}");
        let route = (method.to_owned(), path);
        if !documented_routes(kind)
            .iter()
            .any(|(m, p)| (*m, *p) == (route.0.as_str(), route.1.as_str()))
        {
            problems.push(format!("{line}: {} serves no such route", kind.name()));
        }
        sent.push((kind, route.0, route.1));
    }
    for (_, kind) in parts {
        for (method, path) in documented_routes(kind) {
            if !sent
                .iter()
                .any(|(k, m, p)| *k == kind && m == method && p == path)
            {
                problems.push(format!("no request for {method} {path} on {}", kind.name()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/blog.http:\n{}",
        problems.join("\n")
    );
}
