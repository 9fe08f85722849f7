use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue};
use axum::routing::post;
use blog_events::{Consumable, Envelope, Event};
use blog_kit::error::JsonBody;
use blog_kit::http::{BATCH_BODY_LIMIT, CONSUMES_HEADER};
use blog_kit::retry::until_ok;
use blog_kit::{ApiError, CancellationToken, ErrorBody, FieldError};
use blog_storage::{Db, StorageError, Tx, inbox};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

use crate::BusClient;
use crate::client::parse_from_bus;

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// What it applies: one event type's payload (the consumer picks those
    /// out), or [`Event`] for several (listed in [`Handler::CONSUMES`]).
    type Event: Consumable + Send + Sync;

    /// The event types this service applies. Others are answered at once
    /// and never written down; our bus, told this list with every answer
    /// (the `blog-consumes` header), stops sending them. A course bus sends
    /// every event to everyone.
    const CONSUMES: &'static [&'static str] = <Self::Event as Consumable>::TYPES;

    /// Applies `event` inside `tx` (events it emits go to the outbox through
    /// `tx`). `seq` is the event's place in the bus's log, when the bus gave
    /// one. Must tolerate any order: the event may arrive before the ones it
    /// follows.
    fn apply(
        &self,
        tx: &mut Tx,
        event: &Self::Event,
        seq: Option<i64>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Called right after the transaction that applied `event` committed,
    /// in the writer task (so a cancelled delivery cannot skip it).
    fn applied(&self, _event: &Self::Event) {}
}

/// What of `event` a handler applies, if anything.
fn picked<H: Handler>(event: Option<&Event>) -> Option<&H::Event> {
    event
        .filter(|event| H::CONSUMES.contains(&event.type_name()))
        .and_then(H::Event::pick)
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
            for envelope in &envelopes {
                observe(self.db.service(), Outcome::Ignored, envelope);
            }
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
                            let event = picked::<H>(envelope.event.as_ref());
                            let outcome = match (event, envelope.dedup_key()) {
                                (Some(event), Some(key)) => {
                                    if new.remove(&key) {
                                        // What it emits in turn follows the same request.
                                        tx.caused_by(envelope.correlation_id.clone());
                                        let span = tracing::info_span!(
                                            "apply",
                                            service = this.db.service(),
                                            event_id = envelope.id.as_deref().unwrap_or(""),
                                            r#type = envelope.type_name.as_str(),
                                            seq = envelope.seq,
                                            correlation_id =
                                                envelope.correlation_id.as_deref().unwrap_or(""),
                                        );
                                        this.handler
                                            .apply(tx, event, envelope.seq)
                                            .instrument(span)
                                            .await?;
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
                    let service = after.db.service();
                    for (outcome, envelope) in outcomes.iter().zip(envelopes) {
                        observe(service, *outcome, envelope);
                        if *outcome == Outcome::Applied
                            && let Some(event) = picked::<H>(envelope.event.as_ref())
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
        envelope.dedup_key().is_some() && picked::<H>(envelope.event.as_ref()).is_some()
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The event type as a bounded label: the known ones by name, others as one.
pub(crate) fn type_label(envelope: &Envelope) -> &'static str {
    envelope.event.as_ref().map_or("unknown", Event::type_name)
}

/// Counts and logs what became of an event once it is committed, and for
/// an applied event of ours, how long it took from its creation.
fn observe(service: &'static str, outcome: Outcome, envelope: &Envelope) {
    let kind = type_label(envelope);
    metrics::counter!("blog_events_consumed_total", "service" => service, "type" => kind, "outcome" => outcome.label())
        .increment(1);
    if outcome == Outcome::Applied
        && let Some(age) = envelope
            .created_at()
            .and_then(|created| created.elapsed().ok())
    {
        metrics::histogram!("blog_event_pipeline_seconds", "service" => service, "type" => kind)
            .record(age.as_secs_f64());
    }
    tracing::debug!(
        service,
        event_id = envelope.id.as_deref().unwrap_or(""),
        r#type = kind,
        seq = envelope.seq,
        correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
        outcome = outcome.label(),
        "event handled"
    );
}

fn refuse(e: blog_events::EventError) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        message: e.message,
        field: e.field,
    }])
}

/// `POST /events`'s answer: `{}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Received {}

/// `POST /events/batch`'s answer: one result per event, in array order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResults {
    pub results: Vec<BatchResult>,
}

