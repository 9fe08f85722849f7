//! Serving a router until shutdown, then draining in-flight requests.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What keeps slow or greedy clients from taking a listener down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not sent a request's whole head this long
    /// after starting it is closed.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a service's connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// On the process's runtime, with everything else.
    #[default]
    Foreground,
    /// On threads of their own at a lower priority (see
    /// [`crate::background`]): for connections whose work comes in bursts,
    /// so that it never queues ahead of the process's other requests.
    Background,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
    connections: Connections,
) -> std::io::Result<()> {
    // Another runtime than this one, if the connections go elsewhere.
    let elsewhere = match connections {
        Connections::Foreground => None,
        Connections::Background => crate::background::handle(),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Said once each time the limit is reached, not for every connection
    // that waits while it lasts.
    let mut full = false;
    loop {
        let now_full = slots.available_permits() == 0;
        if now_full && !full {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; new connections wait"
            );
        }
        full = now_full;
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, most likely: the others'
                    // connections go on; try again shortly.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers go out at once: a small answer must not wait on Nagle's
        // algorithm for the peer's delayed acknowledgement.
        let _ = tcp.set_nodelay(true);
        let moved = match elsewhere {
            Some(runtime) => moved_to(runtime, tcp),
            None => Ok(tcp),
        };
        let tcp = match moved {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a connection");
                continue;
            }
        };
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone())));
        let served = async move {
            let _ = connection.await;
            drop(permit);
        };
        match elsewhere {
            Some(runtime) => drop(runtime.spawn(served)),
            None => drop(tokio::spawn(served)),
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The connection, its readiness watched by `runtime`'s driver: the
/// runtime that polls it is then woken without a hop through another.
fn moved_to(
    runtime: &tokio::runtime::Handle,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tcp.into_std()?;
    let _entered = runtime.enter();
    tokio::net::TcpStream::from_std(tcp)
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before it kills a
/// pod). The handlers are installed when this is called, not when it is
/// first awaited: a signal that comes in between (right after `blog up`
/// said it was up) is not lost to the default action, which would end the
/// process without a clean stop. Call it inside the runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let received = |signal: std::io::Result<tokio::signal::unix::Signal>| async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(terminate) => {},
            () = received(interrupt) => {},
        }
    }
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long a stopping service waits for in-flight requests.
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

type Task =
    Box<dyn FnOnce(CancellationToken) -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// A built service: its routes and the background tasks it needs (outbox
/// relay, catch-up, deliveries). What `blog up` and `blog serve` run.
pub struct Service {
    pub name: &'static str,
    pub router: Router,
    pub limits: ConnectionLimits,
    pub connections: Connections,
    tasks: Vec<Task>,
}

impl Service {
    pub fn new(name: &'static str, router: Router) -> Self {
        Self {
            name,
            router,
            limits: ConnectionLimits::default(),
            connections: Connections::default(),
            tasks: Vec::new(),
        }
    }

    /// Adds a task that runs beside the server and must return soon after
    /// its token is cancelled.
    pub fn with_task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push(Box::new(move |token| Box::pin(task(token))));
        self
    }

    /// Serves until `shutdown`, then stops the tasks and waits for them.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let handles: Vec<_> = self
            .tasks
            .into_iter()
            .map(|task| tokio::spawn(task(shutdown.child_token())))
            .collect();
        let name = self.name;
        let served = tokio::select! {
            served = serve(listener, self.router, shutdown.clone(), self.limits, self.connections) => served,
            // Connections still open this long after shutdown (a client
            // that never lets go) are dropped rather than waited for.
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(DRAIN_LIMIT).await;
            } => {
                tracing::warn!(service = name, "connections still open after {DRAIN_LIMIT:?}; closing them");
                Ok(())
            }
        };
        shutdown.cancel();
        // Every task watches the token; one that misses it (stuck on a peer
        // that never answers) must not hold the stop up for ever. Each is
        // safe to drop at any point, as a crash would.
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        let mut aborted = 0;
        for handle in handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                abort.abort();
                aborted += 1;
            }
        }
        if aborted > 0 {
            tracing::warn!(
                service = name,
                aborted,
                "background tasks still running {DRAIN_LIMIT:?} after the stop; aborted"
            );
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread that answers `GET /` on a listener serving
    /// its connections as `connections` says.
    async fn answered_on(connections: Connections) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = Router::new().route(
            "/",
            axum::routing::get(|| async {
                std::thread::current().name().unwrap_or_default().to_owned()
            }),
        );
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            app,
            shutdown.clone(),
            ConnectionLimits::default(),
            connections,
        ));
        let mut tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("answer");
        shutdown.cancel();
        served.await.expect("joined").expect("stopped cleanly");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        body.to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn background_connections_are_served_by_the_background_threads() {
        assert_eq!(
            answered_on(Connections::Background).await,
            "blog-background"
        );
        assert_ne!(
            answered_on(Connections::Foreground).await,
            "blog-background"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_stop_does_not_hold_it_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stuck = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dropped = stuck.clone();
        let service = Service::new("test", Router::new()).with_task(move |_ignored| async move {
            // Flags its own drop: aborted, not finished.
            struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _flag = Flag(dropped);
            std::future::pending::<()>().await;
        });
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(service.run(listener, shutdown.clone()));
        tokio::task::yield_now().await;
        shutdown.cancel();
        running.await.expect("joined").expect("stopped cleanly");
        tokio::task::yield_now().await;
        assert!(
            !stuck.load(std::sync::atomic::Ordering::Relaxed),
            "the stuck task was dropped"
        );
    }
}
