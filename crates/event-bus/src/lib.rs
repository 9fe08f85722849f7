//! The event bus (course port 4005), made reliable: `POST /events` answers
//! only once the event is durably stored with a sequence number; every
//! subscriber gets every event, in order, at least once, from a cursor that
//! survives restarts; `GET /events[?after=SEQ]` replays the log.
//!
//! The log is its own table (the embedded bus), or the JetStream stream the
//! services use: the bus is then a bridge that lets course services, which
//! speak only HTTP, take part in a system on NATS.

mod delivery;
mod log;
mod routes;
mod undelivered;

use std::sync::Arc;

use blog_kit::client::HttpClient;
use blog_kit::http::Routes;
use blog_kit::http::Surface;
use blog_kit::openapi::Api;
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations, StorageConfig, Writes};

pub use delivery::Subscriber;
pub use log::{EventLog, LogError, LogStore};

pub const NAME: &str = "event-bus";
pub const DEFAULT_PORT: u16 = 4005;
/// Deliveries of one event to one subscriber before it is set aside: with
/// back-off from 50 ms doubling to 5 s, about 20 s of trying.
pub const DEFAULT_DELIVERY_ATTEMPTS: u32 = 10;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

#[derive(Debug, Clone)]
pub struct Config {
    /// The bus's own database: the log's table, the subscribers' cursors
    /// and the dead letters.
    pub storage: StorageConfig,
    /// Where the events are: the table, or the services' JetStream stream.
    pub log: LogStore,
    /// Each subscriber's `POST /events` URL.
    pub subscribers: Vec<String>,
    pub surface: Surface,
    pub http: HttpClient,
    /// Deliveries of one event to one subscriber before it is set aside.
    pub delivery_attempts: u32,
}

impl Config {
    pub fn new(storage: StorageConfig, subscribers: Vec<String>) -> Self {
        Self {
            storage,
            log: LogStore::Table,
            subscribers,
            surface: Surface::default(),
            http: HttpClient::default(),
            delivery_attempts: DEFAULT_DELIVERY_ATTEMPTS,
        }
    }
}

/// `blog_bus_last_seq` and each subscriber's `blog_bus_subscriber_lag`
/// (events stored but not yet delivered to it), read when scraped.
fn lag_gauges(
    log: Arc<EventLog>,
    subscribers: Vec<Arc<Subscriber>>,
) -> blog_kit::metrics::Registration {
    blog_kit::metrics::on_scrape(Arc::new(move || {
        let last = log.last_seq();
        metrics::gauge!("blog_bus_last_seq", "service" => NAME).set(last as f64);
        for subscriber in &subscribers {
            metrics::gauge!("blog_bus_subscriber_lag", "service" => NAME, "subscriber" => subscriber.url.clone())
                .set((last - subscriber.cursor()).max(0) as f64);
        }
        Box::pin(async {})
    }))
}

pub async fn build(config: &Config) -> Result<Service, LogError> {
    // Serial writes: the log numbers its events in commit order.
    let db = Db::open_with(&config.storage, NAME, &MIGRATIONS, Writes::Serial).await?;
    let log = Arc::new(EventLog::open(db.clone(), &config.log).await?);
    let mut subscribers = Vec::new();
    for url in &config.subscribers {
        subscribers.push(Arc::new(Subscriber::load(&db, url).await?));
    }
    let (ready_db, ready_log) = (db.clone(), log.clone());
    let ready: blog_kit::health::ReadyCheck = Arc::new(move || {
        let (db, log) = (ready_db.clone(), ready_log.clone());
        Box::pin(async move {
            db.ping().await.map_err(|e| format!("storage: {e}"))?;
            log.ready().await
        })
    });
    // Every route of the bus is between our parts (and course services).
    let routes = Routes {
        public: axum::Router::new(),
        internal: routes::router(log.clone(), subscribers.clone()),
        probes: blog_kit::health::routes(ready),
        api: Api {
            internal: routes::api(),
            probes: blog_kit::health::api(),
            ..Api::default()
        },
    };
    let router = blog_kit::http::finish(NAME, routes, &config.surface);
    let follow = log.clone();
    let lag = lag_gauges(log.clone(), subscribers.clone());
    let mut service = Service::new(NAME, router)
        .with_task(move |shutdown| follow.follow(shutdown))
        .with_task(move |shutdown| async move {
            let _lag = lag;
            shutdown.cancelled().await;
        });
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
