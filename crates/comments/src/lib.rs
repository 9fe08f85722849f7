//! The comments service (course port 4001): creates and lists a post's
//! comments. Emits `CommentCreated`; consumes `CommentModerated` and emits
//! `CommentUpdated` when a status changes.

mod domain;
mod handler;
mod routes;
mod store;

use std::sync::Arc;

use blog_bus::{Consumer, ServiceConfig, catch_up, events_route, readiness, relay};
use blog_kit::serve::Service;
use blog_storage::{Db, Migrator, StorageError};

pub use domain::{CommentContent, PostId};
pub use handler::Moderated;

pub const NAME: &str = "comments";
pub const DEFAULT_PORT: u16 = 4001;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

pub async fn build(config: &ServiceConfig) -> Result<Service, StorageError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.bus_client();
    let consumer = Arc::new(Consumer::new(db.clone(), Moderated));
    let router = routes::router(Arc::new(db.clone()))
        .merge(events_route(consumer.clone()))
        .merge(blog_kit::health::routes(readiness(db.clone(), bus.clone())));
    let router = blog_kit::http::finish(router, &config.cors, config.body_limit);
    let catch_up_bus = bus.clone();
    Ok(Service::new(NAME, router)
        .with_task(move |shutdown| relay(db, bus, shutdown))
        .with_task(move |shutdown| catch_up(consumer, catch_up_bus, shutdown)))
}
