//! The query service (course port 4002): a read model of every post with its
//! comments, built only from events, served as `GET /posts` and pushed live
//! as server-sent events on `GET /posts/live`.

mod frame;
mod handler;
mod listen;
mod live;
mod model;
mod routes;

use std::sync::Arc;

use blog_bus::{
    BuildError, Consumer, Rebuilder, ServiceConfig, consume, events_route, readiness,
    rebuild_routes,
};
use blog_kit::CancellationToken;
use blog_kit::http::Routes;
use blog_kit::openapi::Api;
use blog_kit::serve::Service;
use blog_storage::{Db, Migrations};

pub use handler::Projector;
pub use model::ReadModel;

pub const NAME: &str = "query";
pub const DEFAULT_PORT: u16 = 4002;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// Live streams open at once unless configured: about 16 KiB each when idle.
pub const DEFAULT_MAX_LIVE_STREAMS: usize = 4096;

/// Builds the service; at most `max_live_streams` live streams at once.
pub async fn build(config: &ServiceConfig, max_live_streams: usize) -> Result<Service, BuildError> {
    let db = Db::open(&config.storage, NAME, &MIGRATIONS).await?;
    let bus = config.connect_bus().await?;
    let model = Arc::new(ReadModel::new(db.clone()));
    let model_for_listener = model.clone();
    let model_for_rebuild = model.clone();
    let (changed_tx, changed_rx) = tokio::sync::mpsc::unbounded_channel();
    let live = live::Live::new(model.clone(), max_live_streams);
    // Live streams end when the service stops, so shutdown does not wait on them.
    let stop = CancellationToken::new();
    // Replicas share a PostgreSQL read model; each hears of changes from it.
    let announce = handler::Announce::for_engine(db.engine());
    let consumer = Arc::new(Consumer::new(
        db.clone(),
        Projector::new(model.clone(), changed_tx.clone(), announce),
    ));
    let rebuilder = Rebuilder::new(
        consumer.clone(),
        bus.clone(),
        handler::reset(model_for_rebuild, changed_tx.clone(), announce),
        stop.clone(),
    );
    // A rebuild cut off by a stop or a crash goes on.
    rebuilder.resume();
    let routes = Routes {
        public: routes::router(routes::AppState {
            model,
            live: live.clone(),
            stop: stop.clone(),
        }),
        internal: events_route(consumer.clone()).merge(rebuild_routes(rebuilder)),
        probes: blog_kit::health::routes(readiness(db.clone(), bus.clone(), None)),
        api: Api {
            public: routes::api(),
            internal: blog_bus::events_api().merge_from(blog_bus::rebuild_api()),
            probes: blog_kit::health::api(),
        },
    };
    let router = blog_kit::http::finish(NAME, routes, &config.surface);
    let mut service = Service::new(NAME, router);
    if announce == handler::Announce::ThroughDatabase {
        let (url, model) = (db.url().to_owned(), model_for_listener);
        service =
            service.with_task(move |shutdown| listen::changes(url, model, changed_tx, shutdown));
    }
    Ok(service
        .with_task(move |shutdown| consume(consumer, bus, NAME, shutdown))
        .with_task(move |shutdown| async move {
            // `blog_live_streams`, read when scraped, while the service runs.
            let counted = live.clone();
            let _gauge = blog_kit::metrics::on_scrape(Arc::new(move || {
                metrics::gauge!("blog_live_streams", "service" => NAME).set(counted.open() as f64);
                Box::pin(async {})
            }));
            // With the streams it wakes: a frame's send wakes every one of
            // them, and that must not hold a thread the writes need.
            blog_kit::background::run(live.render(changed_rx, shutdown)).await;
        })
        .with_task(move |shutdown| async move {
            shutdown.cancelled().await;
            stop.cancel();
        }))
}
