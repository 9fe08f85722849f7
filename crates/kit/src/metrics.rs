//! Prometheus metrics: one recorder per process, `GET /metrics` on every
//! part, and the HTTP request families recorded by route template.
//!
//! Every family carries a `service` label naming the part, so the parts of
//! one `blog up` process (which share the recorder) stay apart, and one
//! dashboard reads a single process and a deployment of many pods alike.
//! Labels are bounded: route templates, event types, outcomes, never raw
//! paths or ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::task::AbortOnDropHandle;

/// Request latency and pipeline latency buckets, in seconds: from a cached
/// read to a stalled delivery.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histograms are folded when nothing scrapes (bounds memory).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long a scrape waits for the gauges read at scrape time.
const REFRESH_LIMIT: Duration = Duration::from_secs(2);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same). The
/// first call inside a runtime also starts its upkeep. `None` when another
/// recorder was installed first, in which case the families are recorded
/// there and `/metrics` says so.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(UPKEEP_EVERY).await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .as_ref()
}

/// Brings a gauge up to date just before a scrape (an outbox's depth, a
/// pool's use, a subscriber's lag): values that are cheap to read when
/// asked and wasteful to track on every change.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A registered refresh and the runtime it was registered on, which owns
/// the sockets it reads through (a pool's connections).
struct Refresher {
    id: u64,
    refresh: Refresh,
    runtime: Option<tokio::runtime::Handle>,
}

static REFRESHERS: Mutex<Vec<Refresher>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Keeps a [`Refresh`] registered; dropping it (the part stops) removes it.
#[must_use = "the refresh is removed when this is dropped"]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        // Taken out under the lock, dropped after it: a refresher may own
        // what holds another registration (a read model holds its
        // database, which holds its pool's), whose drop takes the lock.
        let removed = REFRESHERS.lock().ok().and_then(|mut refreshers| {
            let at = refreshers.iter().position(|r| r.id == self.0)?;
            Some(refreshers.swap_remove(at))
        });
        drop(removed);
    }
}

/// Runs `refresh` before every scrape, for as long as the registration lives,
/// on the runtime it is registered from (when there is one).
///
/// Why that runtime: a connection a refresh opens is registered with the
/// runtime it runs on and goes back to its pool. Run from the scraping
/// part's runtime instead, it would die with that runtime, and the next
/// user of the pool would get "a Tokio context ... is being shut down" (one
/// process may hold several runtimes: the integration tests run a system
/// per test, each on its own).
pub fn on_scrape(refresh: Refresh) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let runtime = tokio::runtime::Handle::try_current().ok();
    if let Ok(mut refreshers) = REFRESHERS.lock() {
        refreshers.push(Refresher {
            id,
            refresh,
            runtime,
        });
    }
    Registration(id)
}

/// Runs every registered refresh, each on its own runtime, for at most
/// [`REFRESH_LIMIT`]: a gauge whose source is slow keeps its last value
/// rather than holding the scrape.
async fn refresh_all() {
    // Taken out under the lock and run after it, as in `Registration::drop`.
    let refreshers: Vec<(Refresh, Option<tokio::runtime::Handle>)> = REFRESHERS
        .lock()
        .map(|r| {
            r.iter()
                .map(|r| (r.refresh.clone(), r.runtime.clone()))
                .collect()
        })
        .unwrap_or_default();
    // One registered outside any runtime runs on the scraper's. A task
    // whose runtime shuts down is cancelled, and one still running at the
    // limit is aborted (with its handle): that gauge keeps its last value.
    let tasks: Vec<_> = refreshers
        .into_iter()
        .map(|(refresh, runtime)| {
            let runtime = runtime.unwrap_or_else(tokio::runtime::Handle::current);
            AbortOnDropHandle::new(runtime.spawn(refresh()))
        })
        .collect();
    let _ = tokio::time::timeout(REFRESH_LIMIT, futures_util::future::join_all(tasks)).await;
}

/// `GET /metrics`: every family of this process, in Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    responses(
        (
            status = 200,
            description = "Every metric family of the process, each labelled by part (`service`).",
            content_type = "text/plain; version=0.0.4; charset=utf-8",
            body = String
        ),
        (
            status = 503,
            description = "Another recorder took the process's metrics.",
            body = crate::error::ErrorBody
        )
    )
)]
pub async fn render() -> Response {
    refresh_all().await;
    match recorder() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => crate::ApiError::Unavailable(
            "metrics are recorded by another recorder in this process".into(),
        )
        .into_response(),
    }
}

/// The route an answer was for, set by a handler that routes by itself
/// (the gateway, by its Ingress rule) where axum's matched path says nothing.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Records `blog_http_requests_total` and `blog_http_request_duration_seconds`
/// for each request, by the route template it matched (`unmatched` for
/// none, so a scan of random paths adds no series).
pub async fn track_requests(
    State(service): State<&'static str>,
    req: Request,
    next: Next,
) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let route = match (response.extensions().get::<RouteLabel>(), matched) {
        (Some(RouteLabel(label)), _) => (*label).to_owned(),
        (None, Some(path)) => path,
        (None, None) => "unmatched".to_owned(),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("blog_http_requests_total", "service" => service, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("blog_http_request_duration_seconds", "service" => service, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a bounded label: the standard ones by name, others as one.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refreshers_run_at_scrape_and_leave_with_their_registration() {
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let registration = on_scrape(Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {})
        }));
        render().await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        drop(registration);
        render().await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_refresher_that_owns_another_registration_is_dropped_without_a_deadlock() {
        let inner = on_scrape(Arc::new(|| Box::pin(async {})));
        let outer = on_scrape(Arc::new(move || {
            let _owned = &inner;
            Box::pin(async {})
        }));
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(outer);
            let _ = done.send(());
        });
        assert!(
            dropped.recv_timeout(Duration::from_secs(5)).is_ok(),
            "dropping the registration deadlocked"
        );
    }

    /// A regression: a scrape ran every part's refresh on the scraper's
    /// runtime, so a connection it opened for another system's pool died
    /// with the scraper's runtime and failed that system's readiness.
    #[test]
    fn a_refresh_runs_on_the_runtime_that_registered_it() {
        let ran_on = Arc::new(Mutex::new(None::<String>));
        let seen = ran_on.clone();
        let owner = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("refresh-owner")
            .enable_all()
            .build()
            .expect("a runtime");
        let registration = owner.block_on(async move {
            on_scrape(Arc::new(move || {
                let seen = seen.clone();
                Box::pin(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    *seen.lock().expect("not poisoned") = name;
                })
            }))
        });
        let scraper = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        scraper.block_on(render());
        assert_eq!(
            ran_on.lock().expect("not poisoned").as_deref(),
            Some("refresh-owner")
        );
        drop(registration);
        owner.shutdown_background();
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        let odd = axum::http::Method::from_bytes(b"BREW").expect("a method");
        assert_eq!(method_label(&odd), "other");
    }
}
