//! The moderation service (course port 4003): decides each comment once by a
//! [`Policy`] and emits `CommentModerated`. No routes but `/events`.

mod handler;
mod policy;

use blog_bus::{BuildError, Emitter, ServiceConfig};
use blog_kit::serve::Service;
use blog_storage::Migrations;

pub use handler::Moderator;
pub use policy::Policy;

pub const NAME: &str = "moderation";
pub const DEFAULT_PORT: u16 = 4003;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

pub async fn build(config: &ServiceConfig, policy: Policy) -> Result<Service, BuildError> {
    let moderation = Emitter::open(config, NAME, &MIGRATIONS, Moderator::new(policy)).await?;
    // No public routes: only the events routes and the probes.
    Ok(moderation.service(axum::Router::new(), Default::default(), &config.surface))
}
