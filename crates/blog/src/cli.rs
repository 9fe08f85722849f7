//! The command line: `blog up`, `blog serve <service>`, `blog routes`.
//! Every option can also come from a `BLOG_*` environment variable (what
//! Kubernetes sets); a flag wins over the variable, the variable over the default.

use std::net::IpAddr;
use std::path::PathBuf;

use blog_bus::BusConfig;
use blog_kit::http::CorsOrigins;
use blog_moderation::Policy;
use clap::{Args, Parser, Subcommand};

use crate::settings::{Postgres, ServiceKind, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "blog",
    version,
    about = "The blog of \"Microservices with Node, React, Docker and Kubernetes\", in Rust: posts, comments, \
             moderation and query services that talk only through an event bus."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process: the event bus, posts, comments,
    /// query and moderation on the course ports, and the gateway (the Ingress
    /// rules plus the client) on 8080.
    Up(UpArgs),
    /// Run one service as its own process, as a container does.
    Serve(ServeArgs),
    /// Print the gateway's routing table (the Ingress rules) as JSON.
    Routes,
}

/// Options every part shares.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Address to listen on (0.0.0.0 in a container).
    #[arg(long, env = "BLOG_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Directory for each service's database file.
    #[arg(long, env = "BLOG_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Browser origins allowed by CORS: `*` (the course) or a comma-separated list.
    #[arg(long, env = "BLOG_CORS_ORIGINS", default_value = "*")]
    pub cors_origins: CorsOrigins,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BLOG_BODY_LIMIT", default_value_t = blog_kit::http::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Moderation: comma-separated words that get a comment rejected (case-sensitive).
    #[arg(long, env = "BLOG_BLOCKED_WORDS", default_value = "orange")]
    pub blocked_words: Policy,
    /// Directory of the built React client, served by the gateway and the client server.
    #[arg(long, env = "BLOG_CLIENT_DIR", default_value = "client/dist")]
    pub client_dir: PathBuf,
    /// Keep data in PostgreSQL instead of SQLite files: a server URL
    /// (postgres://user@host:5432/postgres). Each service gets its own
    /// database, created and migrated at start.
    #[arg(long, env = "BLOG_POSTGRES")]
    pub postgres: Option<String>,
    /// With --postgres: each service's database is named <prefix><service>.
    #[arg(long, env = "BLOG_POSTGRES_DB_PREFIX", default_value = "blog_")]
    pub postgres_db_prefix: String,
    /// With a nats:// bus: the JetStream stream (and subject prefix) of the blog's events.
    #[arg(long, env = "BLOG_NATS_STREAM", default_value = blog_bus::DEFAULT_STREAM)]
    pub nats_stream: String,
    /// With a nats:// bus: the stream's replicas (3 on a three-server cluster).
    #[arg(long, env = "BLOG_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Event bus: deliveries of one event to a subscriber that answers with
    /// an error before the event is set aside as a dead letter (back-off
    /// from 50 ms doubling to 5 s between them).
    #[arg(long, env = "BLOG_DELIVERY_ATTEMPTS", default_value_t = blog_event_bus::DEFAULT_DELIVERY_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub delivery_attempts: u32,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The event bus: empty for the embedded HTTP event bus (run by `up`), or
    /// nats://HOST:PORT for NATS JetStream.
    #[arg(long, env = "BLOG_BUS")]
    pub bus: Option<BusConfig>,
    /// Gateway port: open http://127.0.0.1:<port>/ in a browser. 0 picks a free port.
    #[arg(long, env = "BLOG_GATEWAY_PORT", default_value_t = 8080)]
    pub gateway_port: u16,
    #[arg(long, env = "BLOG_POSTS_PORT", default_value_t = 4000)]
    pub posts_port: u16,
    #[arg(long, env = "BLOG_COMMENTS_PORT", default_value_t = 4001)]
    pub comments_port: u16,
    #[arg(long, env = "BLOG_QUERY_PORT", default_value_t = 4002)]
    pub query_port: u16,
    #[arg(long, env = "BLOG_MODERATION_PORT", default_value_t = 4003)]
    pub moderation_port: u16,
    #[arg(long, env = "BLOG_EVENT_BUS_PORT", default_value_t = 4005)]
    pub event_bus_port: u16,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which part to run.
    #[arg(value_enum)]
    pub service: ServiceKind,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Port to listen on [default: the course port of the service; gateway 8080, client 3000].
    #[arg(long, env = "BLOG_PORT")]
    pub port: Option<u16>,
    /// The event bus: the HTTP event bus's base URL, or nats://HOST:PORT for NATS JetStream.
    #[arg(long, env = "BLOG_BUS", default_value = "http://127.0.0.1:4005")]
    pub bus: BusConfig,
    /// With --postgres: this service's own database URL, overriding <prefix><service>.
    #[arg(long, env = "BLOG_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Event bus only: the subscribers' `POST /events` URLs, comma-separated.
    #[arg(
        long,
        env = "BLOG_SUBSCRIBERS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4000/events,http://127.0.0.1:4001/events,http://127.0.0.1:4002/events,http://127.0.0.1:4003/events"
    )]
    pub subscribers: Vec<String>,
    /// Gateway only: base URL of the posts service.
    #[arg(long, env = "BLOG_POSTS_URL", default_value = "http://127.0.0.1:4000")]
    pub posts_url: String,
    /// Gateway only: base URL of the comments service.
    #[arg(
        long,
        env = "BLOG_COMMENTS_URL",
        default_value = "http://127.0.0.1:4001"
    )]
    pub comments_url: String,
    /// Gateway only: base URL of the query service.
    #[arg(long, env = "BLOG_QUERY_URL", default_value = "http://127.0.0.1:4002")]
    pub query_url: String,
    /// Gateway only: a client server to forward to, instead of serving --client-dir.
    #[arg(long, env = "BLOG_CLIENT_URL")]
    pub client_url: Option<String>,
}

