//! NATS JetStream as the bus: one stream for the blog's events, subjects per
//! event type, publishing deduplicated by event id, and one durable pull
//! consumer per consuming service (replicas share its work).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_nats::{HeaderMap, connection::State};
use blog_events::Envelope;
use blog_kit::CancellationToken;
use blog_kit::retry::until_ok;
use blog_storage::inbox;
use blog_storage::outbox::Pending;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::client::Rejected;
use crate::nats_config::{NatsAuth, NatsConfig, StreamConfig, show_size};
use crate::{BusError, Consumer, Handler};

/// An event as the stream stores it.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub seq: u64,
    pub payload: Bytes,
}

/// Where JetStream put an appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub seq: u64,
    /// An event with the same id was stored before (at `seq`).
    pub duplicate: bool,
}

/// Deliveries of one event before it is set aside as a dead letter.
pub const MAX_DELIVER: i64 = 5;
/// Waits before each redelivery of an event not acknowledged: JetStream
/// takes the first as the ack wait of every delivery, so a consumer that died
/// holding a message hands it on after 2 s.
const BACKOFF: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a JetStream request or publish acknowledgement may take.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an append waits for a stream that has no leader for the moment.
const LEADERLESS_WAIT: Duration = Duration::from_secs(5);
/// How long one pull of an ordered read lasts; its heartbeat is half of it.
const TAIL_PULL: Duration = Duration::from_secs(2);
/// Messages applied together, at most.
const BATCH: usize = 256;

#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: StreamConfig,
    ready: Arc<OnceCell<stream::Stream>>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("stream", &self.stream.name)
            .finish()
    }
}

fn nats_error(e: impl std::fmt::Display) -> BusError {
    BusError::Nats(e.to_string())
}

/// How long readiness waits for JetStream to answer about the stream.
const PLACEMENT_CHECK: Duration = Duration::from_secs(2);

