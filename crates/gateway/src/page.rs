//! `GET /api`: the gateway's description as one plain HTML page, rendered
//! here: a table of the routes, then each route with its parameters, body
//! and answers, then the schemas they name. No script (the client's
//! Content-Security-Policy allows none inline, and nothing is fetched from
//! elsewhere); the one style sheet is inline, allowed by its hash.

use std::fmt::Write;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The page's style. Its hash is in [`CONTENT_SECURITY_POLICY`]: change one,
/// change the other (a test checks them).
const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:72rem;\
padding:1rem 2rem;color:#1d2125;background:#fff}\
h1{font-size:1.6rem}h2{margin-top:2.5rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}\
h3{margin:0 0 .3rem;font-size:1.1rem}h4{margin:.8rem 0 .2rem;font-size:.95rem}\
section{border:1px solid #dde;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}\
table{border-collapse:collapse;width:100%;margin:.3rem 0}\
th,td{text-align:left;vertical-align:top;padding:.25rem .5rem;border-bottom:1px solid #eef}\
th{font-weight:600;background:#f5f6fa}code{font:13px/1.4 ui-monospace,monospace}\
.method{display:inline-block;min-width:4.2rem;font:600 13px ui-monospace,monospace;\
color:#fff;background:#4a5568;border-radius:4px;padding:.1rem .4rem;text-align:center}\
.get{background:#2b6cb0}.post{background:#2f855a}.put,.patch{background:#b7791f}\
.delete{background:#c53030}.note{color:#555}.tag{color:#555;font-size:.85rem}";

/// What the page may do: show itself and its own style; nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
style-src 'sha256-jZM3oPoZoUvRh4YzzVS556MLFN6EYCWRWv/V/dSCEqI='; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// The page for `doc`, with its headers.
pub fn response(doc: &Value) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render(doc),
    )
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Text made safe for HTML, in an element or an attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A description's text: escaped, `code` spans shown as code, paragraphs
/// kept.
fn prose(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(&part.replace("\n\n", "<br><br>"));
        }
    }
    out
}

/// An anchor name made of letters, digits, `-` and `_` only.
fn anchor(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}-{clean}")
}

fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A schema as a short type expression, in HTML: names link to their
/// schema below.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = str_of(schema, "$ref") {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!(
            "<a href=\"#{}\">{}</a>",
            anchor("schema", name),
            escape(name)
        );
    }
    for (key, joint) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " &amp; ")] {
        if let Some(items) = schema.get(key).and_then(Value::as_array) {
            return items.iter().map(type_of).collect::<Vec<_>>().join(joint);
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(value) = schema.get("const") {
        return format!("<code>{}</code>", escape(&value.to_string()));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        return "any".to_owned();
    }
    types
        .iter()
        .map(|t| match *t {
            "array" => format!(
                "array of {}",
                schema.get("items").map_or("any".to_owned(), type_of)
            ),
            "object" => object_type(schema),
            other => escape(other),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn object_type(schema: &Value) -> String {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        let required = required(schema);
        let fields: Vec<String> = properties
            .iter()
            .map(|(name, property)| {
                let optional = if required.contains(&name.as_str()) {
                    ""
                } else {
                    "?"
                };
                format!("{}{optional}: {}", escape(name), type_of(property))
            })
            .collect();
        return format!("{{ {} }}", fields.join(", "));
    }
    match schema.get("additionalProperties") {
        Some(values @ Value::Object(_)) => format!("object of {} by key", type_of(values)),
        _ => "object".to_owned(),
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A schema's limits, in words.
fn limits(schema: &Value) -> String {
    let mut out = Vec::new();
    for (key, words) in [
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("minimum", "at least {}"),
        ("maximum", "at most {}"),
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("pattern", "matches {}"),
        ("format", "format {}"),
    ] {
        if let Some(value) = schema.get(key) {
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            out.push(words.replace("{}", &format!("<code>{}</code>", escape(&shown))));
        }
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push("no other fields".to_owned());
    }
    out.join("; ")
}

fn description_of(value: &Value) -> String {
    [str_of(value, "summary"), str_of(value, "description")]
        .into_iter()
        .flatten()
        .map(prose)
        .collect::<Vec<_>>()
        .join("<br><br>")
}

/// The content of a body or an answer: each media type with its schema.
fn content(content: Option<&Value>) -> String {
    let Some(content) = content.and_then(Value::as_object) else {
        return String::new();
    };
    content
        .iter()
        .map(|(media, body)| {
            let schema = body.get("schema").map_or(String::new(), type_of);
            format!("<code>{}</code> {schema}", escape(media))
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of `doc`: `(method, path, operation)`.
fn operations(doc: &Value) -> Vec<(&'static str, &str, &Value)> {
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    out.push((method, path.as_str(), operation));
                }
            }
        }
    }
    out
}

fn operation_anchor(method: &str, path: &str) -> String {
    anchor("route", &format!("{method}-{path}"))
}

fn method_badge(method: &str) -> String {
    format!(
        "<span class=\"method {method}\">{}</span>",
        method.to_ascii_uppercase()
    )
}

/// The page.
pub fn render(doc: &Value) -> String {
    let info = doc.get("info").unwrap_or(&Value::Null);
    let title = str_of(info, "title").unwrap_or("API");
    let mut html = String::with_capacity(32 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><header><h1>{title}</h1>\
         <p>{description}</p><p class=\"note\">OpenAPI {openapi}, version {version}: \
         <a href=\"/openapi.json\">/openapi.json</a></p></header>",
        title = escape(title),
        description = prose(str_of(info, "description").unwrap_or("")),
        openapi = escape(str_of(doc, "openapi").unwrap_or("?")),
        version = escape(str_of(info, "version").unwrap_or("?")),
    );
    let operations = operations(doc);
    html.push_str(
        "<h2 id=\"routes\">Routes</h2><table><thead><tr><th>Method</th><th>Path</th>\
         <th>What</th><th>Who calls it</th></tr></thead><tbody>",
    );
    for (method, path, operation) in &operations {
        let _ = write!(
            html,
            "<tr><td>{}</td><td><a href=\"#{}\"><code>{}</code></a></td><td>{}</td>\
             <td class=\"tag\">{}</td></tr>",
            method_badge(method),
            operation_anchor(method, path),
            escape(path),
            str_of(operation, "summary").map(prose).unwrap_or_default(),
            tags_and_service(operation),
        );
    }
    html.push_str("</tbody></table>");
    for (method, path, operation) in &operations {
        render_operation(&mut html, method, path, operation);
    }
    render_schemas(&mut html, doc);
    html.push_str("</body></html>");
    html
}

fn tags_and_service(operation: &Value) -> String {
    let mut out: Vec<String> = operation
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(escape)
        .collect();
    if let Some(service) = str_of(operation, "x-service") {
        out.push(format!("(<code>{}</code>)", escape(service)));
    }
    out.join(" ")
}

fn render_operation(html: &mut String, method: &str, path: &str, operation: &Value) {
    let _ = write!(
        html,
        "<section id=\"{}\"><h3>{} <code>{}</code></h3><p class=\"tag\">{}</p><p>{}</p>",
        operation_anchor(method, path),
        method_badge(method),
        escape(path),
        tags_and_service(operation),
        description_of(operation),
    );
    if let Some(parameters) = operation.get("parameters").and_then(Value::as_array) {
        html.push_str(
            "<h4>Parameters</h4><table><thead><tr><th>Name</th><th>In</th><th>Type</th>\
             <th>Required</th><th>Description</th></tr></thead><tbody>",
        );
        for parameter in parameters {
            let schema = parameter.get("schema").unwrap_or(&Value::Null);
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(str_of(parameter, "name").unwrap_or("")),
                escape(str_of(parameter, "in").unwrap_or("")),
                type_of(schema),
                if parameter.get("required") == Some(&Value::Bool(true)) {
                    "yes"
                } else {
                    "no"
                },
                [
                    str_of(parameter, "description")
                        .map(prose)
                        .unwrap_or_default(),
                    limits(schema),
                ]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
            );
        }
        html.push_str("</tbody></table>");
    }
    if let Some(body) = operation.get("requestBody") {
        let _ = write!(
            html,
            "<h4>Request body{}</h4><p>{}</p><p>{}</p>",
            if body.get("required") == Some(&Value::Bool(true)) {
                ""
            } else {
                " (optional)"
            },
            content(body.get("content")),
            str_of(body, "description").map(prose).unwrap_or_default(),
        );
    }
    if let Some(responses) = operation.get("responses").and_then(Value::as_object) {
        html.push_str(
            "<h4>Answers</h4><table><thead><tr><th>Status</th><th>Description</th>\
             <th>Body</th><th>Headers</th></tr></thead><tbody>",
        );
        for (status, response) in responses {
            let headers: Vec<String> = response
                .get("headers")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, header)| {
                    format!(
                        "<code>{}</code>: {}",
                        escape(name),
                        str_of(header, "description").map(prose).unwrap_or_default()
                    )
                })
                .collect();
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(status),
                str_of(response, "description")
                    .map(prose)
                    .unwrap_or_default(),
                content(response.get("content")),
                headers.join("<br>"),
            );
        }
        html.push_str("</tbody></table>");
    }
    html.push_str("</section>");
}

