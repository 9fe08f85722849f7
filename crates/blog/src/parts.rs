//! The registry of parts. Each part of the system is described once here:
//! its name, its course port, whether the HTTP bus delivers events to it,
//! whether `blog up` runs it, the course Ingress's paths to it, and how it is
//! built. The command line (its `--<part>-port` and `--<part>-url` flags),
//! `blog up`, `blog serve`, the bus's default subscribers, the gateway's
//! rules and upstreams, `blog routes`, the operator's commands and the tests
//! all iterate [`PARTS`]; adding a part is one entry here and its crate.

use futures_util::future::BoxFuture;

use blog_bus::{BuildError, BusConfig};
use blog_gateway::{ClientBackend, PathType, Rule, Target, Upstream};
use blog_kit::serve::Service;

use crate::settings::Settings;

/// The parts of the system, as `blog serve <part>` names them.
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

/// Whether the HTTP event bus delivers events to a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// At `POST /events` (on NATS the part reads the stream itself).
    Events,
    None,
}

/// Where a part runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// In `blog up` (in [`PARTS`] order) and alone with `blog serve`.
    Up,
    /// Only alone, with `blog serve` (the client server: `blog up`'s gateway
    /// serves the client itself).
    ServeOnly,
}

/// Whether `blog replay` can rebuild a part's state from the bus's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Its state is a read model derived from the log (`POST /rebuild`).
    FromTheLog,
    /// Its state is its own (or it has none).
    No,
}

/// The part that carries events between the others on the HTTP bus (and
/// bridges to JetStream on NATS).
pub const BUS: ServiceKind = ServiceKind::EventBus;

/// The part a person opens: the gateway, in front of the others.
pub const ENTRY: ServiceKind = ServiceKind::Gateway;

/// How the course's Ingress for `posts.com` reaches a part.
pub struct Ingress {
    /// The Kubernetes Service's name (on the part's course port).
    pub service: &'static str,
    /// The paths it routes there, in the manifest's order.
    pub paths: &'static [(&'static str, PathType)],
}

type Build = for<'a> fn(&'a Settings) -> BoxFuture<'a, Result<Service, BuildError>>;

/// One part of the system.
pub struct Part {
    pub kind: ServiceKind,
    pub name: &'static str,
    /// The course's port for it.
    pub default_port: u16,
    pub subscription: Subscription,
    pub launch: Launch,
    /// The course Ingress's paths to it (and so the gateway's), if any.
    pub ingress: Option<Ingress>,
    pub rebuild: Rebuild,
    build: Build,
}

/// Every part, in start order: the bus first, the gateway last.
pub static PARTS: [Part; 7] = [
    Part {
        kind: ServiceKind::EventBus,
        name: blog_event_bus::NAME,
        default_port: blog_event_bus::DEFAULT_PORT,
        subscription: Subscription::None,
        launch: Launch::Up,
        ingress: None,
        rebuild: Rebuild::No,
        build: event_bus,
    },
    Part {
        kind: ServiceKind::Posts,
        name: blog_posts::NAME,
        default_port: blog_posts::DEFAULT_PORT,
        subscription: Subscription::Events,
        launch: Launch::Up,
        ingress: Some(Ingress {
            service: "posts-clusterip-srv",
            paths: &[("/posts/create", PathType::Prefix)],
        }),
        rebuild: Rebuild::No,
        build: posts,
    },
    Part {
        kind: ServiceKind::Comments,
        name: blog_comments::NAME,
        default_port: blog_comments::DEFAULT_PORT,
        subscription: Subscription::Events,
        launch: Launch::Up,
        ingress: Some(Ingress {
            service: "comments-srv",
            paths: &[("/posts/?(.*)/comments", PathType::ImplementationSpecific)],
        }),
        rebuild: Rebuild::No,
        build: comments,
    },
    Part {
        kind: ServiceKind::Query,
        name: blog_query::NAME,
        default_port: blog_query::DEFAULT_PORT,
        subscription: Subscription::Events,
        launch: Launch::Up,
        ingress: Some(Ingress {
            service: "query-srv",
            paths: &[("/posts", PathType::Prefix)],
        }),
        rebuild: Rebuild::FromTheLog,
        build: query,
    },
    Part {
        kind: ServiceKind::Moderation,
        name: blog_moderation::NAME,
        default_port: blog_moderation::DEFAULT_PORT,
        subscription: Subscription::Events,
        launch: Launch::Up,
        ingress: None,
        rebuild: Rebuild::No,
        build: moderation,
    },
    Part {
        kind: ServiceKind::Gateway,
        name: blog_gateway::NAME,
        default_port: blog_gateway::DEFAULT_PORT,
        subscription: Subscription::None,
        launch: Launch::Up,
        ingress: None,
        rebuild: Rebuild::No,
        build: gateway,
    },
    Part {
        kind: ServiceKind::Client,
        name: blog_gateway::CLIENT_NAME,
        default_port: blog_gateway::CLIENT_PORT,
        subscription: Subscription::None,
        launch: Launch::ServeOnly,
        ingress: Some(Ingress {
            service: "client-srv",
            paths: &[("/?(.*)", PathType::ImplementationSpecific)],
        }),
        rebuild: Rebuild::No,
        build: client,
    },
];

fn posts(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    Box::pin(async move { blog_posts::build(&settings.service_config()).await })
}

fn comments(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    Box::pin(async move { blog_comments::build(&settings.service_config()).await })
}

fn query(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    Box::pin(async move {
        blog_query::build(&settings.service_config(), settings.max_live_streams).await
    })
}

fn moderation(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    Box::pin(async move {
        blog_moderation::build(&settings.service_config(), settings.policy.clone()).await
    })
}