impl Nats {
    pub async fn connect(config: &NatsConfig) -> Result<Self, BusError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("blog")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2));
        if let NatsAuth::UserPassword { user, password } = &config.auth {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &config.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let servers = config
            .servers
            .split(',')
            .map(|s| s.parse::<async_nats::ServerAddr>().map_err(nats_error))
            .collect::<Result<Vec<_>, _>>()?;
        let client = options.connect(servers).await.map_err(nats_error)?;
        // Every JetStream request and publish acknowledgement gives up after
        // 2 s (not the client's 10 s): while a server is lost or a leader
        // elected, a retry sooner finds the one that answers.
        let js = jetstream::ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            stream: StreamConfig {
                replicas: config.stream.replicas.max(1),
                ..config.stream.clone()
            },
            ready: Arc::new(OnceCell::new()),
        })
    }

    fn subject(&self, event_type: &str) -> String {
        format!("{}.events.{event_type}", self.stream.name)
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.name.clone(),
            subjects: vec![format!("{}.events.>", self.stream.name)],
            storage: stream::StorageType::File,
            num_replicas: self.stream.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            // The stream is the log consumers resume from: keep a year, at
            // most the configured size, events of at most 1 MiB.
            max_age: Duration::from_secs(365 * 24 * 3600),
            max_bytes: i64::try_from(self.stream.max_bytes).unwrap_or(i64::MAX),
            max_message_size: 1024 * 1024,
            // Resends by a relay after a crash are recognised by their
            // Nats-Msg-Id within this window.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// The stream, created (or brought to the configured limits) on first use.
    async fn stream(&self) -> Result<&stream::Stream, BusError> {
        self.ready
            .get_or_try_init(|| async {
                self.fits_the_account().await?;
                match self.js.create_or_update_stream(self.stream_config()).await {
                    Ok(_) => self
                        .js
                        .get_stream(&self.stream.name)
                        .await
                        .map_err(nats_error),
                    Err(e) => Err(self.unplaced(&e.to_string())),
                }
            })
            .await
    }

    /// Refuses, with the figures, a stream larger than the account may
    /// store: JetStream would only say "insufficient resources".
    async fn fits_the_account(&self) -> Result<(), BusError> {
        let Ok(account) = self.js.query_account().await else {
            // Not every server answers this; creating the stream will tell.
            return Ok(());
        };
        let wanted = self
            .stream
            .max_bytes
            .saturating_mul(self.stream.replicas as u64);
        let limits = [
            (
                account.limits.max_storage,
                "the account's file storage",
                wanted,
            ),
            (
                account.limits.storage_max_stream_bytes,
                "the account's largest stream",
                self.stream.max_bytes,
            ),
        ];
        for (limit, what, needed) in limits {
            if let Some(limit) = limit.and_then(|l| u64::try_from(l).ok()).filter(|l| *l > 0)
                && needed > limit
            {
                return Err(self.unplaced(&format!(
                    "{what} is {}, less than the {} it needs",
                    show_size(limit),
                    show_size(needed)
                )));
            }
        }
        Ok(())
    }

    fn unplaced(&self, why: &str) -> BusError {
        BusError::Nats(format!(
            "stream {} ({} replica(s), max {}) cannot be placed: {why}; \
             each server's jetstream max_file_store must exceed the stream's \
             size (--nats-max-bytes) with room to spare",
            self.stream.name,
            self.stream.replicas,
            show_size(self.stream.max_bytes),
        ))
    }

    fn subject_of(&self, event_type: &str, body: &str) -> Result<String, BusError> {
        if blog_events::KNOWN_TYPES.contains(&event_type) {
            return Ok(self.subject(event_type));
        }
        let event_type = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
            .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| BusError::Malformed("an outbox event without a usable type".into()))?;
        Ok(self.subject(&event_type))
    }

    /// Sends one event; the returned future is JetStream's acknowledgement
    /// (stored, or a duplicate of something stored, which counts as success).
    async fn send(
        &self,
        event_id: &str,
        event_type: &str,
        body: &str,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let subject = self.subject_of(event_type, body)?;
        self.stream().await?;
        let mut headers = HeaderMap::new();
        if !event_id.is_empty() {
            headers.insert("Nats-Msg-Id", event_id);
        }
        self.js
            .publish_with_headers(subject, headers, body.to_owned().into())
            .await
            .map_err(nats_error)
    }

    pub async fn publish(&self, event_id: &str, body: &str) -> Result<(), BusError> {
        self.send(event_id, "", body)
            .await?
            .await
            .map_err(nats_error)?;
        Ok(())
    }

    /// Publishes every event before waiting for any acknowledgement: one
    /// round trip for the batch, not one per event.
    pub async fn publish_batch(&self, batch: &[Pending]) -> Result<Vec<Rejected>, BusError> {
        let mut acks = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for pending in batch {
            match self
                .send(&pending.event_id, &pending.event_type, &pending.body)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) if e.is_permanent() => rejected.push(Rejected {
                    seq: pending.seq,
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        for ack in acks {
            ack.await.map_err(nats_error)?;
        }
        Ok(rejected)
    }

    /// Every stored event after `seq`, each with its `seq` field set.
    pub async fn events_after(&self, seq: i64) -> Result<Vec<Value>, BusError> {
        let stored = self
            .read_after(u64::try_from(seq).unwrap_or(0), usize::MAX)
            .await?;
        Ok(stored
            .iter()
            .map(|event| {
                let mut value: Value =
                    serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("seq".into(), Value::from(event.seq));
                }
                value
            })
            .collect())
    }

    /// Up to `limit` stored events after `seq`, oldest first, as stored.
    pub async fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<StreamEvent>, BusError> {
        let consumer = self.ordered_after(seq).await?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(nats_error)?;
        let mut out = Vec::new();
        while pending > 0 && out.len() < limit {
            let Some(message) = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .map_err(|_| BusError::Nats("timed out reading the stream".into()))?
            else {
                break;
            };
            let (event, left) = stored(message)?;
            pending = left;
            out.push(event);
        }
        Ok(out)
    }

    /// An ordered consumer of the stream from the event after `seq`. Its
    /// pulls are short, so heartbeats come every second: a server that goes
    /// away is noticed (and the consumer made again elsewhere) within about
    /// 2 s, as the services' own consumers do.
    async fn ordered_after(
        &self,
        seq: u64,
    ) -> Result<jetstream::consumer::Consumer<pull::OrderedConfig>, BusError> {
        self.stream()
            .await?
            .create_consumer(pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
                max_expires: TAIL_PULL,
                ..Default::default()
            })
            .await
            .map_err(nats_error)
    }

    /// The stored event `seq`, if the stream still holds it.
    pub async fn read_one(&self, seq: u64) -> Result<Option<Bytes>, BusError> {
        let stream = self.stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(nats_error(e)),
        }
    }

    /// The sequence number of the newest stored event (0: none).
    pub async fn last_seq(&self) -> Result<u64, BusError> {
        let mut stream = self.stream().await?.clone();
        let info = stream.info().await.map_err(nats_error)?;
        Ok(info.state.last_sequence)
    }

    /// Every event stored after `seq`, as it is stored, until the stream
    /// or the connection fails.
    pub async fn tail(
        &self,
        seq: u64,
    ) -> Result<BoxStream<'static, Result<StreamEvent, BusError>>, BusError> {
        let messages = self
            .ordered_after(seq)
            .await?
            .messages()
            .await
            .map_err(nats_error)?;
        Ok(messages
            .map(|message| stored(message).map(|(event, _)| event))
            .boxed())
    }

    /// Stores `events` (each with its emitter's id, if any), in order, and
    /// returns where each is: a resent id keeps its first number. Every
    /// event is checked before any is sent, so a bad one stores nothing.
    pub async fn append(
        &self,
        events: &[(Option<String>, String)],
    ) -> Result<Vec<Placed>, BusError> {
        for (_, body) in events {
            self.subject_of("", body)?;
        }
        let mut out = Vec::with_capacity(events.len());
        let mut acks = Vec::with_capacity(events.len());
        for (id, body) in events {
            acks.push(self.send(id.as_deref().unwrap_or(""), "", body).await?);
        }
        // While the stream elects a leader nobody answers, and nothing was
        // stored: send those again for a few seconds rather than refuse a
        // course service that will not retry. Any other failure may have
        // stored the event, and an event without an id would be stored twice.
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        for ((id, body), ack) in events.iter().zip(acks) {
            let mut ack = ack.await;
            while let Err(e) = &ack
                && e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
                ack = self
                    .send(id.as_deref().unwrap_or(""), "", body)
                    .await?
                    .await;
            }
            let ack = ack.map_err(nats_error)?;
            out.push(Placed {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            });
        }
        Ok(out)
    }

    /// Connected, and the stream is placed: a service is not ready while
    /// no event it writes could cross the bus.
    pub async fn reachable(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => {}
            other => return Err(BusError::Nats(format!("connection {other:?}"))),
        }
        match tokio::time::timeout(PLACEMENT_CHECK, self.stream()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BusError::Nats(format!(
                "JetStream did not answer about stream {} within {PLACEMENT_CHECK:?}",
                self.stream.name
            ))),
        }
    }

    /// Sends what is buffered (acks, mostly), for at most a few seconds: a
    /// stop must not wait on a server that is gone.
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
    }

    /// Applies this service's events from its durable consumer until
    /// `shutdown`, resuming from the consumer's ack floor after any failure.
    pub async fn consume<H: Handler>(
        &self,
        durable: &str,
        consumer: Arc<Consumer<H>>,
        shutdown: CancellationToken,
    ) {
        let consumed = until_ok(&shutdown, "JetStream consumer interrupted", || {
            self.consume_once(durable, &consumer, &shutdown)
        })
        .await;
        if consumed.is_some() {
            self.flush().await;
        }
    }

    async fn consume_once<H: Handler>(
        &self,
        durable: &str,
        consumer: &Arc<Consumer<H>>,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let stream = self.stream().await?;
        let pull = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    description: Some(format!("the blog's {durable} service")),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: MAX_DELIVER,
                    backoff: BACKOFF.to_vec(),
                    max_ack_pending: 1000,
                    filter_subject: format!("{}.events.>", self.stream.name),
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_error)?;
        // Short pulls with a 1 s heartbeat: when the server holding the
        // pull goes away (a NATS server killed, the consumer's leader moved),
        // the missing heartbeats tell within about 2 s, not a pull's lifetime.
        let mut messages = pull
            .stream()
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(1))
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .map_err(nats_error)?;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(message) = next else {
                return Err(BusError::Nats("message stream ended".into()));
            };
            // Whatever else has already arrived joins this batch: applied in
            // shared transactions, acknowledged together.
            let mut batch = vec![message.map_err(nats_error)?];
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(message)) => batch.push(message.map_err(nats_error)?),
                    Some(None) | None => break,
                }
            }
            self.handle(consumer, batch).await;
        }
    }

    async fn handle<H: Handler>(
        &self,
        consumer: &Arc<Consumer<H>>,
        batch: Vec<jetstream::Message>,
    ) {
        let mut parsed = Vec::with_capacity(batch.len());
        let mut envelopes = Vec::with_capacity(batch.len());
        for message in batch {
            let Ok(info) = message.info() else {
                tracing::warn!("a JetStream message without metadata; ignored");
                continue;
            };
            let (seq, delivered) = (
                i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
                info.delivered,
            );
            let service = consumer.db().service();
            if delivered > 1 {
                metrics::counter!("blog_events_redelivered_total", "service" => service, "type" => subject_type(&message.subject))
                    .increment(1);
            }
            // How many wait behind this one for this service's consumer.
            metrics::gauge!("blog_nats_consumer_pending", "service" => service)
                .set(info.pending as f64);
            match Envelope::from_slice(&message.payload) {
                Ok(mut envelope) => {
                    envelope.seq = Some(seq);
                    envelopes.push(envelope);
                    parsed.push((message, seq, delivered));
                }
                Err(e) => {
                    // It will never parse: set it aside and let the rest flow.
                    dead_letter(consumer, &message, seq, &format!("malformed: {e}")).await;
                }
            }
        }
        let outcomes = consumer.receive_all(envelopes).await;
        for ((message, seq, delivered), outcome) in parsed.into_iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    // Acked only after the commit. A lost ack means a
                    // redelivery, which is a no-op; the ack is flushed on exit.
                    if let Err(e) = message.ack().await {
                        tracing::warn!(error = %e, seq, "ack not sent; the redelivery will be a no-op");
                    }
                }
                Err(e) if delivered >= MAX_DELIVER => {
                    dead_letter(
                        consumer,
                        &message,
                        seq,
                        &format!("failed {delivered} times: {e}"),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, seq, delivered, "handling failed; JetStream will redeliver");
                    let delay = BACKOFF[usize::try_from(delivered - 1)
                        .unwrap_or(0)
                        .min(BACKOFF.len() - 1)];
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
    }
}

