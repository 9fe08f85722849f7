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
    /// Those whose first request is `GET` of this path (or below it) on the
    /// background threads (see [`crate::background`]), the others on the
    /// process's runtime: for a stream whose work comes in bursts (a frame
    /// that wakes thousands of them), so that it never queues ahead of the
    /// process's other requests, its probes, reads and event deliveries.
    BackgroundFor(&'static str),
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
    if let Connections::BackgroundFor(_) = connections {
        // Started now rather than by the first stream, which would wait.
        let _ = crate::background::handle();
    }
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
        let (http, app, watcher) = (http.clone(), app.clone(), graceful.watcher());
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let tcp = match connections {
                Connections::Foreground => Placed::Here(tcp),
                Connections::BackgroundFor(path) => tokio::select! {
                    () = stopping.cancelled() => Placed::Gone,
                    placed = placed(tcp, path, limits.header_read_timeout) => placed,
                },
            };
            let served = move |tcp| async move {
                let connection =
                    http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
                let _ = watcher.watch(connection).await;
                drop(permit);
            };
            match tcp {
                Placed::Here(tcp) => served(tcp).await,
                Placed::There(runtime, tcp) => drop(runtime.spawn(served(tcp))),
                Placed::Gone => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Where a connection is served: on this runtime, moved to another, or not
/// at all.
enum Placed {
    Here(tokio::net::TcpStream),
    There(&'static tokio::runtime::Handle, tokio::net::TcpStream),
    Gone,
}

/// Looks at the connection's first bytes, without taking them, and moves
/// it to the background threads if its first request is `GET path` or
/// `GET path/...` or `GET path?...`; otherwise it stays here. A connection
/// that sends nothing within `patience` (the header-read timeout) is
/// closed, as it would be if it were read.
async fn placed(tcp: tokio::net::TcpStream, path: &str, patience: Duration) -> Placed {
    let wanted = format!("GET {path}");
    let mut head = vec![0u8; wanted.len() + 1];
    let n = match tokio::time::timeout(patience, tcp.peek(&mut head)).await {
        Ok(Ok(n)) if n > 0 => n,
        // Closed, failed, or silent for too long.
        _ => return Placed::Gone,
    };
    let head = &head[..n];
    let for_background = head.starts_with(wanted.as_bytes())
        && head
            .get(wanted.len())
            .is_none_or(|next| matches!(next, b' ' | b'/' | b'?'));
    let runtime = match for_background.then(crate::background::handle).flatten() {
        Some(runtime) => runtime,
        None => return Placed::Here(tcp),
    };
    // The connection's readiness is then watched by the runtime that polls
    // it, which is woken without a hop through this one.
    let moved = tcp.into_std().and_then(|tcp| {
        let _entered = runtime.enter();
        tokio::net::TcpStream::from_std(tcp)
    });
    match moved {
        Ok(tcp) => Placed::There(runtime, tcp),
        Err(e) => {
            // The socket went with the failed move: nothing left to serve.
            tracing::warn!(error = %e, "cannot serve a connection");
            Placed::Gone
        }
    }
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

    /// The name of the thread that answers `GET path` on a listener
    /// serving its connections as `connections` says.
    async fn answered_on(connections: Connections, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let thread = || async { std::thread::current().name().unwrap_or_default().to_owned() };
        let app = Router::new()
            .route("/posts", axum::routing::get(thread))
            .route("/posts/live", axum::routing::get(thread))
            .route("/posts/lively", axum::routing::get(thread));
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
        tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
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
    async fn only_the_named_streams_are_served_by_the_background_threads() {
        let live = Connections::BackgroundFor("/posts/live");
        assert_eq!(answered_on(live, "/posts/live").await, "blog-background");
        assert_eq!(
            answered_on(live, "/posts/live?x=1").await,
            "blog-background"
        );
        for path in ["/posts", "/posts/lively"] {
            assert_ne!(answered_on(live, path).await, "blog-background", "{path}");
        }
        assert_ne!(
            answered_on(Connections::Foreground, "/posts/live").await,
            "blog-background"
        );
    }

    /// A connection that never says what it wants is closed after the
    /// header-read timeout, as a served one would be, and holds up neither
    /// the listener nor the stop.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_before_it_is_placed() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(2),
        };
        let served = tokio::spawn(serve(
            listener,
            Router::new(),
            shutdown.clone(),
            limits,
            Connections::BackgroundFor("/posts/live"),
        ));
        let mut silent = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("closed within the timeout");
        assert_eq!(read.expect("a clean close"), 0);
        shutdown.cancel();
        served.await.expect("joined").expect("stopped cleanly");
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
