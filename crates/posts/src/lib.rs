//! The posts service (course port 4000): creates posts and lists them.
//! Emits `PostCreated`; consumes nothing.

mod domain;
mod routes;
mod store;

use blog_bus::{BuildError, ConsumesNothing, Emitter, ServiceConfig};
use blog_kit::serve::Service;
use blog_storage::Migrations;

pub use domain::PostTitle;

pub const NAME: &str = "posts";
pub const DEFAULT_PORT: u16 = 4000;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// Opens the posts database and builds the service.
pub async fn build(config: &ServiceConfig) -> Result<Service, BuildError> {
    let posts = Emitter::open(config, NAME, &MIGRATIONS, ConsumesNothing).await?;
    let public = routes::router(routes::AppState {
        db: posts.db.clone(),
        relay: posts.relay.clone(),
    });
    Ok(posts.service(public, routes::api(), &config.surface))
}
