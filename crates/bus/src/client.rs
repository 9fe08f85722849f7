use blog_events::Envelope;
use blog_kit::client::{ClientError, HttpClient};
use bytes::Bytes;
use serde_json::Value;

/// Which bus the services talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// The course's HTTP event bus (ours or the Node one) at this base URL.
    Http { url: String },
}

impl std::str::FromStr for BusConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_end_matches('/');
        if s.starts_with("http://") {
            Ok(BusConfig::Http { url: s.to_owned() })
        } else {
            Err(format!(
                "unsupported bus URL {s:?}: expected http://HOST:PORT"
            ))
        }
    }
}

impl std::fmt::Display for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusConfig::Http { url } => f.write_str(url),
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
}

/// A connection to the bus.
#[derive(Debug, Clone)]
pub struct BusClient {
    config: BusConfig,
    http: HttpClient,
}

impl BusClient {
    pub fn new(config: BusConfig, http: HttpClient) -> Self {
        Self { config, http }
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Hands one event (its JSON) to the bus; `Ok` once the bus has stored it.
    pub async fn publish(&self, body: &str) -> Result<(), BusError> {
        let BusConfig::Http { url } = &self.config;
        let (status, answer) = self
            .http
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

    /// Every stored event after `seq`, oldest first. A course bus ignores
    /// `after` and sends them all; consumers deduplicate.
    pub async fn events_after(&self, seq: i64) -> Result<Vec<Value>, BusError> {
        let BusConfig::Http { url } = &self.config;
        let (status, body) = self.http.get(&format!("{url}/events?after={seq}")).await?;
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

    /// Whether the bus answers at all (any HTTP answer will do: the course
    /// bus has no health route).
    pub async fn reachable(&self) -> Result<(), BusError> {
        let BusConfig::Http { url } = &self.config;
        self.http.get(&format!("{url}/healthz")).await?;
        Ok(())
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