fn render_schemas(html: &mut String, doc: &Value) {
    let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    else {
        return;
    };
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in schemas {
        let _ = write!(
            html,
            "<section id=\"{}\"><h3>{}</h3><p>{}</p>",
            anchor("schema", name),
            escape(name),
            str_of(schema, "description").map(prose).unwrap_or_default(),
        );
        match schema.get("properties").and_then(Value::as_object) {
            Some(properties) => {
                let required = required(schema);
                html.push_str(
                    "<table><thead><tr><th>Field</th><th>Type</th><th>Required</th>\
                     <th>Description</th></tr></thead><tbody>",
                );
                for (field, property) in properties {
                    let _ = write!(
                        html,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(field),
                        type_of(property),
                        if required.contains(&field.as_str()) {
                            "yes"
                        } else {
                            "no"
                        },
                        [
                            str_of(property, "description")
                                .map(prose)
                                .unwrap_or_default(),
                            limits(property),
                        ]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                    );
                }
                html.push_str("</tbody></table>");
                let rest = limits(schema);
                if !rest.is_empty() {
                    let _ = write!(html, "<p>{rest}</p>");
                }
            }
            None => {
                let _ = write!(html, "<p>{}</p>", type_of(schema));
                let rest = limits(schema);
                if !rest.is_empty() {
                    let _ = write!(html, "<p>{rest}</p>");
                }
            }
        }
        html.push_str("</section>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "blog <gateway>", "version": "0.1.0", "description": "Errors are `ErrorBody`."},
            "paths": {
                "/posts/{id}/comments": {
                    "post": {
                        "tags": ["public"],
                        "x-service": "comments-srv",
                        "summary": "Comments on a post",
                        "parameters": [{"name": "id", "in": "path", "required": true,
                                        "schema": {"type": "string"}, "description": "The post's id."}],
                        "requestBody": {"required": true, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/NewComment"}}}},
                        "responses": {
                            "201": {"description": "Created.", "content": {"application/json": {
                                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Comment"}}}}},
                            "default": {"description": "Error.", "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                        }
                    }
                }
            },
            "components": {"schemas": {
                "NewComment": {"type": "object", "required": ["content"], "properties": {
                    "content": {"type": "string", "minLength": 1, "maxLength": 1000}}},
                "Comment": {"type": "object", "required": ["id", "status"], "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "approved"]},
                    "note": {"type": ["string", "null"]}}},
                "ErrorBody": {"type": "object", "properties": {"errors": {"type": "array",
                    "items": {"$ref": "#/components/schemas/FieldError"}}}},
                "Map": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Comment"}}
            }}
        })
    }

    #[test]
    fn shows_every_route_its_parameters_bodies_answers_and_schemas() {
        let html = render(&doc());
        for expected in [
            "<title>blog &lt;gateway&gt;</title>",
            "Errors are <code>ErrorBody</code>.",
            "<span class=\"method post\">POST</span>",
            "<code>/posts/{id}/comments</code>",
            "href=\"#route-post--posts--id--comments\"",
            "<code>comments-srv</code>",
            "<td><code>id</code></td><td>path</td><td>string</td><td>yes</td>",
            "<a href=\"#schema-NewComment\">NewComment</a>",
            "array of <a href=\"#schema-Comment\">Comment</a>",
            "<section id=\"schema-Comment\">",
            "<code>&quot;pending&quot;</code> | <code>&quot;approved&quot;</code>",
            "string | null",
            "at most <code>1000</code> characters",
            "object of <a href=\"#schema-Comment\">Comment</a> by key",
        ] {
            assert!(html.contains(expected), "{expected} not in {html}");
        }
        assert!(!html.contains("<script"), "no script");
    }

    #[test]
    fn escapes_what_the_description_says() {
        let mut doc = doc();
        doc["paths"]["/posts/{id}/comments"]["post"]["summary"] =
            json!("<script>alert(1)</script> & \"quotes\"");
        let html = render(&doc);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
    }

    /// Base64 of `bytes`, as CSP hashes write it.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_style_and_no_script() {
        use sha2::Digest;
        let hash = base64(&sha2::Sha256::digest(STYLE.as_bytes()));
        assert!(
            CONTENT_SECURITY_POLICY.contains(&format!("style-src 'sha256-{hash}'")),
            "the style's hash is sha256-{hash}"
        );
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        let page = response(&doc());
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }
}