/// What became of one event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    #[schema(schema_with = result_status)]
    pub status: u16,
    /// Why it was refused or not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

fn result_status() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Integer)
        .enum_values(Some([200, 400, 503]))
        .description(Some(
            "200: applied and recorded, already applied, or of a type this service does not \
             consume; 400: malformed, never applicable; 503: not applied (storage failed), \
             worth retrying.",
        ))
        .build()
}

impl BatchResult {
    fn new(status: u16, error: Option<String>) -> Self {
        Self { status, error }
    }
}

/// An event of this service set aside.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Its place in the bus's log, or its outbox row (`"subject":"outbox"`).
    pub seq: i64,
    /// Where it came from: the NATS subject, or `outbox`.
    pub subject: String,
    /// Why it was set aside.
    pub reason: String,
}

/// The routes of [`events_route`], described.
#[derive(OpenApi)]
#[openapi(paths(receive, receive_batch, dead_letters, replay_dead_letters))]
struct EventsApi;

/// The description of [`events_route`].
pub fn events_api() -> utoipa::openapi::OpenApi {
    EventsApi::openapi()
}

/// `GET /dead-letters` (ours): this service's events set aside as never
/// handleable: events it consumes that failed every delivery (NATS), and
/// events of its own the bus refused for good (`"subject":"outbox"`).
#[utoipa::path(
    get,
    path = "/dead-letters",
    operation_id = "listDeadLetters",
    responses((
        status = 200,
        description = "This service's events set aside, oldest first.",
        body = Vec<DeadLetter>
    ))
)]
async fn dead_letters(State(db): State<Db>) -> Result<axum::Json<Vec<DeadLetter>>, ApiError> {
    let letters = inbox::dead_letters(&db).await?;
    Ok(axum::Json(
        letters
            .into_iter()
            .map(|(seq, subject, reason)| DeadLetter {
                seq,
                subject,
                reason,
            })
            .collect(),
    ))
}

fn dead_letters_route(db: Db) -> Router {
    Router::new()
        .route("/dead-letters", axum::routing::get(dead_letters))
        .with_state(db)
}

/// `POST /dead-letters/replay`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LettersReplayed {
    /// Letters sent again: applied, or back in the outbox.
    pub replayed: u64,
    /// Letters that failed again; they stay, with the new reason.
    pub failed: u64,
}

/// `POST /dead-letters/replay` (ours): sends this service's dead letters
/// again once what set them aside is fixed. An event it consumes is applied
/// as a delivery would apply it (once: it may have been meanwhile); an
/// event of its own goes back to the outbox, in the transaction that
/// forgets the letter, for the relay to publish.
#[utoipa::path(
    post,
    path = "/dead-letters/replay",
    operation_id = "replayDeadLetters",
    responses(
        (status = 200, description = "What was sent again, and what failed again.", body = LettersReplayed),
        (status = 503, description = "Storage failed; the letters not yet sent stay.", body = ErrorBody)
    )
)]
async fn replay_dead_letters<H: Handler>(
    State(consumer): State<Arc<Consumer<H>>>,
) -> Result<axum::Json<LettersReplayed>, ApiError> {
    let db = &consumer.db;
    let mut answer = LettersReplayed {
        replayed: 0,
        failed: 0,
    };
    // Each letter is sent again and forgotten on its own: a request cut off
    // between two leaves the rest as they were.
    for letter in inbox::letters(db).await? {
        let sent = if letter.subject == inbox::OUTBOX_SUBJECT {
            requeue(db, &letter).await
        } else {
            reapply(&consumer, &letter).await
        };
        match sent {
            Ok(()) => answer.replayed += 1,
            Err(reason) => {
                tracing::warn!(letter = letter.id, %reason, "a dead letter failed again");
                inbox::letter_failed_again(db, letter.id, &reason).await?;
                answer.failed += 1;
            }
        }
    }
    Ok(axum::Json(answer))
}

/// The event a dead letter holds, or why it holds none.
fn envelope_of(letter: &inbox::Letter) -> Result<Envelope, String> {
    let value: Value = serde_json::from_str(&letter.body).map_err(|e| format!("not JSON: {e}"))?;
    Envelope::from_value(value).map_err(|e| e.message)
}

