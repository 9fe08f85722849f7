//! The comments service (course port 4001): creates and lists a post's
//! comments. Emits `CommentCreated`; consumes `CommentModerated` and emits
//! `CommentUpdated` when a status changes.

mod domain;
mod handler;
mod routes;
mod store;

use blog_bus::{BuildError, Emitter, ServiceConfig};
use blog_kit::serve::Service;
use blog_storage::Migrations;

pub use domain::{CommentContent, PostId};
pub use handler::Moderated;

pub const NAME: &str = "comments";
pub const DEFAULT_PORT: u16 = 4001;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

pub async fn build(config: &ServiceConfig) -> Result<Service, BuildError> {
    let comments = Emitter::open(config, NAME, &MIGRATIONS, Moderated).await?;
    let public = routes::router(routes::AppState {
        db: comments.db.clone(),
        relay: comments.relay.clone(),
    });
    Ok(comments.service(public, routes::api(), &config.surface))
}