impl CommonArgs {
    fn settings(&self) -> Settings {
        let mut settings = Settings::local(self.data_dir.clone());
        settings.cors = self.cors_origins.clone();
        settings.body_limit = self.body_limit;
        settings.policy = self.blocked_words.clone();
        settings.client_dir = self.client_dir.clone();
        settings.delivery_attempts = self.delivery_attempts;
        settings.postgres = self.postgres.as_ref().map(|server| Postgres {
            server: server.clone(),
            prefix: self.postgres_db_prefix.clone(),
            database: None,
        });
        settings
    }

    fn with_stream(&self, bus: BusConfig) -> BusConfig {
        match bus {
            BusConfig::Nats { url, .. } => BusConfig::Nats {
                url,
                stream: self.nats_stream.clone(),
                replicas: self.nats_replicas,
            },
            http => http,
        }
    }
}

impl UpArgs {
    pub fn settings(&self) -> Settings {
        let mut settings = self.common.settings();
        if let Some(bus) = &self.bus {
            settings.bus = self.common.with_stream(bus.clone());
        }
        settings
    }

    pub fn ports(&self) -> crate::startup::Ports {
        [
            (ServiceKind::Gateway, self.gateway_port),
            (ServiceKind::Posts, self.posts_port),
            (ServiceKind::Comments, self.comments_port),
            (ServiceKind::Query, self.query_port),
            (ServiceKind::Moderation, self.moderation_port),
            (ServiceKind::EventBus, self.event_bus_port),
        ]
        .into_iter()
        .collect()
    }
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        let mut settings = self.common.settings();
        settings.bus = self.common.with_stream(self.bus.clone());
        if let Some(url) = &self.database_url {
            settings.postgres = Some(Postgres {
                server: url.clone(),
                prefix: self.common.postgres_db_prefix.clone(),
                database: blog_storage::database_of(url),
            });
        }
        settings.subscribers = self
            .subscribers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        settings.posts_url = self.posts_url.clone();
        settings.comments_url = self.comments_url.clone();
        settings.query_url = self.query_url.clone();
        settings.client_url = self.client_url.clone();
        settings
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.service.default_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "blog",
            "serve",
            "moderation",
            "--port",
            "5000",
            "--bus",
            "http://bus:4005/",
            "--blocked-words",
            "kiwi",
        ])
        .expect("valid");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.port(), 5000);
        let settings = args.settings();
        assert_eq!(
            settings.bus,
            BusConfig::Http {
                url: "http://bus:4005".into()
            }
        );
        assert_eq!(
            settings.policy.decide("kiwi"),
            blog_events_status_rejected()
        );
    }

    fn blog_events_status_rejected() -> blog_events::Status {
        blog_events::Status::Rejected
    }

    #[test]
    fn engines_are_chosen_by_configuration() {
        let cli = Cli::try_parse_from([
            "blog",
            "up",
            "--bus",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            "T1",
            "--postgres",
            "postgres://db/postgres",
        ])
        .expect("valid");
        let Command::Up(args) = cli.command else {
            panic!("up")
        };
        let settings = args.settings();
        assert_eq!(
            settings.bus,
            BusConfig::Nats {
                url: "nats://127.0.0.1:4222".into(),
                stream: "T1".into(),
                replicas: 1
            }
        );
        assert!(!settings.embedded_bus());
        assert_eq!(
            settings.storage(),
            blog_storage::StorageConfig::Postgres {
                server: "postgres://db/postgres".into(),
                database: None,
                prefix: "blog_".into()
            }
        );
        let cli = Cli::try_parse_from([
            "blog",
            "serve",
            "posts",
            "--database-url",
            "postgres://db/mine",
        ])
        .expect("valid");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let blog_storage::StorageConfig::Postgres { database, .. } = args.settings().storage()
        else {
            panic!("pg")
        };
        assert_eq!(database.as_deref(), Some("mine"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["blog", "serve", "posts", "--bus", "ftp://x"]).is_err());
        assert!(Cli::try_parse_from(["blog", "serve", "nope"]).is_err());
        assert!(Cli::try_parse_from(["blog", "up", "--cors-origins", "posts.com"]).is_err());
    }
}