/// An event of this service's own back into its outbox.
async fn requeue(db: &Db, letter: &inbox::Letter) -> Result<(), String> {
    let envelope = envelope_of(letter)?;
    let id = letter.id;
    db.write(move |tx| {
        Box::pin(async move {
            blog_storage::outbox::push(tx, &envelope).await?;
            inbox::forget_letter(tx, id).await
        })
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// An event this service consumes, applied again at its place in the log.
async fn reapply<H: Handler>(
    consumer: &Arc<Consumer<H>>,
    letter: &inbox::Letter,
) -> Result<(), String> {
    let mut envelope = envelope_of(letter)?;
    envelope.seq = Some(letter.bus_seq);
    for outcome in consumer.receive_all(vec![envelope]).await {
        outcome.map_err(|e| e.to_string())?;
    }
    let id = letter.id;
    consumer
        .db
        .write(move |tx| Box::pin(inbox::forget_letter(tx, id)))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `POST /events`: where the HTTP bus delivers. Answers once the event is
/// applied (or known, or of a type this service ignores).
#[utoipa::path(
    post,
    path = "/events",
    operation_id = "receiveEvent",
    request_body(content = blog_events::WireEvent, content_type = "application/json"),
    responses(
        (
            status = 200,
            description = "Applied and recorded, already applied, or of a type this service \
                           does not consume.",
            body = Received,
            headers((
                "blog-consumes" = String,
                description = "The event types this service applies, comma-separated (empty: \
                               none); our bus then sends it only those."
            ))
        ),
        (status = 400, description = "Malformed: never applicable.", body = ErrorBody),
        (status = 503, description = "Not applied (storage failed): worth retrying.", body = ErrorBody)
    )
)]
async fn receive<H: Handler>(
    State(consumer): State<Arc<Consumer<H>>>,
    JsonBody(body): JsonBody,
) -> Result<axum::Json<Received>, ApiError> {
    let envelope = Envelope::from_value(body).map_err(refuse)?;
    let type_name = envelope.type_name.clone();
    let outcome = consumer
        .receive(envelope)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::debug!(r#type = %type_name, ?outcome, "event received");
    Ok(axum::Json(Received {}))
}

/// `POST /events/batch` (ours): an array of events, applied together, with
/// one result per event. If applying them together fails, each is tried
/// alone, so each result is its own.
#[utoipa::path(
    post,
    path = "/events/batch",
    operation_id = "receiveEventBatch",
    request_body(content = Vec<blog_events::WireEvent>, content_type = "application/json"),
    responses(
        (
            status = 200,
            description = "One result per event, in array order.",
            body = BatchResults,
            headers((
                "blog-consumes" = String,
                description = "The event types this service applies, comma-separated (empty: \
                               none); our bus then sends it only those."
            ))
        ),
        (status = 400, description = "The body is not a JSON array.", body = ErrorBody)
    )
)]
async fn receive_batch<H: Handler>(
    State(consumer): State<Arc<Consumer<H>>>,
    JsonBody(body): JsonBody,
) -> Result<axum::Json<BatchResults>, ApiError> {
    let Value::Array(events) = body else {
        return Err(ApiError::BadRequest(
            "a batch must be a JSON array of events".into(),
        ));
    };
    // Every place is filled below: each event is refused or applied.
    let mut results: Vec<BatchResult> = events
        .iter()
        .map(|_| BatchResult::new(503, Some("not applied".into())))
        .collect();
    let mut valid = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        match Envelope::from_value(event) {
            Ok(envelope) => valid.push((i, envelope)),
            Err(e) => results[i] = BatchResult::new(400, Some(e.message)),
        }
    }
    let (places, envelopes): (Vec<usize>, Vec<Envelope>) = valid.into_iter().unzip();
    for (i, outcome) in places
        .into_iter()
        .zip(consumer.receive_all(envelopes).await)
    {
        results[i] = match outcome {
            Ok(_) => BatchResult::new(200, None),
            Err(e) => BatchResult::new(503, Some(e.to_string())),
        };
    }
    Ok(axum::Json(BatchResults { results }))
}

/// `POST /events`, `POST /events/batch` (ours), `GET /dead-letters` and
/// `POST /dead-letters/replay` (ours): see [`events_api`].
pub fn events_route<H: Handler>(consumer: Arc<Consumer<H>>) -> Router {
    let router = Router::new()
        .route("/events", post(receive::<H>))
        .route(
            "/events/batch",
            post(receive_batch::<H>).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/dead-letters/replay", post(replay_dead_letters::<H>))
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
    type Event = Event;
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
