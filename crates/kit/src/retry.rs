//! Retrying a fallible step with back-off until it succeeds or the service
//! stops: how background tasks ride out a peer that is down.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits between attempts: `first`, then twice as long each time up to
/// `longest`; [`reset`](Self::reset) after a success. Every retry loop of
/// the system paces itself with one.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest,
            next: first,
        }
    }

    /// The wait before the next attempt (then the one after grows).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.longest);
        wait
    }

    /// The longest wait.
    pub fn longest(&self) -> Duration {
        self.longest
    }

    /// What the next wait will be, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The pace of [`until_ok`]: 100 ms, doubling, at most 2 s.
pub const DEFAULT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

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
    let mut backoff = DEFAULT;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "{what}");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
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

    #[test]
    fn waits_double_up_to_the_longest_and_start_over_on_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.peek(), Duration::from_millis(50));
    }

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
