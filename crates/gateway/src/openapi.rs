//! The gateway's description: `GET /openapi.json` is the public routes of
//! posts, comments and query as the Ingress routes them (each service's
//! own description, asked for at `GET /openapi.json`, keeps the operations
//! tagged `public` whose path the rules send to that service), with the
//! gateway's own routes; `GET /api` shows it as a page.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::Gateway;
use crate::page;
use crate::rules::RuleSet;

/// The paths the gateway answers itself, before the Ingress rules: the
/// rules would send them to the client (the catch-all), never to a service.
pub const OWN_PATHS: [&str; 2] = ["/openapi.json", "/api"];

/// How long the gateway waits for a service's description.
const ASK_LIMIT: Duration = Duration::from_secs(5);
/// The largest description taken from a service.
pub const DESCRIPTION_LIMIT: usize = 1024 * 1024;

/// The tag of the gateway's own routes.
const GATEWAY_TAG: &str = crate::NAME;

/// The combined description: the public routes of posts, comments and
/// query, as the Ingress routes them, and the gateway's own.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    responses((
        status = 200,
        description = "This description (OpenAPI 3.1): the services' public routes as the \
                       gateway routes them, and the gateway's own.",
        content_type = "application/json",
        body = Object
    ))
)]
pub(crate) async fn openapi_json(State(gateway): State<std::sync::Arc<Gateway>>) -> Response {
    blog_kit::openapi::Served::json(&describe(&gateway).await).into_response()
}

/// A page that shows this description: every route with its parameters,
/// bodies and answers, and the schemas they name. Plain HTML, no script.
#[utoipa::path(
    get,
    path = "/api",
    operation_id = "apiPage",
    responses((
        status = 200,
        description = "The description as an HTML page.",
        content_type = "text/html; charset=utf-8",
        body = String
    ))
)]
pub(crate) async fn api_page(State(gateway): State<std::sync::Arc<Gateway>>) -> Response {
    let doc = describe(&gateway).await;
    page::response(&doc)
}

/// The gateway's own routes.
#[derive(OpenApi)]
#[openapi(paths(openapi_json, api_page, blog_kit::metrics::render))]
struct Own;

/// Its own routes, and the probes the client server answers behind the
/// catch-all rule.
fn own() -> (utoipa::openapi::OpenApi, utoipa::openapi::OpenApi) {
    let mut probes = blog_kit::health::api();
    for item in probes.paths.paths.values_mut() {
        for operation in blog_kit::openapi::operations_mut(item) {
            operation.description = Some(
                "Answered by the client server (`client-srv`), where the Ingress's catch-all \
                 rule sends every path no other rule takes."
                    .into(),
            );
        }
    }
    // The error shape comes with `/metrics`'s 503.
    (Own::openapi(), probes)
}

