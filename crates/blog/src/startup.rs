//! Building and running services.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blog_bus::BuildError;
use blog_bus::BusConfig;
use blog_gateway::ClientBackend;
use blog_kit::CancellationToken;
use blog_kit::client::HttpClient;
use blog_kit::serve::Service;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::settings::{ServiceKind, Settings, reachable};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{service}: {source}")]
    Build {
        service: &'static str,
        source: BuildError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} did not become ready within {1:?}")]
    NotReady(&'static str, Duration),
    #[error("{0} stopped: {1}")]
    Stopped(&'static str, String),
}

/// Builds one part of the system from `settings`.
pub async fn build(kind: ServiceKind, settings: &Settings) -> Result<Service, StartupError> {
    let storage = |source: BuildError| StartupError::Build {
        service: kind.name(),
        source,
    };
    let config = settings.service_config();
    Ok(match kind {
        ServiceKind::Posts => blog_posts::build(&config).await.map_err(storage)?,
        ServiceKind::Comments => blog_comments::build(&config).await.map_err(storage)?,
        ServiceKind::Query => blog_query::build(&config).await.map_err(storage)?,
        ServiceKind::Moderation => blog_moderation::build(&config, settings.policy.clone())
            .await
            .map_err(storage)?,
        ServiceKind::EventBus => {
            let mut bus =
                blog_event_bus::Config::new(settings.storage(), settings.subscribers.clone());
            bus.cors = settings.cors.clone();
            bus.body_limit = settings.body_limit;
            bus.http = settings.http.clone();
            bus.delivery_attempts = settings.delivery_attempts;
            blog_event_bus::build(&bus)
                .await
                .map_err(|e| storage(e.into()))?
        }
        ServiceKind::Gateway => blog_gateway::build(&blog_gateway::Config {
            posts_url: settings.posts_url.clone(),
            comments_url: settings.comments_url.clone(),
            query_url: settings.query_url.clone(),
            client: match &settings.client_url {
                Some(url) => ClientBackend::Url(url.clone()),
                None => ClientBackend::Dir(settings.client_dir.clone()),
            },
        }),
        ServiceKind::Client => Service::new(
            "client",
            blog_gateway::client_router(settings.client_dir.clone())
                .layer(tower_http::trace::TraceLayer::new_for_http()),
        ),
    })
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// A part running in this process.
pub struct Running {
    pub kind: ServiceKind,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        reachable(self.addr)
    }

    /// Stops gracefully: in-flight requests finish, background tasks end.
    pub async fn stop(self) -> Result<(), StartupError> {
        self.shutdown.cancel();
        match self.handle.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StartupError::Stopped(self.kind.name(), e.to_string())),
            Err(e) => Err(StartupError::Stopped(self.kind.name(), e.to_string())),
        }
    }

    /// Stops at once, as a crash would: tasks are dropped mid-flight.
    pub fn abort(self) {
        self.shutdown.cancel();
        self.handle.abort();
    }
}

/// Runs `service` on `listener` in the background.
pub fn spawn(
    kind: ServiceKind,
    service: Service,
    listener: TcpListener,
) -> Result<Running, StartupError> {
    let addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(service.run(listener, shutdown.clone()));
    Ok(Running {
        kind,
        addr,
        shutdown,
        handle,
    })
}

/// Waits until `GET {url}/readyz` answers 200.
pub async fn wait_ready(
    http: &HttpClient,
    kind: ServiceKind,
    url: &str,
    limit: Duration,
) -> Result<(), StartupError> {
    let started = Instant::now();
    let probe = format!("{url}/readyz");
    loop {
        if let Ok((status, _)) = http.get(&probe).await
            && status.is_success()
        {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(StartupError::NotReady(kind.name(), limit));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where each part of `blog up` listens.
pub type Ports = HashMap<ServiceKind, u16>;

/// The whole system in one process.
pub struct System {
    pub parts: Vec<Running>,
}

impl System {
    pub fn addr(&self, kind: ServiceKind) -> Option<SocketAddr> {
        self.parts.iter().find(|p| p.kind == kind).map(|p| p.addr)
    }

    pub fn url(&self, kind: ServiceKind) -> Option<String> {
        self.addr(kind).map(reachable)
    }

    pub async fn stop(self) -> Result<(), StartupError> {
        // All at once: a request in flight through the gateway (a live
        // stream) ends only when the service behind it stops.
        for part in &self.parts {
            part.shutdown.cancel();
        }
        let mut result = Ok(());
        for part in self.parts {
            if let Err(e) = part.stop().await {
                result = Err(e);
            }
        }
        result
    }
}

/// `base` with every part pointed at the others' actual addresses: the bus
/// URL, the bus's subscribers and the gateway's upstreams.
pub fn wire(base: &Settings, addrs: &HashMap<ServiceKind, SocketAddr>) -> Settings {
    let url_of = |kind: ServiceKind| {
        addrs
            .get(&kind)
            .map(|addr| reachable(*addr))
            .unwrap_or_default()
    };
    let mut settings = base.clone();
    if settings.embedded_bus() {
        settings.bus = BusConfig::Http {
            url: url_of(ServiceKind::EventBus),
        };
    }
    settings.subscribers = [
        ServiceKind::Posts,
        ServiceKind::Comments,
        ServiceKind::Query,
        ServiceKind::Moderation,
    ]
    .iter()
    .map(|kind| format!("{}/events", url_of(*kind)))
    .chain(base.extra_subscribers.iter().cloned())
    .collect();
    settings.posts_url = url_of(ServiceKind::Posts);
    settings.comments_url = url_of(ServiceKind::Comments);
    settings.query_url = url_of(ServiceKind::Query);
    settings
}

/// Starts the event bus, the four services and the gateway, wired to each
/// other by the addresses they actually got, and waits until all are ready.
pub async fn up(
    host: std::net::IpAddr,
    ports: &Ports,
    base: &Settings,
) -> Result<System, StartupError> {
    let port = |kind: ServiceKind| {
        ports
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_port())
    };
    let mut listeners = Vec::new();
    // On NATS there is no HTTP event bus to run.
    for kind in ServiceKind::UP
        .into_iter()
        .filter(|k| *k != ServiceKind::EventBus || base.embedded_bus())
    {
        listeners.push((kind, bind(SocketAddr::new(host, port(kind))).await?));
    }
    let addrs = listeners
        .iter()
        .map(|(kind, listener)| {
            let addr = listener.local_addr().map_err(|source| StartupError::Bind {
                addr: SocketAddr::new(host, port(*kind)),
                source,
            })?;
            Ok((*kind, addr))
        })
        .collect::<Result<HashMap<_, _>, StartupError>>()?;
    let settings = wire(base, &addrs);
    let mut parts = Vec::new();
    for (kind, listener) in listeners {
        let service = build(kind, &settings).await?;
        parts.push(spawn(kind, service, listener)?);
    }
    let system = System { parts };
    for part in &system.parts {
        wait_ready(
            &settings.http,
            part.kind,
            &part.url(),
            Duration::from_secs(30),
        )
        .await?;
    }
    Ok(system)
}
