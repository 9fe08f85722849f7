use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blog_events::Envelope;
use blog_kit::client::{ClientError, HttpClient, json_array};
use blog_kit::http::fits_in_batch;
use blog_storage::outbox::Pending;
use bytes::Bytes;
use serde_json::Value;

use crate::nats::Nats;
use crate::nats_config::NatsConfig;

/// Which bus the services talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// The course's HTTP event bus (ours or the Node one) at this base URL.
    Http { url: String },
    /// NATS JetStream: its servers, credentials and the blog's stream.
    Nats(NatsConfig),
}

impl std::str::FromStr for BusConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_end_matches('/');
        if s.starts_with("http://") {
            Ok(BusConfig::Http { url: s.to_owned() })
        } else if s.starts_with("nats://") || s.starts_with("tls://") {
            NatsConfig::parse(s).map(BusConfig::Nats)
        } else {
            Err(format!(
                "unsupported bus URL {s:?}: expected http://HOST:PORT (the HTTP event bus) or nats://HOST:PORT[,nats://...] (JetStream)"
            ))
        }
    }
}

impl std::fmt::Display for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusConfig::Http { url } => f.write_str(url),
            BusConfig::Nats(nats) => write!(f, "{} (stream {})", nats.servers, nats.stream.name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unreachable: {0}")]
    Unreachable(#[from] ClientError),
    #[error("bus answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("bus sent something that is not an event list: {0}")]
    Malformed(String),
    #[error("NATS: {0}")]
    Nats(String),
}

/// An outbox event the bus refused for good (it can never be stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub seq: i64,
    pub reason: String,
}

impl BusError {
    /// Whether retrying can never help: the bus refused the event itself.
    pub fn is_permanent(&self) -> bool {
        match self {
            BusError::Refused { status, .. } => {
                (400..500).contains(status) && !matches!(status, 404 | 405 | 408 | 429)
            }
            BusError::Malformed(_) => true,
            BusError::Unreachable(_) | BusError::Nats(_) => false,
        }
    }
}

/// A connection to the bus.
#[derive(Debug, Clone)]
pub struct BusClient {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Http {
        url: String,
        http: HttpClient,
        /// Whether the bus takes `POST /events/batch` (ours does; the
        /// course's answers 404 and gets one event per request).
        batches: Arc<AtomicBool>,
    },
    Nats(Box<Nats>),
}

impl BusClient {
    /// Connects to the bus. For NATS the connection is made in the background
    /// and retried, so a service starts (and reports not ready) while NATS is down.
    pub async fn connect(config: &BusConfig, http: HttpClient) -> Result<Self, BusError> {
        let inner = match config {
            BusConfig::Http { url } => Inner::Http {
                url: url.clone(),
                http,
                batches: Arc::new(AtomicBool::new(true)),
            },
            BusConfig::Nats(config) => Inner::Nats(Box::new(Nats::connect(config).await?)),
        };
        Ok(Self { inner })
    }

    pub(crate) fn nats(&self) -> Option<&Nats> {
        match &self.inner {
            Inner::Nats(nats) => Some(nats),
            Inner::Http { .. } => None,
        }
    }

