//! The command line: `blog up`, `blog serve <service>`, `blog routes`, and
//! the operator's `status`, `events tail`, `dead-letters` and `replay`.
//! Every option can also come from a `BLOG_*` environment variable (what
//! Kubernetes sets); a flag wins over the variable, the variable over the default.

use std::net::IpAddr;
use std::path::PathBuf;

use blog_bus::{BusConfig, NatsAuth, StreamConfig};
use blog_kit::http::{CorsOrigins, InternalToken, Surface};
use blog_moderation::Policy;
use clap::{Args, Parser, Subcommand};

use std::collections::HashMap;

use crate::parts;
use crate::settings::{Postgres, ServiceKind, Settings};
use crate::startup::Ports;

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
    /// Log lines as text for a terminal, or as JSON objects (one per line)
    /// for a log pipeline. What is logged: `BLOG_LOG` (an env-filter).
    #[arg(long, global = true, env = "BLOG_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// The live streams' threads' priority (`--live-priority`); see
/// [`blog_kit::background::Priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LivePriority {
    Idle,
    Normal,
}

impl From<LivePriority> for blog_kit::background::Priority {
    fn from(priority: LivePriority) -> Self {
        match priority {
            LivePriority::Idle => Self::Idle,
            LivePriority::Normal => Self::Normal,
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for blog_kit::telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
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
    /// Each part's health and readiness (with the reason), its outbox and
    /// dead letters, and the bus's subscribers with their lag. Exit code 1
    /// when a part is down or not ready.
    Status {
        #[command(flatten)]
        parts: PartsArgs,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Read the bus's event log.
    Events {
        #[command(flatten)]
        parts: PartsArgs,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Events set aside because they could not be delivered or applied.
    DeadLetters {
        #[command(flatten)]
        parts: PartsArgs,
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Rebuild a service's read model from the bus's log while it runs,
    /// showing progress; ends with the events/s figure.
    Replay {
        #[command(flatten)]
        parts: PartsArgs,
        /// The service whose read model to rebuild (one whose state is
        /// derived from the log).
        #[arg(value_parser = rebuildable)]
        service: ServiceKind,
        /// The final progress as JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Where the operator's commands find the running parts (the course
/// ports on this machine unless told; in a cluster, `kubectl
/// port-forward` or the Services' names).
#[derive(Debug, Args)]
pub struct PartsArgs {
    #[command(flatten)]
    pub urls: UrlFlags,
    /// The internal token the parts demand on internal routes, if set.
    #[arg(
        long,
        global = true,
        env = "BLOG_INTERNAL_TOKEN",
        hide_env_values = true
    )]
    pub internal_token: Option<InternalToken>,
    /// Seconds to wait for any one answer.
    #[arg(long, global = true, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

impl PartsArgs {
    /// An HTTP client that shows the token, if given.
    pub fn http(&self) -> blog_kit::client::HttpClient {
        let http = blog_kit::client::HttpClient::new(std::time::Duration::from_secs(self.timeout));
        match &self.internal_token {
            Some(token) => http.with_token(token),
            None => http,
        }
    }

    /// Where part `kind` is.
    pub fn url(&self, kind: ServiceKind) -> String {
        self.urls.url(kind)
    }

    /// The event bus's base URL.
    pub fn bus(&self) -> String {
        self.url(parts::BUS)
    }

    /// Each part of `blog up` with its base URL, in start order.
    pub fn urls(&self) -> Vec<(ServiceKind, String)> {
        parts::up()
            .map(|part| (part.kind, self.url(part.kind)))
            .collect()
    }
}

/// `--<part>-port` (`BLOG_<PART>_PORT`) for every part `blog up` runs,
/// generated from the registry of parts.
#[derive(Debug, Clone, Default)]
pub struct PortFlags(pub Ports);

impl clap::FromArgMatches for PortFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(
            parts::up()
                .filter_map(|part| {
                    let port = matches.get_one::<u16>(part.flag("port").as_str())?;
                    Some((part.kind, *port))
                })
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for PortFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        parts::up().fold(command, |command, part| {
            command.arg(
                clap::Arg::new(part.flag("port"))
                    .long(part.flag("port"))
                    .env(part.env("port"))
                    .value_name("PORT")
                    .value_parser(clap::value_parser!(u16))
                    .default_value(part.default_port.to_string())
                    .help(format!("Where {} listens (0: any free port)", part.name)),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// `--<part>-url` (`BLOG_<PART>_URL`) for every part `blog up` runs:
/// where it is, generated from the registry of parts.
#[derive(Debug, Clone, Default)]
pub struct UrlFlags(pub HashMap<ServiceKind, String>);

impl UrlFlags {
    /// Where part `kind` is (its course port on this machine unless told).
    pub fn url(&self, kind: ServiceKind) -> String {
        self.0
            .get(&kind)
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| kind.part().local_url())
    }
}

impl clap::FromArgMatches for UrlFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(
            parts::up()
                .filter_map(|part| {
                    let url = matches.get_one::<String>(part.flag("url").as_str())?;
                    Some((part.kind, url.clone()))
                })
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for UrlFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        parts::up().fold(command, |command, part| {
            command.arg(
                clap::Arg::new(part.flag("url"))
                    .long(part.flag("url"))
                    .env(part.env("url"))
                    .value_name("URL")
                    .global(true)
                    .default_value(part.local_url())
                    .help(format!("Where {} is", part.name)),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as the bus stores them (from now, or from --from).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only events of this type (PostCreated, CommentCreated, ...).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// The first sequence number to print (1: the whole log).
    #[arg(long)]
    pub from: Option<i64>,
    /// Stop once caught up instead of waiting for more.
    #[arg(long)]
    pub no_follow: bool,
    /// Each event as its JSON, one per line.
    #[arg(long)]
    pub json: bool,
}

impl TailArgs {
    pub fn follow(&self) -> bool {
        !self.no_follow
    }
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Every event set aside: by the bus (per subscriber) and by each service.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send the bus's dead letters again, once what failed them is fixed.
    Replay {
        /// Only this subscriber's (its events URL).
        #[arg(long)]
        subscriber: Option<String>,
        /// Only these dead letters (their ids from `list`).
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

/// A part whose state is a read model the log can rebuild, by name.
fn rebuildable(name: &str) -> Result<ServiceKind, String> {
    let can = || {
        parts::PARTS
            .iter()
            .filter(|part| part.rebuild == parts::Rebuild::FromTheLog)
    };
    match can().find(|part| part.name == name) {
        Some(part) => Ok(part.kind),
        None => Err(format!(
            "not a part with a read model to rebuild; one of: {}",
            can().map(|part| part.name).collect::<Vec<_>>().join(", ")
        )),
    }
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
    /// A secret every call between the system's parts carries, and every
    /// internal route (events, the bus's API, dead letters) demands; without
    /// it those routes are open, as in the course. At least 16 characters.
    #[arg(long, env = "BLOG_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<InternalToken>,
    /// Connections each listener serves at once; more wait until one closes.
    #[arg(long, env = "BLOG_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a connection may take to send a request's head before it is closed.
    #[arg(long, env = "BLOG_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,
    /// Query: live streams (`GET /posts/live`) open at once; beyond, 503.
    #[arg(long, env = "BLOG_MAX_LIVE_STREAMS", default_value_t = blog_query::DEFAULT_MAX_LIVE_STREAMS)]
    pub max_live_streams: usize,
    /// Query and gateway: the priority of the threads that serve live
    /// streams. `idle`: only cores nothing else wants, so a frame that wakes
    /// thousands of streams never delays a write; `normal`: as the rest.
    #[arg(long, env = "BLOG_LIVE_PRIORITY", value_enum, default_value_t = LivePriority::Idle)]
    pub live_priority: LivePriority,
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
    /// With a nats:// bus: the most the stream keeps on each server (8GiB,
    /// 512MiB, bytes); the oldest events go first. It must fit the servers'
    /// JetStream max_file_store, or the stream cannot be placed.
    #[arg(long, env = "BLOG_NATS_MAX_BYTES", default_value = "1GiB", value_parser = blog_bus::parse_size)]
    pub nats_max_bytes: u64,
    /// With a nats:// bus: the user to connect as (credentials in the URL also work).
    #[arg(long, env = "BLOG_NATS_USER")]
    pub nats_user: Option<String>,
    /// With a nats:// bus: the user's password.
    #[arg(long, env = "BLOG_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// With a nats:// or tls:// bus: a PEM file of certificate authorities to
    /// trust; TLS is then required.
    #[arg(long, env = "BLOG_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// How long a service keeps trying to reach its PostgreSQL at start
    /// before it gives up (seconds); keep it below the startup probe's budget.
    #[arg(long, env = "BLOG_STARTUP_TIMEOUT", default_value_t = 120)]
    pub startup_timeout: u64,
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
    /// Where each part listens: `--gateway-port` is the one to open in a
    /// browser.
    #[command(flatten)]
    pub ports: PortFlags,
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
    /// The event bus: the HTTP event bus's base URL, or nats://HOST:PORT for
    /// NATS JetStream [default: the event bus on localhost, on its course port].
    #[arg(long, env = "BLOG_BUS")]
    pub bus: Option<BusConfig>,
    /// With --postgres: this service's own database URL, overriding <prefix><service>.
    #[arg(long, env = "BLOG_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Event bus only: the subscribers' `POST /events` URLs, comma-separated
    /// (empty: none). Default: the four services on localhost's course
    /// ports; none on a nats:// bus, where the services read the stream
    /// and the bus is a bridge for course services that speak HTTP.
    #[arg(long, env = "BLOG_SUBSCRIBERS", value_delimiter = ',')]
    pub subscribers: Option<Vec<String>>,
    /// Where the other parts are (the gateway forwards to posts, comments
    /// and query).
    #[command(flatten)]
    pub urls: UrlFlags,
    /// Gateway only: a client server to forward to, instead of serving --client-dir.
    #[arg(long, env = "BLOG_CLIENT_URL")]
    pub client_url: Option<String>,
}

impl CommonArgs {
    /// The settings these flags make, on `bus` (the local event bus if none).
    fn settings_on(&self, bus: Option<&BusConfig>) -> Settings {
        let mut settings = Settings::local(self.data_dir.clone());
        if let Some(bus) = bus {
            settings.bus = self.with_stream(bus.clone());
        }
        settings.surface = Surface {
            cors: self.cors_origins.clone(),
            body_limit: self.body_limit,
            internal_token: self.internal_token.clone(),
        };
        if let Some(token) = &self.internal_token {
            settings.http = settings.http.with_token(token);
        }
        settings.limits.max_connections = self.max_connections as usize;
        settings.limits.header_read_timeout =
            std::time::Duration::from_secs(self.header_read_timeout);
        settings.max_live_streams = self.max_live_streams;
        settings.policy = self.blocked_words.clone();
        settings.client_dir = self.client_dir.clone();
        settings.delivery_attempts = self.delivery_attempts;
        settings.startup_timeout = std::time::Duration::from_secs(self.startup_timeout);
        settings.postgres = self.postgres.as_ref().map(|server| Postgres {
            server: server.clone(),
            prefix: self.postgres_db_prefix.clone(),
            database: None,
        });
        settings
    }

    /// `bus` with the NATS options applied (stream, limits, credentials).
    fn with_stream(&self, bus: BusConfig) -> BusConfig {
        match bus {
            BusConfig::Nats(mut nats) => {
                nats.stream = StreamConfig {
                    name: self.nats_stream.clone(),
                    replicas: self.nats_replicas,
                    max_bytes: self.nats_max_bytes,
                };
                if let Some(user) = &self.nats_user {
                    nats.auth = NatsAuth::UserPassword {
                        user: user.clone(),
                        password: self.nats_password.clone().unwrap_or_default(),
                    };
                }
                if self.nats_ca.is_some() {
                    nats.ca = self.nats_ca.clone();
                }
                BusConfig::Nats(nats)
            }
            http => http,
        }
    }
}

impl UpArgs {
    pub fn settings(&self) -> Settings {
        self.common.settings_on(self.bus.as_ref())
    }

    pub fn ports(&self) -> Ports {
        self.ports.0.clone()
    }
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        let mut settings = self.common.settings_on(self.bus.as_ref());
        if let Some(url) = &self.database_url {
            settings.postgres = Some(Postgres {
                server: url.clone(),
                prefix: self.common.postgres_db_prefix.clone(),
                database: blog_storage::database_of(url),
            });
        }
        settings.subscribers = match &self.subscribers {
            Some(urls) => urls
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            None if settings.embedded_bus() => parts::subscribers(|part| self.urls.url(part.kind)),
            None => Vec::new(),
        };
        settings.urls = self.urls.0.clone();
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
            BusConfig::Nats(
                blog_bus::NatsConfig::parse("nats://127.0.0.1:4222")
                    .expect("valid")
                    .with_stream("T1")
            )
        );
        assert!(!settings.embedded_bus());
        assert_eq!(
            settings.storage(),
            blog_storage::StorageConfig::Postgres {
                server: "postgres://db/postgres".into(),
                database: None,
                prefix: "blog_".into(),
                connect_within: blog_storage::DEFAULT_STARTUP_TIMEOUT,
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
    fn nats_credentials_and_limits_come_from_flags() {
        let cli = Cli::try_parse_from([
            "blog",
            "serve",
            "query",
            "--bus",
            "nats://nats-0:4222,nats://nats-1:4222",
            "--nats-user",
            "query",
            "--nats-password",
            "pw",
            "--nats-replicas",
            "3",
            "--nats-max-bytes",
            "8GiB",
        ])
        .expect("valid");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let BusConfig::Nats(nats) = args.settings().bus else {
            panic!("nats")
        };
        assert_eq!(nats.servers, "nats://nats-0:4222,nats://nats-1:4222");
        assert_eq!(
            nats.auth,
            NatsAuth::UserPassword {
                user: "query".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            nats.stream,
            StreamConfig {
                name: blog_bus::DEFAULT_STREAM.into(),
                replicas: 3,
                max_bytes: 8 << 30
            }
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Cli::try_parse_from(["blog", "serve", "posts", "--nats-max-bytes", "lots"]).is_err()
        );
        assert!(Cli::try_parse_from(["blog", "serve", "posts", "--bus", "ftp://x"]).is_err());
        // Only a part whose state is a read model can be rebuilt.
        let Command::Replay { service, .. } = Cli::try_parse_from(["blog", "replay", "query"])
            .expect("valid")
            .command
        else {
            panic!("replay")
        };
        assert_eq!(service, ServiceKind::Query);
        let refused = Cli::try_parse_from(["blog", "replay", "posts"]).expect_err("refused");
        assert!(refused.to_string().contains("one of: query"), "{refused}");
        assert!(Cli::try_parse_from(["blog", "serve", "nope"]).is_err());
        assert!(Cli::try_parse_from(["blog", "up", "--cors-origins", "posts.com"]).is_err());
    }
}
