//! The query service (course port 4002): a read model of every post with its
//! comments, built only from events, served as `GET /posts` and pushed live
//! as server-sent events on `GET /posts/live`.

mod handler;
mod listen;
mod live;
mod model;
mod routes;

use std::sync::Arc;

use blog_bus::{BuildError, Consumer, ServiceConfig, consume, events_route, readiness};
use blog_kit::CancellationToken;
use blog_kit::serve::Service;
use blog_storage::{Db, Engine, Migrations};

pub use handler::Projector;
pub use model::ReadModel;

pub const NAME: &str = "query";
pub const DEFAULT_PORT: u16 = 4002;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

pub async fn build(config: &ServiceConfig) -> Result<Service, BuildError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.connect_bus().await?;
    let model = Arc::new(ReadModel::new(db.clone()));
    let model_for_listener = model.clone();
    let (changed_tx, changed_rx) = tokio::sync::mpsc::unbounded_channel();
    let live = live::Live::new(model.clone());
    // Live streams end when the service stops, so shutdown does not wait on them.
    let stop = CancellationToken::new();
    // Replicas share a PostgreSQL read model; each hears of changes from it.
    let shared = db.engine() == Engine::Postgres;
    let consumer = Arc::new(Consumer::new(
        db.clone(),
        Projector::new(model.clone(), changed_tx.clone(), shared),
    ));
    let router = routes::router(routes::AppState {
        model,
        live: live.clone(),
        stop: stop.clone(),
    })
    .merge(events_route(consumer.clone()))
    .merge(blog_kit::health::routes(readiness(
        db.clone(),
        bus.clone(),
        None,
    )));
    let router = blog_kit::http::finish(router, &config.cors, config.body_limit);
    let mut service = Service::new(NAME, router);
    if shared {
        let (url, model) = (db.url().to_owned(), model_for_listener);
        service =
            service.with_task(move |shutdown| listen::changes(url, model, changed_tx, shutdown));
    }
    Ok(service
        .with_task(move |shutdown| consume(consumer, bus, NAME, shutdown))
        .with_task(move |shutdown| live.render(changed_rx, shutdown))
        .with_task(move |shutdown| async move {
            shutdown.cancelled().await;
            stop.cancel();
        }))
}
