//! Logging: `BLOG_LOG` takes an env-filter (`info`, `blog_query=debug`, ...).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("BLOG_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn,sqlx::postgres::notice=error,hyper_util=warn,async_nats=warn"));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours only for a person at a terminal, not in container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}
