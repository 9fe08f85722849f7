use std::sync::Arc;

use axum::Router;
use blog_kit::client::HttpClient;
use blog_kit::health::ReadyCheck;
use blog_kit::http::Routes;
use blog_kit::http::Surface;
use blog_kit::openapi::Api;
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations, StorageConfig, StorageError};
use utoipa::openapi::OpenApi;

use crate::relay::{RelayState, relay};
use crate::{BusClient, BusConfig, BusError, Consumer, Handler, consume, events_route};

/// What every service is configured with, whatever else it needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub storage: StorageConfig,
    pub bus: BusConfig,
    pub surface: Surface,
    pub http: HttpClient,
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ServiceConfig {
    pub fn new(storage: StorageConfig, bus: BusConfig) -> Self {
        Self {
            storage,
            bus,
            surface: Surface::default(),
            http: HttpClient::default(),
        }
    }

    pub async fn connect_bus(&self) -> Result<BusClient, BusError> {
        BusClient::connect(&self.bus, self.http.clone()).await
    }
}

/// Ready when the service's database answers and takes writes, the bus
/// answers, and (for a service that emits events) its relay can publish.
pub fn readiness(db: Db, bus: BusClient, relay: Option<Arc<RelayState>>) -> ReadyCheck {
    Arc::new(move || {
        let (db, bus, relay) = (db.clone(), bus.clone(), relay.clone());
        Box::pin(async move {
            let mut problems = Vec::new();
            if let Err(e) = db.ping().await {
                problems.push(format!("storage: {e}"));
            } else if let Err(e) = db.writable().await {
                problems.push(format!("storage: {e}"));
            }
            if let Err(e) = bus.reachable().await {
                problems.push(format!("bus: {e}"));
            }
            if let Some(Err(e)) = relay.map(|relay| relay.ready()) {
                problems.push(e);
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    })
}

/// What every service that emits events is made of: its database, its bus,
/// its consumer (what it does with the events it applies) and its outbox
/// relay. The service adds only its public routes; the events routes, the
/// probes, the relay and the consumption are wired here, the same for all.
pub struct Emitter<H> {
    pub name: &'static str,
    pub db: Db,
    pub bus: BusClient,
    pub consumer: Arc<Consumer<H>>,
    pub relay: Arc<RelayState>,
}

impl<H: Handler> Emitter<H> {
    /// Opens `name`'s database (migrated) and connects to the bus.
    pub async fn open(
        config: &ServiceConfig,
        name: &'static str,
        migrations: &'static Migrations,
        handler: H,
    ) -> Result<Self, BuildError> {
        let db = Db::open(&config.storage, name, migrations).await?;
        let bus = config.connect_bus().await?;
        Ok(Self {
            name,
            consumer: Arc::new(Consumer::new(db.clone(), handler)),
            db,
            bus,
            relay: Arc::new(RelayState::default()),
        })
    }

    /// The service: `public` (what browsers call, described by
    /// `public_api`) beside the events routes and the probes, with the
    /// relay running and, when the handler consumes anything, the
    /// consumption.
    pub fn service(self, public: Router, public_api: OpenApi, surface: &Surface) -> Service {
        let routes = Routes {
            public,
            internal: events_route(self.consumer.clone()),
            probes: blog_kit::health::routes(readiness(
                self.db.clone(),
                self.bus.clone(),
                Some(self.relay.clone()),
            )),
            api: Api {
                public: public_api,
                internal: crate::events_api(),
                probes: blog_kit::health::api(),
            },
        };
        let Self {
            name,
            db,
            bus,
            consumer,
            relay: state,
        } = self;
        let consuming = bus.clone();
        let service = Service::new(name, blog_kit::http::finish(name, routes, surface))
            .with_task(move |shutdown| relay(db, bus, state, shutdown));
        if H::CONSUMES.is_empty() {
            service
        } else {
            service.with_task(move |shutdown| consume(consumer, consuming, name, shutdown))
        }
    }
}
