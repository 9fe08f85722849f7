//! The OpenAPI 3.1 description every part serves at `GET /openapi.json`,
//! generated from the code: each handler carries `#[utoipa::path]`, each
//! body type derives `ToSchema`, and each crate gathers its handlers in an
//! [`Api`] beside the routers that serve them. [`finish`](crate::http::finish)
//! turns that into the service's description: every operation tagged with
//! the group of routes that serves it (`public`, `internal`, `probes`), the
//! internal ones marked as needing the internal token (and answering 401
//! without it), every operation given the error shape as its `default`
//! answer, and `GET /metrics` and `GET /openapi.json` added.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::Tag;
use utoipa::openapi::{Components, Content, Ref, RefOr};

use crate::error::{ErrorBody, FieldError};

/// The tag of what browsers call: CORS applies.
pub const PUBLIC: &str = "public";
/// The tag of what only the system's own parts call: never CORS; the
/// internal token when the part runs with one.
pub const INTERNAL: &str = "internal";
/// The tag of what the orchestrator and tools call: liveness, readiness,
/// metrics and this description; open to all, never CORS.
pub const PROBES: &str = "probes";

/// The security scheme of the internal routes.
pub const INTERNAL_TOKEN: &str = "internalToken";

/// The name of the error shape among the schemas.
pub const ERROR_SCHEMA: &str = "ErrorBody";

/// A service's routes described, group by group, as
/// [`Routes`](crate::http::Routes) groups the routers.
#[derive(Default, Clone)]
pub struct Api {
    pub public: utoipa::openapi::OpenApi,
    pub internal: utoipa::openapi::OpenApi,
    pub probes: utoipa::openapi::OpenApi,
}

/// What every part serves besides its own routes.
#[derive(OpenApi)]
#[openapi(
    paths(crate::metrics::render, openapi_json),
    components(schemas(ErrorBody, FieldError))
)]
struct Common;

/// The operations of a path, whatever their methods.
pub fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The operations of a path, read only.
pub fn operations_of(item: &PathItem) -> impl Iterator<Item = &Operation> {
    [
        &item.get,
        &item.put,
        &item.post,
        &item.delete,
        &item.options,
        &item.head,
        &item.patch,
        &item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_ref)
}

/// A reference to the error shape, as an answer's content.
fn error_content() -> Content {
    Content::new(Some(RefOr::Ref(Ref::from_schema_name(ERROR_SCHEMA))))
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let mut response = utoipa::openapi::Response::new(description);
    response
        .content
        .insert("application/json".to_owned(), error_content());
    RefOr::T(response)
}

/// Tags every operation of `doc` with `tag`, and what follows from it:
/// an internal operation needs the internal token.
pub fn tagged(mut doc: utoipa::openapi::OpenApi, tag: &str) -> utoipa::openapi::OpenApi {
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation.tags = Some(vec![tag.to_owned()]);
            if tag == INTERNAL {
                operation.security = Some(vec![SecurityRequirement::new(
                    INTERNAL_TOKEN,
                    Vec::<String>::new(),
                )]);
                operation
                    .responses
                    .responses
                    .entry("401".to_owned())
                    .or_insert_with(|| {
                        error_response(
                            "The part runs with an internal token and the request did not show it \
                             (the answer carries `WWW-Authenticate: Bearer`).",
                        )
                    });
            }
        }
    }
    doc
}

/// Every error answer not listed otherwise is the error shape.
fn default_errors(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation
                .responses
                .responses
                .entry("default".to_owned())
                .or_insert_with(|| {
                    error_response(
                        "Any other error (400, 404, 405, 413, 415, 503, ...), in the error shape.",
                    )
                });
        }
    }
}

fn tags() -> Vec<Tag> {
    [
        (
            PUBLIC,
            "What browsers call (the course's client): CORS applies.",
        ),
        (
            INTERNAL,
            "What only the system's own parts call (events, the bus, dead letters): never CORS; \
             the internal token when the part runs with `--internal-token`.",
        ),
        (
            PROBES,
            "Liveness, readiness, metrics and this description, for the orchestrator and \
             tools: open to all, never CORS.",
        ),
    ]
    .into_iter()
    .map(|(name, description)| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_owned());
        tag
    })
    .collect()
}

/// The description of a service named `service` whose routes are `api`:
/// its groups tagged and merged, with what every part serves.
pub fn document(service: &str, api: Api) -> utoipa::openapi::OpenApi {
    let mut doc = utoipa::openapi::OpenApi::default();
    doc.merge(tagged(api.public, PUBLIC));
    doc.merge(tagged(api.internal, INTERNAL));
    doc.merge(tagged(api.probes, PROBES));
    doc.merge(tagged(Common::openapi(), PROBES));
    finish_document(doc, service)
}

