//! The typed configuration a service is started from, after defaults, flags
//! and `BLOG_*` variables have been layered by the command line parser.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use blog_bus::{BusConfig, ServiceConfig};
use blog_kit::client::HttpClient;
use blog_kit::http::CorsOrigins;
use blog_moderation::Policy;
use blog_storage::StorageConfig;

/// The parts of the system `blog serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceKind {
    Posts,
    Comments,
    Query,
    Moderation,
    EventBus,
    Gateway,
    Client,
}

impl ServiceKind {
    /// What `blog up` runs, in start order: the bus first, the gateway last.
    pub const UP: [ServiceKind; 6] = [
        ServiceKind::EventBus,
        ServiceKind::Posts,
        ServiceKind::Comments,
        ServiceKind::Query,
        ServiceKind::Moderation,
        ServiceKind::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Posts => blog_posts::NAME,
            ServiceKind::Comments => blog_comments::NAME,
            ServiceKind::Query => blog_query::NAME,
            ServiceKind::Moderation => blog_moderation::NAME,
            ServiceKind::EventBus => blog_event_bus::NAME,
            ServiceKind::Gateway => blog_gateway::NAME,
            ServiceKind::Client => "client",
        }
    }

    /// The course's port for this part.
    pub fn default_port(self) -> u16 {
        match self {
            ServiceKind::Posts => blog_posts::DEFAULT_PORT,
            ServiceKind::Comments => blog_comments::DEFAULT_PORT,
            ServiceKind::Query => blog_query::DEFAULT_PORT,
            ServiceKind::Moderation => blog_moderation::DEFAULT_PORT,
            ServiceKind::EventBus => blog_event_bus::DEFAULT_PORT,
            ServiceKind::Gateway => blog_gateway::DEFAULT_PORT,
            ServiceKind::Client => blog_gateway::CLIENT_PORT,
        }
    }
}

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
    pub cors: CorsOrigins,
    pub body_limit: usize,
    pub policy: Policy,
    pub posts_url: String,
    pub comments_url: String,
    pub query_url: String,
    /// A client server to forward to; when absent the gateway serves `client_dir`.
    pub client_url: Option<String>,
    pub client_dir: PathBuf,
    pub http: HttpClient,
    /// PostgreSQL instead of SQLite: the server, and the prefix of each
    /// service's database name.
    pub postgres: Option<Postgres>,
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
        let url = |kind: ServiceKind| format!("http://127.0.0.1:{}", kind.default_port());
        Self {
            data_dir,
            bus: BusConfig::Http {
                url: url(ServiceKind::EventBus),
            },
            subscribers: blog_event_bus::default_subscribers(),
            extra_subscribers: Vec::new(),
            delivery_attempts: blog_event_bus::DEFAULT_DELIVERY_ATTEMPTS,
            cors: CorsOrigins::Any,
            body_limit: blog_kit::http::DEFAULT_BODY_LIMIT,
            policy: Policy::default(),
            posts_url: url(ServiceKind::Posts),
            comments_url: url(ServiceKind::Comments),
            query_url: url(ServiceKind::Query),
            client_url: None,
            client_dir: PathBuf::from("client/dist"),
            http: HttpClient::default(),
            postgres: None,
        }
    }

    pub fn storage(&self) -> StorageConfig {
        match &self.postgres {
            Some(pg) => StorageConfig::Postgres {
                server: pg.server.clone(),
                database: pg.database.clone(),
                prefix: pg.prefix.clone(),
            },
            None => StorageConfig::Sqlite {
                data_dir: self.data_dir.clone(),
            },
        }
    }

    /// Whether the bus is the embedded HTTP event bus (which `blog up` runs).
    pub fn embedded_bus(&self) -> bool {
        matches!(self.bus, BusConfig::Http { .. })
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            storage: self.storage(),
            bus: self.bus.clone(),
            cors: self.cors.clone(),
            body_limit: self.body_limit,
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
