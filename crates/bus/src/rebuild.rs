//! Rebuilding a read model from the bus's log while the service runs:
//! `POST /rebuild` starts it, `GET /rebuild` says how far it is.
//!
//! The model and the record of applied events are cleared in one
//! transaction, then the log is applied again from its first event in
//! pages. Events that arrive meanwhile are applied as usual: a handler
//! tolerates any order, and the replay finds them already applied.
//!
//! How far a rebuild has come is stored with the model: a service stopped
//! or killed in the middle goes on from there when it starts again. (Its
//! cursor on the bus has meanwhile passed events the rebuild had not yet
//! applied again; without this they would be missing for good.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use blog_kit::{ApiError, CancellationToken, ErrorBody};
use blog_storage::{StorageError, Tx, inbox};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::{BusClient, Consumer, Handler, Outcome};

/// Events read from the bus and applied per round.
const PAGE: usize = 1000;

/// Clears what a service derived from the log (its read model), in the
/// transaction that also forgets which events were applied.
pub type Clear = Arc<
    dyn for<'t> Fn(
            &'t mut Tx,
        ) -> Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + 't>>
        + Send
        + Sync,
>;

/// How a service starts over: what to clear, and whom to tell once that
/// committed (caches, live streams).
#[derive(Clone)]
pub struct Reset {
    pub clear: Clear,
    pub cleared: Arc<dyn Fn() + Send + Sync>,
}

/// Where a rebuild starts reading the log.
#[derive(Debug, Clone, Copy)]
enum StartAt {
    /// The first event, after clearing the read model.
    First,
    /// After this sequence number: a rebuild that was cut off goes on.
    After(i64),
}

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// None has run since the service started.
    Idle,
    Running,
    Done,
    Failed,
}

/// A rebuild's progress, as `GET /rebuild` answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    /// Events read from the log so far.
    pub read: u64,
    /// Of those, the ones this service applies.
    pub applied: u64,
    /// The log's last sequence number when the rebuild started (unknown on a
    /// course bus).
    pub total: Option<i64>,
    /// The sequence number reached.
    pub seq: i64,
    pub elapsed_ms: u64,
    /// Events read per second.
    pub events_per_second: f64,
    pub error: Option<String>,
}

struct Run {
    phase: Phase,
    read: u64,
    applied: u64,
    total: Option<i64>,
    seq: i64,
    started: Option<Instant>,
    finished: Option<Duration>,
    error: Option<String>,
}

/// One service's rebuilds: at most one at a time, run by a task the
/// service owns (a client that goes away does not stop it).
pub struct Rebuilder<H> {
    consumer: Arc<Consumer<H>>,
    bus: BusClient,
    reset: Reset,
    /// Ends a running rebuild when the service stops.
    stop: CancellationToken,
    run: Mutex<Run>,
}