/// Names `doc` after `service`, and adds the shared parts: the error
/// shape as every operation's `default` answer, the tags and the internal
/// token's scheme.
pub fn finish_document(
    mut doc: utoipa::openapi::OpenApi,
    service: &str,
) -> utoipa::openapi::OpenApi {
    doc.info.title = format!("blog {service}");
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(format!(
        "The routes of the blog's {service} part, generated from its code. Every error answer \
         is `{{\"errors\":[{{\"message\",\"field\"?}}]}}` ({ERROR_SCHEMA})."
    ));
    doc.info.license = None;
    doc.info.contact = None;
    default_errors(&mut doc);
    let components = doc.components.get_or_insert_with(Components::default);
    components.security_schemes.insert(
        INTERNAL_TOKEN.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The part's `--internal-token`, as `Authorization: Bearer <token>`; \
                     asked only when the part runs with one.",
                ))
                .build(),
        ),
    );
    let used: Vec<String> = doc
        .paths
        .paths
        .values()
        .flat_map(operations_of)
        .flat_map(|op| op.tags.iter().flatten().cloned())
        .collect();
    let mut tags = tags();
    tags.retain(|tag| used.contains(&tag.name));
    doc.tags = Some(tags);
    doc
}

/// A description, serialised once.
#[derive(Clone)]
pub struct Served(Bytes);

impl Served {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        // Serialising plain maps and strings cannot fail.
        Self(Bytes::from(doc.to_json().unwrap_or_else(|_| "{}".into())))
    }

    /// A description already in JSON (the gateway's, combined from others).
    pub fn json(doc: &serde_json::Value) -> Self {
        Self(Bytes::from(doc.to_string()))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl IntoResponse for Served {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// This part's OpenAPI 3.1 description: every route it serves, with the
/// schemas of its bodies and answers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    responses((
        status = 200,
        description = "The part's OpenAPI 3.1 description (this document).",
        content_type = "application/json",
        body = Object
    ))
)]
async fn openapi_json(State(doc): State<Served>) -> Served {
    doc
}

/// `GET /openapi.json` serving `doc`.
pub fn route(doc: &utoipa::openapi::OpenApi) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .with_state(Served::new(doc))
}

/// The longest a required text field of body schema `schema` may be, as
/// `doc` states it; `None` if the field is not required or has no limit.
/// What a test holds against the domain type that checks the field.
pub fn required_text_limit(
    doc: &utoipa::openapi::OpenApi,
    schema: &str,
    field: &str,
) -> Option<u64> {
    let doc = serde_json::to_value(doc).ok()?;
    let schema = &doc["components"]["schemas"][schema];
    let required = schema["required"].as_array()?;
    if !required.iter().any(|f| f == field) {
        return None;
    }
    schema["properties"][field]["maxLength"].as_u64()
}

/// The `(method, path)` of every operation of `doc`, methods in capitals.
pub fn operations(doc: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ] {
            if operation.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes_only() -> utoipa::openapi::OpenApi {
        document(
            "test",
            Api {
                probes: crate::health::api(),
                ..Api::default()
            },
        )
    }

    #[test]
    fn every_part_describes_its_metrics_and_this_description_with_the_error_shape() {
        let doc = probes_only();
        assert_eq!(
            operations(&doc),
            [
                ("GET".to_owned(), "/healthz".to_owned()),
                ("GET".to_owned(), "/readyz".to_owned()),
                ("GET".to_owned(), "/metrics".to_owned()),
                ("GET".to_owned(), "/openapi.json".to_owned()),
            ]
        );
        let json = serde_json::to_value(&doc).expect("json");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        assert_eq!(json["info"]["title"], "blog test");
        let schemas = &json["components"]["schemas"];
        assert_eq!(
            schemas[ERROR_SCHEMA]["required"],
            serde_json::json!(["errors"])
        );
        assert_eq!(
            schemas["FieldError"]["required"],
            serde_json::json!(["message"])
        );
        for (path, item) in json["paths"].as_object().expect("paths") {
            let get = &item["get"];
            assert_eq!(get["tags"], serde_json::json!([PROBES]), "{path}");
            assert_eq!(
                get["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{path}"
            );
            assert!(get.get("security").is_none(), "{path}");
        }
    }

    #[test]
    fn internal_routes_need_the_token() {
        let doc = document(
            "test",
            Api {
                internal: crate::health::api(),
                ..Api::default()
            },
        );
        let json = serde_json::to_value(&doc).expect("json");
        let get = &json["paths"]["/healthz"]["get"];
        assert_eq!(get["tags"], serde_json::json!([INTERNAL]));
        assert_eq!(get["security"], serde_json::json!([{INTERNAL_TOKEN: []}]));
        assert!(get["responses"]["401"].is_object());
        assert_eq!(
            json["components"]["securitySchemes"][INTERNAL_TOKEN]["scheme"],
            "bearer"
        );
    }
}
