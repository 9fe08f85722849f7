//! Building and running services.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blog_bus::BuildError;
use blog_bus::BusConfig;
use blog_kit::CancellationToken;
use blog_kit::client::HttpClient;
use blog_kit::serve::Service;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::parts;
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
    kind.part()
        .build(settings)
        .await
        .map_err(|source| StartupError::Build {
            service: kind.name(),
            source,
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
    /// How long after the start it answered ready (set by [`up`]).
    pub ready_after: Option<Duration>,
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
        ready_after: None,
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

/// Where each part listens; a part not listed takes its course port.
pub type Ports = HashMap<ServiceKind, u16>;

/// How the parts of a [`System`] find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// By the addresses they actually got: the bus URL, the bus's
    /// subscribers and the gateway's upstreams (`blog up`, the tests).
    Together,
    /// As the settings say (`blog serve`: the others run elsewhere).
    AsConfigured,
}

/// Parts running in this process: what `blog up` (all of them), `blog
/// serve` (one) and the tests (all, stopped, crashed and restarted at will)
/// run.
pub struct System {
    /// The settings the parts were built from, wired.
    pub settings: Settings,
    pub parts: Vec<Running>,
    addrs: HashMap<ServiceKind, SocketAddr>,
}

impl System {
    /// Binds every part of `kinds` on `host`, wires them, builds and starts
    /// them in order. It does not wait for readiness: see [`wait_ready`](Self::wait_ready).
    pub async fn start(
        host: std::net::IpAddr,
        ports: &Ports,
        kinds: &[ServiceKind],
        base: &Settings,
        wiring: Wiring,
    ) -> Result<Self, StartupError> {
        let mut listeners = Vec::new();
        let mut addrs = HashMap::new();
        for kind in kinds {
            let port = ports
                .get(kind)
                .copied()
                .unwrap_or_else(|| kind.default_port());
            let listener = bind(SocketAddr::new(host, port)).await?;
            let addr = listener.local_addr().map_err(|source| StartupError::Bind {
                addr: SocketAddr::new(host, port),
                source,
            })?;
            addrs.insert(*kind, addr);
            listeners.push((*kind, listener));
        }
        let mut settings = match wiring {
            Wiring::Together => wire(base, &addrs),
            Wiring::AsConfigured => base.clone(),
        };
        settings.limits.max_connections =
            connections_within_file_limit(settings.limits.max_connections, kinds.len());
        let mut parts = Vec::new();
        for (kind, listener) in listeners {
            let service = build(kind, &settings).await?;
            parts.push(spawn(kind, service, listener)?);
        }
        Ok(Self {
            settings,
            parts,
            addrs,
        })
    }

    /// Waits until every part answers ready, noting when each did.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), StartupError> {
        let started = Instant::now();
        for part in &mut self.parts {
            wait_ready(&self.settings.http, part.kind, &part.url(), limit).await?;
            part.ready_after = Some(started.elapsed());
        }
        Ok(())
    }

    /// Where part `kind` listens (also while it is stopped).
    pub fn addr(&self, kind: ServiceKind) -> Option<SocketAddr> {
        self.addrs.get(&kind).copied()
    }

    pub fn url(&self, kind: ServiceKind) -> Option<String> {
        self.addr(kind).map(reachable)
    }

    fn take(&mut self, kind: ServiceKind) -> Option<Running> {
        let i = self.parts.iter().position(|p| p.kind == kind)?;
        Some(self.parts.remove(i))
    }

    /// Stops one part gracefully.
    pub async fn stop_part(&mut self, kind: ServiceKind) -> Result<(), StartupError> {
        match self.take(kind) {
            Some(running) => running.stop().await,
            None => Ok(()),
        }
    }

    /// Stops one part as a crash would: its tasks are dropped wherever they are.
    pub async fn crash(&mut self, kind: ServiceKind) {
        if let Some(running) = self.take(kind) {
            running.abort();
            // Let the runtime drop the aborted tasks and close the listener.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a stopped part again on its address, from its data, trying to
    /// bind for up to `limit` (the old socket may linger briefly).
    pub async fn restart(
        &mut self,
        kind: ServiceKind,
        limit: Duration,
    ) -> Result<(), StartupError> {
        let addr = self.addr(kind).unwrap_or_else(|| {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), kind.default_port())
        });
        let started = Instant::now();
        let listener = loop {
            match bind(addr).await {
                Ok(listener) => break listener,
                Err(_) if started.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let service = build(kind, &self.settings).await?;
        self.parts.push(spawn(kind, service, listener)?);
        Ok(())
    }

    /// One more replica of a part, on a free port, sharing its storage and
    /// its bus consumer; ready when returned.
    pub async fn spawn_replica(&self, kind: ServiceKind) -> Result<Running, StartupError> {
        let listener = bind(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0)).await?;
        let service = build(kind, &self.settings).await?;
        let running = spawn(kind, service, listener)?;
        wait_ready(
            &self.settings.http,
            kind,
            &running.url(),
            Duration::from_secs(30),
        )
        .await?;
        Ok(running)
    }

    /// Whether part `kind` is running.
    pub fn is_running(&self, kind: ServiceKind) -> bool {
        self.parts.iter().any(|p| p.kind == kind)
    }

    /// Stops every part: all at once, since a request in flight through
    /// the gateway (a live stream) ends only when the service behind it stops.
    pub async fn stop(self) -> Result<(), StartupError> {
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

    /// Stops every part at once, as a crash would.
    pub fn abort(&mut self) {
        for part in self.parts.drain(..) {
            part.abort();
        }
    }
}

/// Open files kept for what is not a client's connection: databases, the
/// bus, connections between parts, logs.
const RESERVED_FILES: u64 = 256;

/// Fewer connections per listener than this is worth a warning.
const LOW_CONNECTIONS: usize = 1024;

/// At most `wanted` connections per listener, and few enough that the
/// `listeners` of this process all full stay within its open-file limit
/// (with [`RESERVED_FILES`] kept): a flood of connections on one port
/// waits in that port's backlog instead of taking the files every part
/// needs to go on serving.
pub fn connections_within_file_limit(wanted: usize, listeners: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return wanted;
    };
    let fits = soft.saturating_sub(RESERVED_FILES) / listeners.max(1) as u64;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(16);
    if fits < wanted {
        // Said aloud only when it leaves few: a machine's usual limit
        // (tens of thousands) lowers the default a little, which is fine.
        if fits < LOW_CONNECTIONS {
            tracing::warn!(
                open_files = soft,
                listeners,
                max_connections = fits,
                "the open-file limit is low: at most {fits} connections per listener"
            );
        } else {
            tracing::debug!(
                open_files = soft,
                listeners,
                max_connections = fits,
                "connections per listener lowered to fit the open-file limit"
            );
        }
    }
    wanted.min(fits)
}

/// `base` with every part pointed at the others' actual addresses: the bus
/// URL, the bus's subscribers and the gateway's upstreams. On NATS our
/// services read the stream themselves, so the bus (a bridge there) delivers
/// only to the extra subscribers.
pub fn wire(base: &Settings, addrs: &HashMap<ServiceKind, SocketAddr>) -> Settings {
    let mut settings = base.clone();
    for (kind, addr) in addrs {
        settings.urls.insert(*kind, reachable(*addr));
    }
    let ours = if settings.embedded_bus() {
        settings.bus = BusConfig::Http {
            url: settings.url(parts::BUS),
        };
        parts::subscribers(|part| settings.url(part.kind))
    } else {
        Vec::new()
    };
    settings.subscribers = ours
        .into_iter()
        .chain(base.extra_subscribers.iter().cloned())
        .collect();
    settings
}

/// Starts every part of `blog up`, wired to each other, and waits until all
/// are ready.
pub async fn up(
    host: std::net::IpAddr,
    ports: &Ports,
    base: &Settings,
) -> Result<System, StartupError> {
    let kinds: Vec<ServiceKind> = parts::up().map(|part| part.kind).collect();
    let mut system = System::start(host, ports, &kinds, base, Wiring::Together).await?;
    system.wait_ready(Duration::from_secs(30)).await?;
    Ok(system)
}
