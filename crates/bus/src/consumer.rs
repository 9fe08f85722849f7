use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use blog_events::{Envelope, Event};
use blog_kit::error::JsonBody;
use blog_kit::retry::until_ok;
use blog_kit::{ApiError, CancellationToken, FieldError};
use blog_storage::{Db, StorageError, Tx, inbox};
use serde_json::{Value, json};

use crate::BusClient;
use crate::client::parse_from_bus;

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` inside `tx`. Returns whether it wrote to the outbox.
    /// Must tolerate any order: the event may arrive before the ones it
    /// follows.
    fn apply(
        &self,
        tx: &mut Tx,
        event: &Event,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Called after the transaction that applied `event` committed.
    fn applied(&self, _event: &Event) {}
}

/// What became of an incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Seen before: nothing changed.
    Duplicate,
    /// A type this service does not consume.
    Ignored,
}

/// Applies events exactly once: the handler's changes, the record of the
/// event and the catch-up cursor commit together.
pub struct Consumer<H> {
    db: Db,
    handler: H,
}

impl<H: Handler> Consumer<H> {
    pub fn new(db: Db, handler: H) -> Self {
        Self { db, handler }
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn receive(&self, envelope: &Envelope) -> Result<Outcome, StorageError> {
        let (Some(event), Some(key)) = (&envelope.event, envelope.dedup_key()) else {
            return Ok(Outcome::Ignored);
        };
        let mut tx = self.db.begin().await?;
        if !inbox::mark_processed(&mut tx, &key).await? {
            if let Some(seq) = envelope.seq {
                inbox::advance(&mut tx, seq).await?;
            }
            self.db.commit(tx, false).await?;
            return Ok(Outcome::Duplicate);
        }
        let wrote_outbox = self.handler.apply(&mut tx, event).await?;
        if let Some(seq) = envelope.seq {
            inbox::advance(&mut tx, seq).await?;
        }
        self.db.commit(tx, wrote_outbox).await?;
        self.handler.applied(event);
        Ok(Outcome::Applied)
    }
}

fn refuse(e: blog_events::EventError) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        message: e.message,
        field: e.field,
    }])
}

/// `GET /dead-letters` (ours): events set aside as never handleable.
async fn dead_letters<H: Handler>(
    State(consumer): State<Arc<Consumer<H>>>,
) -> Result<axum::Json<Value>, ApiError> {
    let letters = inbox::dead_letters(&consumer.db).await?;
    Ok(axum::Json(Value::Array(
        letters
            .into_iter()
            .map(|(seq, subject, reason)| json!({"seq": seq, "subject": subject, "reason": reason}))
            .collect(),
    )))
}

/// `POST /events`: where the HTTP bus delivers. Answers 200 `{}` once the
/// event is applied (or known, or of a type this service ignores). Also
/// `GET /dead-letters`.
pub fn events_route<H: Handler>(consumer: Arc<Consumer<H>>) -> Router {
    async fn receive<H: Handler>(
        State(consumer): State<Arc<Consumer<H>>>,
        JsonBody(body): JsonBody,
    ) -> Result<axum::Json<Value>, ApiError> {
        let envelope = Envelope::from_value(body).map_err(refuse)?;
        let outcome = consumer
            .receive(&envelope)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        tracing::debug!(r#type = %envelope.type_name, ?outcome, "event received");
        Ok(axum::Json(json!({})))
    }
    Router::new()
        .route("/events", post(receive::<H>))
        .route("/dead-letters", axum::routing::get(dead_letters::<H>))
        .with_state(consumer)
}

/// `POST /events` for a service that consumes nothing (posts): still checks
/// that what it was sent is an event.
pub fn ignore_events_route() -> Router {
    async fn receive(JsonBody(body): JsonBody) -> Result<axum::Json<Value>, ApiError> {
        Envelope::from_value(body).map_err(refuse)?;
        Ok(axum::Json(json!({})))
    }
    Router::new().route("/events", post(receive))
}

/// Runs this service's consumption until `shutdown`. On the HTTP bus, events
/// are pushed to `POST /events`, and this only catches up once at start; on
/// NATS it pulls from the service's durable consumer, named `durable`.
pub async fn consume<H: Handler>(
    consumer: Arc<Consumer<H>>,
    bus: BusClient,
    durable: &'static str,
    shutdown: CancellationToken,
) {
    match bus.nats() {
        Some(nats) => nats.consume(durable, consumer, shutdown).await,
        None => catch_up(consumer, bus, shutdown).await,
    }
}

/// Applies every event the bus stored after this service's cursor, retrying
/// until the bus answers once (or `shutdown`). This is how a service that was
/// down, or whose bus forgot it, resumes; with the course bus (which ignores
/// `after`) it replays everything, and deduplication makes that harmless.
pub async fn catch_up<H: Handler>(
    consumer: Arc<Consumer<H>>,
    bus: BusClient,
    shutdown: CancellationToken,
) {
    let caught_up = until_ok(&shutdown, "catch-up failed", || {
        catch_up_once(&consumer, &bus)
    })
    .await;
    if let Some(applied) = caught_up {
        tracing::info!(applied, "caught up with the bus");
    }
}

async fn catch_up_once<H: Handler>(
    consumer: &Consumer<H>,
    bus: &BusClient,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let after = inbox::last_seq(&consumer.db).await?;
    let mut applied = 0;
    for value in bus.events_after(after).await? {
        let Some(envelope) = parse_from_bus(value) else {
            continue;
        };
        if envelope.seq.is_some_and(|seq| seq <= after) {
            continue;
        }
        if consumer.receive(&envelope).await? == Outcome::Applied {
            applied += 1;
        }
    }
    Ok(applied)
}