/// Asks one service for its description.
async fn ask(gateway: &Gateway, base: &str) -> Result<Value, String> {
    let url = format!("{base}/openapi.json");
    match tokio::time::timeout(ASK_LIMIT, gateway.proxy.get_json(&url, DESCRIPTION_LIMIT)).await {
        Ok(answer) => answer.map_err(|e| format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no answer within {ASK_LIMIT:?}")),
    }
}

/// The combined description, asking each service for its own.
pub(crate) async fn describe(gateway: &Gateway) -> Value {
    let services = &gateway.described;
    let answers =
        futures_util::future::join_all(services.iter().map(|(_, base)| ask(gateway, base))).await;
    let described: Vec<(&'static str, Result<Value, String>)> = services
        .iter()
        .map(|(name, _)| *name)
        .zip(answers)
        .collect();
    combine(&gateway.rules, &described)
}

/// A path of the description with each parameter filled in, as a request
/// would have it, to route it by the rules.
fn example_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' if in_param => {
                in_param = false;
                out.push('x');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` to a schema in `value`, by name.
fn schema_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref"
                    && let Some(name) = inner
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    out.push(name.to_owned());
                } else {
                    schema_refs(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| schema_refs(v, out)),
        _ => {}
    }
}

/// Copies the schemas `operation` names, and those they name in turn, from
/// `upstream` into `schemas`. A name already taken by a different schema is
/// a conflict, said in `notes`.
fn copy_schemas(
    operation: &Value,
    upstream: &Value,
    schemas: &mut Map<String, Value>,
    service: &str,
    notes: &mut Vec<String>,
) {
    let mut wanted = Vec::new();
    schema_refs(operation, &mut wanted);
    let mut seen: Vec<String> = Vec::new();
    while let Some(name) = wanted.pop() {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name.clone());
        let Some(schema) = upstream["components"]["schemas"].get(&name) else {
            notes.push(format!("{service} names a schema it does not hold: {name}"));
            continue;
        };
        match schemas.get(&name) {
            Some(existing) if existing != schema => notes.push(format!(
                "{service}'s schema {name} differs from another service's; the first is shown"
            )),
            Some(_) => {}
            None => {
                schemas.insert(name.clone(), schema.clone());
            }
        }
        schema_refs(schema, &mut wanted);
    }
}

/// The combined description from each service's answer (its description,
/// or why there is none).
pub fn combine(rules: &RuleSet, described: &[(&'static str, Result<Value, String>)]) -> Value {
    let (own, probes) = own();
    let own = blog_kit::openapi::tagged(own, GATEWAY_TAG);
    let probes = blog_kit::openapi::tagged(probes, blog_kit::openapi::PROBES);
    let mut doc = serde_json::to_value(blog_kit::openapi::finish_document(
        own.merge_from(probes),
        crate::NAME,
    ))
    .unwrap_or_else(|_| json!({}));
    let mut paths = Map::new();
    let mut schemas = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut notes = Vec::new();
    for (service, answer) in described {
        let upstream = match answer {
            Ok(upstream) => upstream,
            Err(why) => {
                notes.push(format!("{service} is not described: {why}"));
                continue;
            }
        };
        let Some(upstream_paths) = upstream["paths"].as_object() else {
            notes.push(format!("{service} is not described: no paths"));
            continue;
        };
        for (path, item) in upstream_paths {
            let routed = rules
                .route(&example_path(path))
                .is_some_and(|rule| rule.service == *service);
            if !routed {
                continue;
            }
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let public = operation["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| t == blog_kit::openapi::PUBLIC));
                if !public {
                    continue;
                }
                let mut operation = operation.clone();
                operation["x-service"] = Value::String((*service).to_owned());
                copy_schemas(&operation, upstream, &mut schemas, service, &mut notes);
                let entry = paths
                    .entry(path.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                entry[method] = operation;
            }
        }
    }
    // The services' routes first, then the gateway's own.
    if let Some(own_paths) = doc["paths"].as_object() {
        for (path, item) in own_paths {
            paths.entry(path.clone()).or_insert_with(|| item.clone());
        }
    }
    doc["paths"] = Value::Object(paths);
    doc["components"]["schemas"] = Value::Object(schemas);
    let mut tags = vec![json!({
        "name": blog_kit::openapi::PUBLIC,
        "description": "The services' routes for browsers (the course's client), as the gateway \
                        and the Ingress route them: `x-service` names the service.",
    })];
    tags.extend(
        doc["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["name"] != blog_kit::openapi::PUBLIC)
            .cloned(),
    );
    tags.push(json!({
        "name": GATEWAY_TAG,
        "description": "The gateway's own routes, answered before the Ingress rules.",
    }));
    doc["tags"] = Value::Array(tags);
    let mut description = "The blog's public routes as the gateway (and the Ingress for \
        posts.com) routes them: the routes of posts, comments and query that browsers call, \
        from each service's own description, with the gateway's own. Every error answer is \
        `{\"errors\":[{\"message\",\"field\"?}]}` (ErrorBody)."
        .to_owned();
    if !notes.is_empty() {
        description.push_str("\n\nNot complete: ");
        description.push_str(&notes.join("; "));
        description.push('.');
    }
    doc["info"]["description"] = Value::String(description);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::course;

    /// A service's description as `finish` makes it, with these public
    /// routes and an internal one.
    fn service(public: &[(&str, &str, &str)]) -> Value {
        let mut paths = Map::new();
        for (path, method, answer) in public {
            let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
            entry[*method] = json!({
                "tags": ["public"],
                "operationId": format!("{method}{path}"),
                "responses": {"200": {"description": "ok", "content": {"application/json": {
                    "schema": {"$ref": format!("#/components/schemas/{answer}")}}}}},
            });
        }
        paths.insert(
            "/events".into(),
            json!({"post": {"tags": ["internal"], "responses": {}}}),
        );
        json!({
            "openapi": "3.1.0",
            "paths": paths,
            "components": {"schemas": {
                "Post": {"type": "object", "properties": {"c": {"$ref": "#/components/schemas/Inner"}}},
                "Inner": {"type": "string"},
                "Comments": {"type": "array"},
                "Posts": {"type": "object"},
                "Unused": {"type": "null"},
            }},
        })
    }

    fn combined() -> Value {
        combine(
            &RuleSet::new(&course()),
            &[
                (
                    "posts-clusterip-srv",
                    Ok(service(&[
                        ("/posts/create", "post", "Post"),
                        ("/posts", "get", "Posts"),
                    ])),
                ),
                (
                    "comments-srv",
                    Ok(service(&[("/posts/{id}/comments", "get", "Comments")])),
                ),
                ("query-srv", Ok(service(&[("/posts", "get", "Posts")]))),
            ],
        )
    }

    #[test]
    fn keeps_the_public_routes_each_rule_sends_to_its_service() {
        let doc = combined();
        let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
        assert_eq!(
            paths,
            [
                "/posts/create",
                "/posts/{id}/comments",
                "/posts",
                "/openapi.json",
                "/api",
                "/metrics",
                "/healthz",
                "/readyz"
            ]
        );
        // GET /posts is query's through the Ingress, not posts'.
        assert_eq!(doc["paths"]["/posts"]["get"]["x-service"], "query-srv");
        assert_eq!(
            doc["paths"]["/posts/create"]["post"]["x-service"],
            "posts-clusterip-srv"
        );
        assert!(
            doc["paths"].get("/events").is_none(),
            "internal routes stay"
        );
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "Post",
            "Inner",
            "Comments",
            "Posts",
            "ErrorBody",
            "FieldError",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert!(!schemas.contains_key("Unused"));
        assert_eq!(doc["paths"]["/api"]["get"]["tags"], json!(["gateway"]));
        assert!(
            !doc["info"]["description"]
                .as_str()
                .expect("description")
                .contains("Not complete")
        );
    }

    #[test]
    fn says_which_service_is_not_described() {
        let doc = combine(
            &RuleSet::new(&course()),
            &[("comments-srv", Err("http://c/openapi.json: 404".into()))],
        );
        let description = doc["info"]["description"].as_str().expect("description");
        assert!(
            description.contains("comments-srv is not described: http://c/openapi.json: 404"),
            "{description}"
        );
    }

    #[test]
    fn the_gateways_own_paths_shadow_only_the_clients_catch_all() {
        let rules = RuleSet::new(&course());
        for path in OWN_PATHS {
            let rule = rules.route(path).expect("the catch-all matches everything");
            assert_eq!(rule.service, "client-srv", "{path}");
            assert_eq!(rule.path, "/?(.*)", "{path}");
        }
    }

    #[test]
    fn fills_path_parameters_to_route_them() {
        assert_eq!(example_path("/posts/{id}/comments"), "/posts/x/comments");
        assert_eq!(example_path("/posts"), "/posts");
    }
}
