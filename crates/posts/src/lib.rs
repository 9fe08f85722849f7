//! The posts service (course port 4000): creates posts and lists them.
//! Emits `PostCreated`; consumes nothing.

mod domain;
mod routes;
mod store;

use std::sync::Arc;

use blog_bus::{
    BuildError, Consumer, ConsumesNothing, RelayState, ServiceConfig, events_route, readiness,
    relay,
};
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations};

pub use domain::PostTitle;

pub const NAME: &str = "posts";
pub const DEFAULT_PORT: u16 = 4000;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// Opens the posts database and builds the service.
pub async fn build(config: &ServiceConfig) -> Result<Service, BuildError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.connect_bus().await?;
    let relay_state = Arc::new(RelayState::default());
    let router = routes::router(routes::AppState {
        db: db.clone(),
        relay: relay_state.clone(),
    })
    .merge(events_route(Arc::new(Consumer::new(
        db.clone(),
        ConsumesNothing,
    ))))
    .merge(blog_kit::health::routes(readiness(
        db.clone(),
        bus.clone(),
        Some(relay_state.clone()),
    )));
    let router = blog_kit::http::finish(router, &config.cors, config.body_limit);
    Ok(Service::new(NAME, router).with_task(move |shutdown| relay(db, bus, relay_state, shutdown)))
}
