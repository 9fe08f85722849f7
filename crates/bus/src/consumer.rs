use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue};
use axum::routing::post;
use blog_events::{Envelope, Event};
use blog_kit::error::JsonBody;
use blog_kit::http::{BATCH_BODY_LIMIT, CONSUMES_HEADER};
use blog_kit::retry::until_ok;
use blog_kit::{ApiError, CancellationToken, FieldError};
use blog_storage::{Db, StorageError, Tx, inbox};
use serde_json::{Value, json};

use crate::BusClient;
use crate::client::parse_from_bus;

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` inside `tx` (events it emits go to the outbox through
    /// `tx`). `seq` is the event's place in the bus's log, when the bus gave
    /// one. Must tolerate any order: the event may arrive before the ones it
    /// follows.
    fn apply(
        &self,
        tx: &mut Tx,
        event: &Event,
        seq: Option<i64>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The event types this service applies. Others are answered at once
    /// and never written down; our bus, told this list with every answer
    /// (the `blog-consumes` header), stops sending them. A course bus sends
    /// every event to everyone.
    const CONSUMES: &'static [&'static str];

    fn consumes(&self, event: &Event) -> bool {
        Self::CONSUMES.contains(&event.type_name())
    }

    /// Called right after the transaction that applied `event` committed,
    /// in the writer task (so a cancelled delivery cannot skip it).
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

    /// Applies `envelope` once. The work runs in the database's writer, so
    /// it completes (and the handler hears of the commit) even when the
    /// delivery that brought it is cut off.
    pub async fn receive(self: &Arc<Self>, envelope: Envelope) -> Result<Outcome, StorageError> {
        let outcomes = self.apply(vec![envelope]).await?;
        Ok(outcomes.into_iter().next().unwrap_or(Outcome::Ignored))
    }

    /// Applies many events in one job (one transaction, the cursor moved
    /// once). If that fails, each is tried alone, so one event that cannot
    /// be applied does not hold back the others; each result is its own.
    pub async fn receive_all(
        self: &Arc<Self>,
        mut envelopes: Vec<Envelope>,
    ) -> Vec<Result<Outcome, StorageError>> {
        if envelopes.len() == 1
            && let Some(envelope) = envelopes.pop()
        {
            return vec![self.receive(envelope).await];
        }
        match self.apply(envelopes.clone()).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "a batch failed; applying its events one by one");
                futures_util::future::join_all(envelopes.into_iter().map(|e| self.receive(e))).await
            }
        }
    }

    /// Applies `envelopes` in one job: records which are new in one
    /// statement, applies those (the first of a repeated key only), moves
    /// the cursor, and tells the handler after the commit. Events this
    /// service does not apply cost no write at all.
    async fn apply(
        self: &Arc<Self>,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Outcome>, StorageError> {
        if !envelopes.iter().any(|e| self.wants(e)) {
            return Ok(vec![Outcome::Ignored; envelopes.len()]);
        }
        let (this, after) = (self.clone(), self.clone());
        let written = self
            .db
            .write_then(
                move |tx| {
                    Box::pin(async move {
                        let keys: Vec<String> = envelopes
                            .iter()
                            .filter(|e| this.wants(e))
                            .filter_map(Envelope::dedup_key)
                            .collect();
                        let mut new = inbox::mark_all_processed(tx, &keys).await?;
                        let mut outcomes = Vec::with_capacity(envelopes.len());
                        for envelope in &envelopes {
                            let outcome = match (&envelope.event, envelope.dedup_key()) {
                                (Some(event), Some(key)) if this.handler.consumes(event) => {
                                    if new.remove(&key) {
                                        this.handler.apply(tx, event, envelope.seq).await?;
                                        Outcome::Applied
                                    } else {
                                        Outcome::Duplicate
                                    }
                                }
                                _ => Outcome::Ignored,
                            };
                            outcomes.push(outcome);
                        }
                        if let Some(seq) = envelopes.iter().filter_map(|e| e.seq).max() {
                            inbox::advance(tx, seq).await?;
                        }
                        Ok((outcomes, envelopes))
                    })
                },
                move |(outcomes, envelopes): &(Vec<Outcome>, Vec<Envelope>)| {
                    for (outcome, envelope) in outcomes.iter().zip(envelopes) {
                        if *outcome == Outcome::Applied
                            && let Some(event) = &envelope.event
                        {
                            after.handler.applied(event);
                        }
                    }
                },
            )
            .await?;
        Ok(written.value.0)
    }

    /// Whether `envelope` is an event this service applies (anything else
    /// is answered at once, with no write).
    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.dedup_key().is_some()
            && envelope
                .event
                .as_ref()
                .is_some_and(|event| self.handler.consumes(event))
    }
}

fn refuse(e: blog_events::EventError) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        message: e.message,
        field: e.field,
    }])
}

/// `GET /dead-letters` (ours): this service's events set aside as never
/// handleable: events it consumes that failed every delivery (NATS), and
/// events of its own the bus refused for good (`"subject":"outbox"`).
fn dead_letters_route(db: Db) -> Router {
    async fn list(State(db): State<Db>) -> Result<axum::Json<Value>, ApiError> {
        let letters = inbox::dead_letters(&db).await?;
        Ok(axum::Json(Value::Array(
            letters
                .into_iter()
                .map(|(seq, subject, reason)| {
                    json!({"seq": seq, "subject": subject, "reason": reason})
                })
                .collect(),
        )))
    }
    Router::new()
        .route("/dead-letters", axum::routing::get(list))
        .with_state(db)
}

/// `POST /events`: where the HTTP bus delivers. Answers 200 `{}` once the
/// event is applied (or known, or of a type this service ignores).
/// `POST /events/batch` (ours): an array of events, applied together, with
/// one result per event. Also `GET /dead-letters`.
pub fn events_route<H: Handler>(consumer: Arc<Consumer<H>>) -> Router {
    async fn receive<H: Handler>(
        State(consumer): State<Arc<Consumer<H>>>,
        JsonBody(body): JsonBody,
    ) -> Result<axum::Json<Value>, ApiError> {
        let envelope = Envelope::from_value(body).map_err(refuse)?;
        let type_name = envelope.type_name.clone();
        let outcome = consumer
            .receive(envelope)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        tracing::debug!(r#type = %type_name, ?outcome, "event received");
        Ok(axum::Json(json!({})))
    }
    async fn receive_batch<H: Handler>(
        State(consumer): State<Arc<Consumer<H>>>,
        JsonBody(body): JsonBody,
    ) -> Result<axum::Json<Value>, ApiError> {
        let Value::Array(events) = body else {
            return Err(ApiError::BadRequest(
                "a batch must be a JSON array of events".into(),
            ));
        };
        let mut results = vec![Value::Null; events.len()];
        let mut valid = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            match Envelope::from_value(event) {
                Ok(envelope) => valid.push((i, envelope)),
                Err(e) => results[i] = json!({"status": 400, "error": e.message}),
            }
        }
        let (places, envelopes): (Vec<usize>, Vec<Envelope>) = valid.into_iter().unzip();
        for (i, outcome) in places
            .into_iter()
            .zip(consumer.receive_all(envelopes).await)
        {
            results[i] = match outcome {
                Ok(_) => json!({"status": 200}),
                Err(e) => json!({"status": 503, "error": e.to_string()}),
            };
        }
        Ok(axum::Json(json!({ "results": results })))
    }
    let router = Router::new()
        .route("/events", post(receive::<H>))
        .route(
            "/events/batch",
            post(receive_batch::<H>).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .with_state(consumer.clone())
        .merge(dead_letters_route(consumer.db.clone()));
    with_consumes(router, &H::CONSUMES.join(","))
}

/// Tells our bus, on every answer, which event types this service applies.
fn with_consumes(router: Router, types: &str) -> Router {
    let value = HeaderValue::from_str(types).unwrap_or_else(|_| HeaderValue::from_static(""));
    router.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let value = value.clone();
            async move {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(CONSUMES_HEADER), value);
                response
            }
        },
    ))
}

/// The handler of a service that consumes nothing (posts): its `POST
/// /events` still checks that what it was sent is an event, answers at once
/// without a write, and tells our bus to send it none.
pub struct ConsumesNothing;

impl Handler for ConsumesNothing {
    const CONSUMES: &'static [&'static str] = &[];

    async fn apply(&self, _: &mut Tx, _: &Event, _: Option<i64>) -> Result<(), StorageError> {
        Ok(())
    }
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
    consumer: &Arc<Consumer<H>>,
    bus: &BusClient,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let after = inbox::last_seq(&consumer.db).await?;
    let envelopes: Vec<Envelope> = bus
        .events_after(after)
        .await?
        .into_iter()
        .filter_map(parse_from_bus)
        .filter(|envelope| envelope.seq.is_none_or(|seq| seq > after))
        .collect();
    let mut applied = 0;
    for outcome in consumer.receive_all(envelopes).await {
        if outcome? == Outcome::Applied {
            applied += 1;
        }
    }
    Ok(applied)
}