fn client(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    let router = blog_gateway::client_router(settings.client_dir.clone());
    let name = blog_gateway::CLIENT_NAME;
    Box::pin(async move { Ok(Service::new(name, blog_kit::http::observe(name, router))) })
}

fn event_bus(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    Box::pin(async move {
        let mut bus = blog_event_bus::Config::new(settings.storage(), settings.subscribers.clone());
        // On NATS the bus is a bridge to the services' stream.
        if let BusConfig::Nats(nats) = &settings.bus {
            bus.log = blog_event_bus::LogStore::JetStream(nats.clone());
        }
        bus.surface = settings.surface.clone();
        bus.http = settings.http.clone();
        bus.delivery_attempts = settings.delivery_attempts;
        Ok(blog_event_bus::build(&bus).await?)
    })
}

fn gateway(settings: &Settings) -> BoxFuture<'_, Result<Service, BuildError>> {
    let target = |part: &Part| match part.kind {
        // The client server, forwarded to, or its files served here.
        ServiceKind::Client => Target::Client(match &settings.client_url {
            Some(url) => ClientBackend::Url(url.clone()),
            None => ClientBackend::Dir(settings.client_dir.clone()),
        }),
        _ => Target::Service(settings.url(part.kind)),
    };
    let config = blog_gateway::Config {
        rules: ingress_rules(),
        upstreams: PARTS
            .iter()
            .filter_map(|part| {
                let ingress = part.ingress.as_ref()?;
                Some(Upstream {
                    service: ingress.service,
                    target: target(part),
                })
            })
            .collect(),
    };
    Box::pin(async move { Ok(blog_gateway::build(&config)) })
}

impl Part {
    /// Builds this part from `settings`.
    pub async fn build(&self, settings: &Settings) -> Result<Service, BuildError> {
        let mut service = (self.build)(settings).await?;
        service.limits = settings.limits;
        Ok(service)
    }

    /// `--<name>-port` / `--<name>-url`, and `BLOG_<NAME>_PORT` / `_URL`.
    pub fn flag(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    pub fn env(&self, what: &str) -> String {
        format!("BLOG_{}_{}", self.name, what)
            .replace('-', "_")
            .to_ascii_uppercase()
    }

    /// Where it listens by default on this machine.
    pub fn local_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.default_port)
    }
}

impl ServiceKind {
    pub fn part(self) -> &'static Part {
        PARTS
            .iter()
            .find(|part| part.kind == self)
            .unwrap_or(&PARTS[0])
    }

    pub fn name(self) -> &'static str {
        self.part().name
    }

    /// The course's port for this part.
    pub fn default_port(self) -> u16 {
        self.part().default_port
    }
}

/// What `blog up` runs, in start order.
pub fn up() -> impl Iterator<Item = &'static Part> {
    PARTS.iter().filter(|part| part.launch == Launch::Up)
}

/// The course Ingress's rules, in its manifest's order: what the gateway
/// routes by and `blog routes` prints.
pub fn ingress_rules() -> Vec<Rule> {
    PARTS
        .iter()
        .filter_map(|part| Some((part, part.ingress.as_ref()?)))
        .flat_map(|(part, ingress)| {
            ingress.paths.iter().map(|&(path, path_type)| Rule {
                path,
                path_type,
                service: ingress.service,
                port: part.default_port,
            })
        })
        .collect()
}

/// The HTTP bus's subscribers: each part it delivers to, at `url_of(part)`.
pub fn subscribers(url_of: impl Fn(&Part) -> String) -> Vec<String> {
    PARTS
        .iter()
        .filter(|part| part.subscription == Subscription::Events)
        .map(|part| format!("{}/events", url_of(part)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_entry_and_names_are_unique() {
        use clap::ValueEnum;
        for kind in ServiceKind::value_variants() {
            assert_eq!(
                PARTS.iter().filter(|p| p.kind == *kind).count(),
                1,
                "{kind:?}"
            );
        }
        let mut names: Vec<&str> = PARTS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PARTS.len());
        let up: Vec<&str> = up().map(|p| p.name).collect();
        assert_eq!(up.first(), Some(&"event-bus"), "the bus starts first");
        assert_eq!(up.last(), Some(&"gateway"), "the gateway starts last");
    }

    #[test]
    fn the_ingress_rules_are_the_courses_in_manifest_order() {
        let rules: Vec<(&str, &str, u16)> = ingress_rules()
            .iter()
            .map(|r| (r.path, r.service, r.port))
            .collect();
        assert_eq!(
            rules,
            [
                ("/posts/create", "posts-clusterip-srv", 4000),
                ("/posts/?(.*)/comments", "comments-srv", 4001),
                ("/posts", "query-srv", 4002),
                ("/?(.*)", "client-srv", 3000),
            ]
        );
        // Every rule compiles, and each path reaches the part that answers it.
        let routed = blog_gateway::RuleSet::new(&ingress_rules());
        for (path, service) in [
            ("/posts/create", "posts-clusterip-srv"),
            ("/posts/abc/comments", "comments-srv"),
            ("/posts", "query-srv"),
            ("/index.html", "client-srv"),
        ] {
            assert_eq!(routed.route(path).map(|r| r.service), Some(service));
        }
    }

    #[test]
    fn flags_and_variables_follow_the_name() {
        let bus = ServiceKind::EventBus.part();
        assert_eq!(bus.flag("port"), "event-bus-port");
        assert_eq!(bus.env("url"), "BLOG_EVENT_BUS_URL");
        assert_eq!(
            subscribers(Part::local_url),
            [
                "http://127.0.0.1:4000/events",
                "http://127.0.0.1:4001/events",
                "http://127.0.0.1:4002/events",
                "http://127.0.0.1:4003/events"
            ]
        );
    }
}
