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
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::client::Rejected;
use crate::{BusError, Consumer, Handler};

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
/// Messages applied together, at most.
const BATCH: usize = 256;

#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    replicas: usize,
    ready: Arc<OnceCell<stream::Stream>>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("stream", &self.stream)
            .finish()
    }
}

fn nats_error(e: impl std::fmt::Display) -> BusError {
    BusError::Nats(e.to_string())
}

impl Nats {
    pub async fn connect(url: &str, stream: &str, replicas: usize) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("blog")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .map_err(nats_error)?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            stream: stream.to_owned(),
            replicas: replicas.max(1),
            ready: Arc::new(OnceCell::new()),
        })
    }

    fn subject(&self, event_type: &str) -> String {
        format!("{}.events.{event_type}", self.stream)
    }

    /// The stream, created with explicit limits on first use.
    async fn stream(&self) -> Result<&stream::Stream, BusError> {
        self.ready
            .get_or_try_init(|| async {
                self.js
                    .get_or_create_stream(stream::Config {
                        name: self.stream.clone(),
                        subjects: vec![format!("{}.events.>", self.stream)],
                        storage: stream::StorageType::File,
                        num_replicas: self.replicas,
                        retention: stream::RetentionPolicy::Limits,
                        discard: stream::DiscardPolicy::Old,
                        // The stream is the log consumers resume from: keep
                        // a year, at most 10 GiB, events of at most 1 MiB.
                        max_age: Duration::from_secs(365 * 24 * 3600),
                        max_bytes: 10 * 1024 * 1024 * 1024,
                        max_message_size: 1024 * 1024,
                        // Resends by a relay after a crash are recognised by
                        // their Nats-Msg-Id within this window.
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .map_err(nats_error)
            })
            .await
    }

    fn subject_of(&self, body: &str) -> Result<String, BusError> {
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
        body: &str,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let subject = self.subject_of(body)?;
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
        self.send(event_id, body).await?.await.map_err(nats_error)?;
        Ok(())
    }

    /// Publishes every event before waiting for any acknowledgement: one
    /// round trip for the batch, not one per event.
    pub async fn publish_batch(&self, batch: &[Pending]) -> Result<Vec<Rejected>, BusError> {
        let mut acks = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for pending in batch {
            match self.send(&pending.event_id, &pending.body).await {
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

    pub async fn events_after(&self, seq: i64) -> Result<Vec<Value>, BusError> {
        let stream = self.stream().await?;
        let start = u64::try_from(seq).unwrap_or(0) + 1;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(nats_error)?;
        let mut out = Vec::new();
        while pending > 0 {
            let Some(message) = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .map_err(|_| BusError::Nats("timed out reading the stream".into()))?
            else {
                break;
            };
            let message = message.map_err(nats_error)?;
            let info = message.info().map_err(nats_error)?;
            let mut value: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("seq".into(), Value::from(info.stream_sequence));
            }
            out.push(value);
            pending = info.pending;
        }
        Ok(out)
    }

    pub async fn reachable(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            other => Err(BusError::Nats(format!("connection {other:?}"))),
        }
    }

    pub async fn flush(&self) {
        let _ = self.client.flush().await;
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
                    filter_subject: format!("{}.events.>", self.stream),
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_error)?;
        let mut messages = pull
            .stream()
            .heartbeat(Duration::from_secs(5))
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
            let _ = message.double_ack_with(AckKind::Term).await;
        }
        Err(e) => {
            // Not recorded: leave it to be redelivered rather than lose it.
            tracing::warn!(error = %e, seq, "could not record a dead letter");
            let _ = message.ack_with(AckKind::Nak(Some(BACKOFF[0]))).await;
        }
    }
}
