//! The comments service (course port 4001): creates and lists a post's
//! comments. Emits `CommentCreated`; consumes `CommentModerated` and emits
//! `CommentUpdated` when a status changes.

mod domain;
mod handler;
mod routes;
mod store;

use std::sync::Arc;

use blog_bus::{
    BuildError, Consumer, RelayState, ServiceConfig, consume, events_route, readiness, relay,
};
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations};

pub use domain::{CommentContent, PostId};
pub use handler::Moderated;

pub const NAME: &str = "comments";
pub const DEFAULT_PORT: u16 = 4001;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

pub async fn build(config: &ServiceConfig) -> Result<Service, BuildError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.connect_bus().await?;
    let consumer = Arc::new(Consumer::new(db.clone(), Moderated));
    let relay_state = Arc::new(RelayState::default());
    let router = routes::router(routes::AppState {
        db: db.clone(),
        relay: relay_state.clone(),
    })
    .merge(events_route(consumer.clone()))
    .merge(blog_kit::health::routes(readiness(
        db.clone(),
        bus.clone(),
        Some(relay_state.clone()),
    )));
    let router = blog_kit::http::finish(router, &config.cors, config.body_limit);
    let catch_up_bus = bus.clone();
    Ok(Service::new(NAME, router)
        .with_task(move |shutdown| relay(db, bus, relay_state, shutdown))
        .with_task(move |shutdown| consume(consumer, catch_up_bus, NAME, shutdown)))
}
