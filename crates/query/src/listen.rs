//! With PostgreSQL, query replicas share one read model: each hears of every
//! change (whichever replica applied it) through `LISTEN`, to refresh its
//! cached answer and its live streams.

use std::sync::Arc;
use std::time::Duration;

use blog_kit::CancellationToken;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::UnboundedSender;

use crate::ReadModel;
use crate::handler::CHANNEL;
use crate::live::EVERYTHING;

pub async fn changes(
    url: String,
    model: Arc<ReadModel>,
    changed: UnboundedSender<String>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&url, &model, &changed, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "change listener lost its connection");
                // Whatever happened meanwhile is unknown: drop caches, resync streams.
                model.changed();
                let _ = changed.send(EVERYTHING.to_owned());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn listen(
    url: &str,
    model: &ReadModel,
    changed: &UnboundedSender<String>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // Changes before LISTEN took effect were not heard.
    model.changed();
    let _ = changed.send(EVERYTHING.to_owned());
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = listener.try_recv() => next?,
        };
        match next {
            Some(notification) => {
                model.changed();
                let _ = changed.send(notification.payload().to_owned());
            }
            None => return Err(sqlx::Error::PoolClosed),
        }
    }
}
