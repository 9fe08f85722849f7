//! `GET /healthz` (the process is alive) and `GET /readyz` (its storage and
//! the bus answer), for probes and for `blog up` to know when it is up.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::FieldError;

/// A readiness check: `Err` says what is not ready.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub fn routes(ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// The probes, described.
#[derive(OpenApi)]
#[openapi(paths(healthz, readyz))]
struct Probes;

/// The description of [`routes`].
pub fn api() -> utoipa::openapi::OpenApi {
    Probes::openapi()
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OkStatus {
    Ok,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnavailableStatus {
    Unavailable,
}

/// `{"status":"ok"}`: alive, or ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthy {
    #[schema(inline)]
    pub status: OkStatus,
}

/// Not ready, and why: `{"status":"unavailable","errors":[{"message":"not
/// ready: <reasons>"}]}`, the reasons joined by `; `.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    #[schema(inline)]
    pub status: UnavailableStatus,
    #[schema(min_items = 1)]
    pub errors: Vec<FieldError>,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    responses((status = 200, description = "Alive.", body = Healthy))
)]
async fn healthz() -> axum::Json<Healthy> {
    axum::Json(Healthy {
        status: OkStatus::Ok,
    })
}

/// Readiness: the part's storage and the bus answer (and, for a part that
/// emits events, its relay can publish).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready.", body = Healthy),
        (status = 503, description = "Not ready, with the reasons.", body = NotReady)
    )
)]
async fn readyz(State(ready): State<ReadyCheck>) -> Response {
    readiness(ready).await
}

async fn readiness(ready: ReadyCheck) -> Response {
    match ready().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(Healthy {
                status: OkStatus::Ok,
            }),
        )
            .into_response(),
        // The reason is the point of a readiness answer: said in full, in
        // the documented error shape.
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(NotReady {
                status: UnavailableStatus::Unavailable,
                errors: vec![FieldError {
                    message: format!("not ready: {why}"),
                    field: None,
                }],
            }),
        )
            .into_response(),
    }
}

/// A check that is always ready, for parts with no dependencies.
pub fn always_ready() -> ReadyCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// A part's ongoing failure, for its readiness: since when it has been
/// failing and the latest reason; one success clears it.
#[derive(Debug, Default)]
pub struct Failing(std::sync::Mutex<Option<(std::time::Instant, String)>>);

impl Failing {
    /// Records a failure: the first of a run starts the clock, later ones
    /// only update the reason.
    pub fn failed(&self, why: impl Into<String>) {
        if let Ok(mut failing) = self.0.lock() {
            let why = why.into();
            match failing.as_mut() {
                Some((_, last)) => *last = why,
                None => *failing = Some((std::time::Instant::now(), why)),
            }
        }
    }

    pub fn succeeded(&self) {
        if let Ok(mut failing) = self.0.lock() {
            *failing = None;
        }
    }

    /// For how long, and why, it has been failing.
    pub fn current(&self) -> Option<(std::time::Duration, String)> {
        self.0
            .lock()
            .ok()?
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }
}
