//! Serving a router until shutdown, then draining in-flight requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets the
/// requests in flight finish.
///
/// A connection that answers with an event stream (`text/event-stream`: a
/// live stream, here or relayed by the gateway) goes on on the background
/// threads (see [`crate::background`]): one frame for thousands of streams
/// wakes them all at once, and that burst must not queue ahead of the
/// process's other work. It moves whether the stream is the connection's
/// first request or a later one (a browser or a proxy reusing a connection).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
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
        let streaming = Arc::new(Notify::new());
        let service = noting_streams(app.clone(), streaming.clone());
        let mut connection = Box::pin(
            graceful
                .watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut connection => {
                    drop(permit);
                    return;
                }
                () = streaming.notified() => {}
            }
            let rest = async move {
                let _ = connection.await;
                drop(permit);
            };
            // The socket stays registered with this runtime, whose threads
            // only see to it when it was full or the peer sends: writing the
            // frames is done over there.
            match crate::background::handle() {
                Some(background) => drop(background.spawn(rest)),
                None => rest.await,
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// `app`, notifying `streaming` when it answers with an event stream.
fn noting_streams(
    app: Router,
    streaming: Arc<Notify>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let (app, streaming) = (app.clone(), streaming.clone());
        async move {
            let response = app.oneshot(request).await?;
            if is_event_stream(&response) {
                streaming.notify_one();
            }
            Ok(response)
        }
    })
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"))
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
    tasks: Vec<Task>,
}

impl Service {
    pub fn new(name: &'static str, router: Router) -> Self {
        Self {
            name,
            router,
            limits: ConnectionLimits::default(),
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
            served = serve(listener, self.router, shutdown.clone(), self.limits) => served,
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

    fn thread() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// Reads from `tcp` until what was read ends with `end`.
    async fn read_until(tcp: &mut tokio::net::TcpStream, end: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        while !read.ends_with(end.as_bytes()) {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(read).expect("UTF-8")
    }

    /// On one keep-alive connection: a plain answer, then an event stream
    /// whose later frames are written by the background threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_connection_that_answers_with_an_event_stream_moves_to_the_background() {
        use tokio::io::AsyncWriteExt;
        let stream = || async {
            let frames = futures_util::stream::unfold(0, |n| async move {
                match n {
                    0 => Some((Ok::<_, Infallible>("first;".to_owned()), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Ok(format!("<{}>", thread())), 2))
                    }
                    _ => None,
                }
            });
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                axum::body::Body::from_stream(frames),
            )
        };
        let app = Router::new()
            .route(
                "/plain",
                axum::routing::get(|| async { format!("<{}>", thread()) }),
            )
            .route("/stream", axum::routing::get(stream));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            app,
            shutdown.clone(),
            ConnectionLimits::default(),
        ));
        let mut tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("request");
        let plain = read_until(&mut tcp, ">").await;
        assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
        assert!(!plain.contains("<blog-background>"), "{plain}");
        tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("request");
        // Chunked: the last chunk is empty.
        let streamed = read_until(&mut tcp, "0\r\n\r\n").await;
        assert!(streamed.contains("first;"), "{streamed}");
        assert!(streamed.contains("<blog-background>"), "{streamed}");
        drop(tcp);
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
