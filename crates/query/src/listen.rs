//! With PostgreSQL, query replicas share one read model: each hears of every
//! change (whichever replica applied it) through `LISTEN`, to refresh its
//! cached answer and its live streams.

use std::sync::Arc;

use blog_kit::CancellationToken;
use blog_kit::retry::until_ok;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::UnboundedSender;

use crate::ReadModel;
use crate::handler::CHANNEL;
use crate::live::Changed;
use crate::model::Change;

pub async fn changes(
    url: String,
    model: Arc<ReadModel>,
    changed: UnboundedSender<Changed>,
    shutdown: CancellationToken,
) {
    let _ = until_ok(&shutdown, "change listener lost its connection", || async {
        listen(&url, &model, &changed, &shutdown)
            .await
            .inspect_err(|_| {
                // Whatever happened meanwhile is unknown: drop caches, resync streams.
                model.changed(Change::Everything);
                let _ = changed.send(Changed::Everything);
            })
    })
    .await;
}

async fn listen(
    url: &str,
    model: &ReadModel,
    changed: &UnboundedSender<Changed>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // Changes before LISTEN took effect were not heard.
    model.changed(Change::Everything);
    let _ = changed.send(Changed::Everything);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = listener.try_recv() => next?,
        };
        match next {
            Some(notification) => {
                // The payload is `<kind>:<post id>` (see the projector).
                let change = Change::from_notification(notification.payload());
                let live = Changed::from(&change);
                model.changed(change);
                let _ = changed.send(live);
            }
            None => return Err(sqlx::Error::PoolClosed),
        }
    }
}
