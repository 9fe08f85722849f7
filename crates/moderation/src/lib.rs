//! The moderation service (course port 4003): decides each comment once by a
//! [`Policy`] and emits `CommentModerated`. No routes but `/events`.

mod handler;
mod policy;

use std::sync::Arc;

use blog_bus::{
    BuildError, Consumer, RelayState, ServiceConfig, consume, events_route, readiness, relay,
};
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations};

pub use handler::Moderator;
pub use policy::Policy;

pub const NAME: &str = "moderation";
pub const DEFAULT_PORT: u16 = 4003;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

pub async fn build(config: &ServiceConfig, policy: Policy) -> Result<Service, BuildError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.connect_bus().await?;
    let consumer = Arc::new(Consumer::new(db.clone(), Moderator::new(policy)));
    let relay_state = Arc::new(RelayState::default());
    let router = events_route(consumer.clone()).merge(blog_kit::health::routes(readiness(
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
