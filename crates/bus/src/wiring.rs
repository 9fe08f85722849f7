use std::sync::Arc;

use blog_kit::client::HttpClient;
use blog_kit::health::ReadyCheck;
use blog_kit::http::{CorsOrigins, DEFAULT_BODY_LIMIT};
use blog_storage::{Db, StorageConfig, StorageError};

use crate::relay::RelayState;
use crate::{BusClient, BusConfig, BusError};

/// What every service is configured with, whatever else it needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub storage: StorageConfig,
    pub bus: BusConfig,
    pub cors: CorsOrigins,
    pub body_limit: usize,
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
            cors: CorsOrigins::Any,
            body_limit: DEFAULT_BODY_LIMIT,
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