/// A message of an ordered read as the event stored, and how many are
/// stored after it.
fn stored(
    message: Result<jetstream::Message, impl std::fmt::Display>,
) -> Result<(StreamEvent, u64), BusError> {
    let message = message.map_err(nats_error)?;
    let info = message.info().map_err(nats_error)?;
    let event = StreamEvent {
        seq: info.stream_sequence,
        payload: message.payload.clone(),
    };
    Ok((event, info.pending))
}

/// The event type a subject (`<stream>.<Type>`) names, as a bounded label.
fn subject_type(subject: &str) -> &'static str {
    blog_events::type_label(subject.rsplit('.').next().unwrap_or_default())
}

/// Sets aside an event that can never be handled and terminates it, so the
/// events behind it go on.
async fn dead_letter<H: Handler>(
    consumer: &Consumer<H>,
    message: &jetstream::Message,
    seq: i64,
    reason: &str,
) {
    let subject = message.subject.as_str();
    let body = String::from_utf8_lossy(&message.payload);
    tracing::error!(seq, subject, reason, "dead letter");
    match inbox::dead_letter(consumer.db(), seq, subject, &body, reason).await {
        Ok(()) => {
            metrics::counter!("blog_events_dead_lettered_total", "service" => consumer.db().service(), "type" => subject_type(subject))
                .increment(1);
            let _ = message.double_ack_with(AckKind::Term).await;
        }
        Err(e) => {
            // Not recorded: leave it to be redelivered rather than lose it.
            tracing::warn!(error = %e, seq, "could not record a dead letter");
            let _ = message.ack_with(AckKind::Nak(Some(BACKOFF[0]))).await;
        }
    }
}
