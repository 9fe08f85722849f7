//! `GET /healthz` (the process is alive) and `GET /readyz` (its storage and
//! the bus answer), for probes and for `blog up` to know when it is up.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde_json::json;

/// A readiness check: `Err` says what is not ready.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub fn routes(ready: ReadyCheck) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move { readiness(ready).await }
            }),
        )
}

async fn readiness(ready: ReadyCheck) -> Response {
    match ready().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        // The reason is the point of a readiness answer: said in full, in
        // the documented error shape.
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "unavailable",
                "errors": [{"message": format!("not ready: {why}")}],
            })),
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