    /// Hands one event (its JSON) to the bus; `Ok` once the bus has stored it.
    pub async fn publish(&self, event_id: &str, body: &str) -> Result<(), BusError> {
        match &self.inner {
            Inner::Http { url, http, .. } => {
                let (status, answer) = http
                    .post_json(
                        &format!("{url}/events"),
                        Bytes::copy_from_slice(body.as_bytes()),
                    )
                    .await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(BusError::Refused {
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&answer).into_owned(),
                    })
                }
            }
            Inner::Nats(nats) => nats.publish(event_id, body).await,
        }
    }

    /// Hands a batch of outbox events to the bus, in order; `Ok` once the
    /// bus has stored all of them. One request to our bus, pipelined on
    /// NATS, one request per event to a course bus.
    pub async fn publish_batch(&self, batch: &[Pending]) -> Result<Vec<Rejected>, BusError> {
        match &self.inner {
            Inner::Http { url, http, batches } => {
                let mut rejected = Vec::new();
                for chunk in chunks(batch) {
                    if chunk.len() > 1 && batches.load(Ordering::Relaxed) {
                        match self.post_batch(url, http, chunk).await {
                            Ok(true) => continue,
                            Ok(false) => {
                                tracing::info!(bus = %url, "the bus takes one event per request");
                                batches.store(false, Ordering::Relaxed);
                            }
                            // Some event of it is refused: one at a time finds which.
                            Err(e) if e.is_permanent() => {}
                            Err(e) => return Err(e),
                        }
                    }
                    // Events a batch already stored are recognised by id.
                    for pending in chunk {
                        match self.publish(&pending.event_id, &pending.body).await {
                            Ok(()) => {}
                            Err(e) if e.is_permanent() => rejected.push(Rejected {
                                seq: pending.seq,
                                reason: e.to_string(),
                            }),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(rejected)
            }
            Inner::Nats(nats) => nats.publish_batch(batch).await,
        }
    }

    /// Posts `chunk` to our bus's batch route. `Ok(false)` when the bus has
    /// no such route (a course bus).
    async fn post_batch(
        &self,
        url: &str,
        http: &HttpClient,
        chunk: &[Pending],
    ) -> Result<bool, BusError> {
        let (status, answer) = http
            .post_json(
                &format!("{url}/events/batch"),
                json_array(chunk.iter().map(|p| p.body.as_str())),
            )
            .await?;
        if status.is_success() {
            Ok(true)
        } else if matches!(status.as_u16(), 404 | 405) {
            Ok(false)
        } else {
            Err(BusError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&answer).into_owned(),
            })
        }
    }

    /// Every stored event after `seq`, oldest first. A course bus ignores
    /// `after` and sends them all; consumers deduplicate.
    pub async fn events_after(&self, seq: i64) -> Result<Vec<Value>, BusError> {
        match &self.inner {
            Inner::Http { url, http, .. } => {
                let (status, body) = http.get(&format!("{url}/events?after={seq}")).await?;
                if !status.is_success() {
                    return Err(BusError::Refused {
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                match serde_json::from_slice(&body) {
                    Ok(Value::Array(events)) => Ok(events),
                    Ok(_) => Err(BusError::Malformed("expected a JSON array".into())),
                    Err(e) => Err(BusError::Malformed(e.to_string())),
                }
            }
            Inner::Nats(nats) => nats.events_after(seq).await,
        }
    }

    /// Up to `limit` stored events after `seq`, oldest first, each with its
    /// `seq` (what a rebuild pages through).
    pub async fn events_page(&self, seq: i64, limit: usize) -> Result<Vec<Envelope>, BusError> {
        match &self.inner {
            Inner::Http { url, http, .. } => {
                let (status, body) = http
                    .get(&format!("{url}/events?after={seq}&limit={limit}"))
                    .await?;
                if !status.is_success() {
                    return Err(BusError::Refused {
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                match serde_json::from_slice(&body) {
                    Ok(Value::Array(events)) => Ok(events
                        .into_iter()
                        .filter_map(parse_from_bus)
                        // A course bus ignores `after` and `limit`.
                        .filter(|e| e.seq.is_none_or(|s| s > seq))
                        .take(limit)
                        .collect()),
                    Ok(_) => Err(BusError::Malformed("expected a JSON array".into())),
                    Err(e) => Err(BusError::Malformed(e.to_string())),
                }
            }
            Inner::Nats(nats) => Ok(nats
                .read_after(u64::try_from(seq).unwrap_or(0), limit)
                .await?
                .into_iter()
                .filter_map(|stored| {
                    let mut envelope = Envelope::from_slice(&stored.payload)
                        .inspect_err(|e| tracing::warn!(error = %e, seq = stored.seq, "skipping a malformed event from the bus"))
                        .ok()?;
                    envelope.seq = i64::try_from(stored.seq).ok();
                    Some(envelope)
                })
                .collect()),
        }
    }

    /// The last sequence number the bus stored, when it says (ours does; a
    /// course bus does not).
    pub async fn last_seq(&self) -> Option<i64> {
        match &self.inner {
            Inner::Http { url, http, .. } => {
                let (status, body) = http.get(&format!("{url}/subscribers")).await.ok()?;
                if !status.is_success() {
                    return None;
                }
                serde_json::from_slice::<Value>(&body).ok()?["lastSeq"].as_i64()
            }
            Inner::Nats(nats) => nats
                .last_seq()
                .await
                .ok()
                .and_then(|s| i64::try_from(s).ok()),
        }
    }

    /// Whether the bus answers (any HTTP answer will do: the course bus has
    /// no health route; for NATS, a live connection).
    pub async fn reachable(&self) -> Result<(), BusError> {
        match &self.inner {
            Inner::Http { url, http, .. } => {
                http.get(&format!("{url}/healthz")).await?;
                Ok(())
            }
            Inner::Nats(nats) => nats.reachable().await,
        }
    }

    /// Sends what is buffered before the process exits.
    pub async fn flush(&self) {
        if let Inner::Nats(nats) = &self.inner {
            let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
        }
    }
}

/// Parses an event from the bus, logging and skipping what is not one.
pub(crate) fn parse_from_bus(value: Value) -> Option<Envelope> {
    match Envelope::from_value(value) {
        Ok(envelope) => Some(envelope),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a malformed event from the bus");
            None
        }
    }
}

/// `batch` cut into runs that each fit in one batch request.
fn chunks(mut batch: &[Pending]) -> Vec<&[Pending]> {
    let mut out = Vec::new();
    while !batch.is_empty() {
        let (chunk, rest) = batch.split_at(fits_in_batch(batch.iter().map(|p| p.body.len())));
        out.push(chunk);
        batch = rest;
    }
    out
}
