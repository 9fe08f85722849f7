//! The event bus (course port 4005), made reliable: `POST /events` answers
//! only once the event is durably stored with a sequence number; every
//! subscriber gets every event, in order, at least once, from a cursor that
//! survives restarts; `GET /events[?after=SEQ]` replays the log.

mod delivery;
mod log;
mod routes;
mod undelivered;

use std::sync::Arc;

use blog_kit::client::HttpClient;
use blog_kit::http::{CorsOrigins, DEFAULT_BODY_LIMIT};
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations, StorageConfig, StorageError, Writes};

pub use delivery::Subscriber;
pub use log::EventLog;

pub const NAME: &str = "event-bus";
pub const DEFAULT_PORT: u16 = 4005;
/// Deliveries of one event to one subscriber before it is set aside: with
/// back-off from 50 ms doubling to 5 s, about 20 s of trying.
pub const DEFAULT_DELIVERY_ATTEMPTS: u32 = 10;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// The course's subscribers, on localhost.
pub fn default_subscribers() -> Vec<String> {
    [4000, 4001, 4002, 4003]
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}/events"))
        .collect()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageConfig,
    /// Each subscriber's `POST /events` URL.
    pub subscribers: Vec<String>,
    pub cors: CorsOrigins,
    pub body_limit: usize,
    pub http: HttpClient,
    /// Deliveries of one event to one subscriber before it is set aside.
    pub delivery_attempts: u32,
}

impl Config {
    pub fn new(storage: StorageConfig, subscribers: Vec<String>) -> Self {
        Self {
            storage,
            subscribers,
            cors: CorsOrigins::Any,
            body_limit: DEFAULT_BODY_LIMIT,
            http: HttpClient::default(),
            delivery_attempts: DEFAULT_DELIVERY_ATTEMPTS,
        }
    }
}

pub async fn build(config: &Config) -> Result<Service, StorageError> {
    // Serial writes: the log numbers its events in commit order.
    let db = Db::open_with(&config.storage, "event-bus", &MIGRATIONS, Writes::Serial).await?;
    let log = Arc::new(EventLog::open(db.clone()).await?);
    let mut subscribers = Vec::new();
    for url in &config.subscribers {
        subscribers.push(Arc::new(Subscriber::load(&db, url).await?));
    }
    let ready_db = db.clone();
    let ready: blog_kit::health::ReadyCheck = Arc::new(move || {
        let db = ready_db.clone();
        Box::pin(async move {
            db.ping().await.map_err(|e| format!("storage: {e}"))?;
            db.writable()
                .await
                .map_err(|e| format!("storage: cannot append: {e}"))
        })
    });
    let router =
        routes::router(log.clone(), subscribers.clone()).merge(blog_kit::health::routes(ready));
    let router = blog_kit::http::finish(router, &config.cors, config.body_limit);
    let mut service = Service::new(NAME, router);
    for subscriber in subscribers {
        let delivery = delivery::Delivery {
            log: log.clone(),
            subscriber,
            http: config.http.clone(),
            attempts: config.delivery_attempts.max(1),
        };
        service = service.with_task(move |shutdown| delivery.run(shutdown));
    }
    Ok(service)
}
