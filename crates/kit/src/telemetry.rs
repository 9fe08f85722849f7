//! Logging: `BLOG_LOG` takes an env-filter (`info`, `blog_query=debug`, ...);
//! lines are for people at a terminal, or JSON objects for a log pipeline.
//! A line inside a request or an event's handling names the part and the
//! correlation id in its span.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event, coloured at a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it is in.
    Json,
}

const DEFAULT_FILTER: &str =
    "info,tower_http=warn,sqlx=warn,sqlx::postgres::notice=error,hyper_util=warn,async_nats=warn";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("BLOG_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(true)
            // Colours only for a person at a terminal, not in container logs.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
