//! Serving a router until shutdown, then draining in-flight requests.

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Answers go out at once: a small answer must not wait on Nagle's
    // algorithm for the peer's delayed acknowledgement.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before it kills a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
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
    tasks: Vec<Task>,
}

impl Service {
    pub fn new(name: &'static str, router: Router) -> Self {
        Self {
            name,
            router,
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
            served = serve(listener, self.router, shutdown.clone()) => served,
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
        for handle in handles {
            let _ = handle.await;
        }
        served
    }
}
