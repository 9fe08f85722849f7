use blog_kit::client::HttpClient;
use blog_kit::health::ReadyCheck;
use blog_kit::http::{CorsOrigins, DEFAULT_BODY_LIMIT};
use blog_storage::{Db, StorageConfig, StorageError};

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

/// Ready when the service's database and the bus both answer.
pub fn readiness(db: Db, bus: BusClient) -> ReadyCheck {
    std::sync::Arc::new(move || {
        let (db, bus) = (db.clone(), bus.clone());
        Box::pin(async move {
            db.ping().await.map_err(|e| format!("storage: {e}"))?;
            bus.reachable().await.map_err(|e| format!("bus: {e}"))?;
            Ok(())
        })
    })
}
