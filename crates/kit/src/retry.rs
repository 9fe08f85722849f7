//! Retrying a fallible step with back-off until it succeeds or the service
//! stops: how background tasks ride out a peer that is down.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(2);

/// Runs `attempt` until it returns `Ok`, waiting 100 ms, then twice as long
/// each time up to 2 s, between failures (each logged with `what`). Returns
/// `None` when `shutdown` comes during a wait.
pub async fn until_ok<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "{what}");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(LONGEST);
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for: a
/// `select!` branch for work that is due at some time, or never.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let got = until_ok(&shutdown, "test", || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err("not yet") } else { Ok(n) } }
        })
        .await;
        assert_eq!(got, Some(3));

        shutdown.cancel();
        let never: Option<()> =
            until_ok(&shutdown, "test", || async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }
}
