//! The typed configuration a service is started from, after defaults, flags
//! and `BLOG_*` variables have been layered by the command line parser.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use blog_bus::{BusConfig, ServiceConfig};
use blog_kit::client::HttpClient;
use blog_kit::http::Surface;
use blog_kit::serve::ConnectionLimits;
use blog_moderation::Policy;
use blog_storage::StorageConfig;

use crate::parts::Part;

pub use crate::parts::ServiceKind;

/// Everything any part may need; each takes what concerns it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub bus: BusConfig,
    /// The event bus's subscribers (`POST /events` URLs).
    pub subscribers: Vec<String>,
    /// Subscribers beyond our own services (course peers, tools), which
    /// [`wire`](crate::startup::wire) keeps when it points the bus at our parts.
    pub extra_subscribers: Vec<String>,
    /// Deliveries of one event to a subscriber before the bus sets it aside
    /// as a dead letter.
    pub delivery_attempts: u32,
    /// CORS, body limit and internal token of every part.
    pub surface: Surface,
    /// Connections per listener and how long a request's head may take.
    pub limits: ConnectionLimits,
    /// Query: live streams open at once.
    pub max_live_streams: usize,
    pub policy: Policy,
    /// Where the other parts are (the gateway's upstreams), by part; a part
    /// not listed is at its course port on this machine.
    pub urls: HashMap<ServiceKind, String>,
    /// A client server to forward to; when absent the gateway serves `client_dir`.
    pub client_url: Option<String>,
    pub client_dir: PathBuf,
    pub http: HttpClient,
    /// PostgreSQL instead of SQLite: the server, and the prefix of each
    /// service's database name.
    pub postgres: Option<Postgres>,
    /// How long a service keeps trying to reach its database at start.
    pub startup_timeout: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// A server URL (its database, if any, is the maintenance database used
    /// to create the services' databases).
    pub server: String,
    /// Each service's database is `<prefix><service>` ...
    pub prefix: String,
    /// ... unless this names the one database of the one service served.
    pub database: Option<String>,
}

impl Settings {
    /// Local defaults: the course ports on localhost, data under `data_dir`.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            bus: BusConfig::Http {
                url: crate::parts::BUS.part().local_url(),
            },
            subscribers: crate::parts::subscribers(Part::local_url),
            extra_subscribers: Vec::new(),
            delivery_attempts: blog_event_bus::DEFAULT_DELIVERY_ATTEMPTS,
            surface: Surface::default(),
            limits: ConnectionLimits::default(),
            max_live_streams: blog_query::DEFAULT_MAX_LIVE_STREAMS,
            policy: Policy::default(),
            urls: HashMap::new(),
            client_url: None,
            client_dir: PathBuf::from("client/dist"),
            http: HttpClient::default(),
            postgres: None,
            startup_timeout: blog_storage::DEFAULT_STARTUP_TIMEOUT,
        }
    }

    /// Where part `kind` is.
    pub fn url(&self, kind: ServiceKind) -> String {
        self.urls
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| kind.part().local_url())
    }

    pub fn storage(&self) -> StorageConfig {
        match &self.postgres {
            Some(pg) => StorageConfig::Postgres {
                server: pg.server.clone(),
                database: pg.database.clone(),
                prefix: pg.prefix.clone(),
                connect_within: self.startup_timeout,
            },
            None => StorageConfig::Sqlite {
                data_dir: self.data_dir.clone(),
            },
        }
    }

    /// Whether the event log is the HTTP event bus's own (not JetStream, where
    /// the event bus is only a bridge for course services).
    pub fn embedded_bus(&self) -> bool {
        matches!(self.bus, BusConfig::Http { .. })
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            storage: self.storage(),
            bus: self.bus.clone(),
            surface: self.surface.clone(),
            http: self.http.clone(),
        }
    }
}

/// The address to reach a listener bound on `addr` (an unspecified host is
/// reached on loopback).
pub fn reachable(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