impl<H: Handler> Rebuilder<H> {
    pub fn new(
        consumer: Arc<Consumer<H>>,
        bus: BusClient,
        reset: Reset,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            consumer,
            bus,
            reset,
            stop,
            run: Mutex::new(Run {
                phase: Phase::Idle,
                read: 0,
                applied: 0,
                total: None,
                seq: 0,
                started: None,
                finished: None,
                error: None,
            }),
        })
    }

    pub fn progress(&self) -> Progress {
        let Ok(run) = self.run.lock() else {
            return Progress {
                phase: Phase::Failed,
                read: 0,
                applied: 0,
                total: None,
                seq: 0,
                elapsed_ms: 0,
                events_per_second: 0.0,
                error: Some("progress unavailable".into()),
            };
        };
        let elapsed = run
            .finished
            .or_else(|| run.started.map(|s| s.elapsed()))
            .unwrap_or_default();
        Progress {
            phase: run.phase,
            read: run.read,
            applied: run.applied,
            total: run.total,
            seq: run.seq,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            events_per_second: if elapsed.is_zero() {
                0.0
            } else {
                run.read as f64 / elapsed.as_secs_f64()
            },
            error: run.error.clone(),
        }
    }

    /// Starts a rebuild unless one is running; `false` if one was.
    pub fn start(self: &Arc<Self>) -> bool {
        self.begin(StartAt::First)
    }

    /// Goes on with a rebuild that did not finish, if there is one: called
    /// once as the service starts.
    pub fn resume(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            match inbox::unfinished_rebuild(this.consumer.db()).await {
                Ok(Some(seq)) => {
                    tracing::warn!(
                        service = this.consumer.db().service(),
                        seq,
                        "a rebuild did not finish: going on from where it got to"
                    );
                    this.begin(StartAt::After(seq));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot tell whether a rebuild was cut off; run it again to be sure"
                ),
            }
        });
    }

    fn begin(self: &Arc<Self>, from: StartAt) -> bool {
        {
            let Ok(mut run) = self.run.lock() else {
                return false;
            };
            if run.phase == Phase::Running {
                return false;
            }
            *run = Run {
                phase: Phase::Running,
                read: 0,
                applied: 0,
                total: None,
                seq: 0,
                started: Some(Instant::now()),
                finished: None,
                error: None,
            };
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                () = this.stop.cancelled() => Err("the service stopped".to_owned()),
                result = this.replay(from) => result,
            };
            this.update(|run| {
                run.finished = run.started.map(|s| s.elapsed());
                match result {
                    Ok(()) => run.phase = Phase::Done,
                    Err(why) => {
                        run.phase = Phase::Failed;
                        run.error = Some(why);
                    }
                }
            });
            let progress = this.progress();
            tracing::info!(
                service = this.consumer.db().service(),
                phase = ?progress.phase,
                read = progress.read,
                applied = progress.applied,
                events_per_second = progress.events_per_second.round(),
                "rebuild finished"
            );
        });
        true
    }

    fn update(&self, change: impl FnOnce(&mut Run)) {
        if let Ok(mut run) = self.run.lock() {
            change(&mut run);
        }
    }

    async fn replay(&self, from: StartAt) -> Result<(), String> {
        let total = self.bus.last_seq().await;
        self.update(|run| run.total = total);
        let db = self.consumer.db();
        let mut seq = match from {
            StartAt::First => {
                let Reset { clear, cleared } = self.reset.clone();
                db.write_then(
                    move |tx| {
                        Box::pin(async move {
                            clear(tx).await?;
                            inbox::forget_all(tx).await?;
                            inbox::rebuild_begun(tx).await
                        })
                    },
                    move |_| cleared(),
                )
                .await
                .map_err(|e| format!("could not clear the read model: {e}"))?;
                0
            }
            StartAt::After(seq) => seq,
        };
        tracing::info!(
            service = db.service(),
            ?total,
            after = seq,
            "rebuilding from the log"
        );
        loop {
            let page = self
                .bus
                .events_page(seq, PAGE)
                .await
                .map_err(|e| format!("reading the log after {seq}: {e}"))?;
            let Some(last) = page.iter().filter_map(|e| e.seq).max() else {
                return inbox::rebuild_finished(db)
                    .await
                    .map_err(|e| format!("could not record the end of the rebuild: {e}"));
            };
            let read = page.len() as u64;
            let mut applied = 0;
            for outcome in self.consumer.receive_all(page).await {
                if outcome.map_err(|e| format!("applying events after {seq}: {e}"))?
                    == Outcome::Applied
                {
                    applied += 1;
                }
            }
            seq = last;
            inbox::rebuild_reached(db, seq)
                .await
                .map_err(|e| format!("could not record the rebuild's progress: {e}"))?;
            self.update(|run| {
                run.read += read;
                run.applied += applied;
                run.seq = last;
            });
        }
    }
}

/// The routes of [`rebuild_routes`], described.
#[derive(OpenApi)]
#[openapi(paths(progress, start))]
struct RebuildApi;

/// The description of [`rebuild_routes`].
pub fn rebuild_api() -> utoipa::openapi::OpenApi {
    RebuildApi::openapi()
}

/// `POST /rebuild`: starts rebuilding the read model from the bus's log,
/// in a task the service owns, unless a rebuild is running.
#[utoipa::path(
    post,
    path = "/rebuild",
    operation_id = "startRebuild",
    responses(
        (status = 202, description = "Started: its progress so far.", body = Progress),
        (status = 409, description = "A rebuild is already running.", body = ErrorBody)
    )
)]
async fn start<H: Handler>(
    State(rebuilder): State<Arc<Rebuilder<H>>>,
) -> Result<(StatusCode, axum::Json<Progress>), ApiError> {
    if rebuilder.start() {
        Ok((StatusCode::ACCEPTED, axum::Json(rebuilder.progress())))
    } else {
        Err(ApiError::Conflict("a rebuild is already running".into()))
    }
}

/// `GET /rebuild`: how far the running (or last) rebuild is.
#[utoipa::path(
    get,
    path = "/rebuild",
    operation_id = "rebuildProgress",
    responses((status = 200, description = "The progress.", body = Progress))
)]
async fn progress<H: Handler>(State(rebuilder): State<Arc<Rebuilder<H>>>) -> axum::Json<Progress> {
    axum::Json(rebuilder.progress())
}

/// `POST /rebuild` → 202 with the progress (409 while one runs);
/// `GET /rebuild` → the progress. See [`rebuild_api`].
pub fn rebuild_routes<H: Handler>(rebuilder: Arc<Rebuilder<H>>) -> Router {
    Router::new()
        .route("/rebuild", get(progress::<H>).post(start::<H>))
        .with_state(rebuilder)
}
