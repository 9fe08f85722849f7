//! What `blog up` tells the person who started it: each part, where it
//! listens and when it was ready, what it runs on, the address to open, and
//! what needs their attention.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::Duration;

use blog_bus::BusConfig;

use crate::settings::Settings;
use crate::startup::System;

/// The table `blog up` prints once every part is ready.
pub fn up(system: &System, settings: &Settings, host: IpAddr, took: Duration) -> String {
    let gateway = system.url(crate::parts::ENTRY).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nblog is up in {} ms: open {gateway}/\n",
        took.as_millis()
    );
    let _ = writeln!(out, "  {:<11} {:<28} ready after", "part", "listening on");
    for part in &system.parts {
        let ready = part
            .ready_after
            .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
        let _ = writeln!(out, "  {:<11} {:<28} {ready}", part.kind.name(), part.url());
    }
    let bus = match &settings.bus {
        BusConfig::Http { .. } => "the embedded HTTP event bus".to_owned(),
        BusConfig::Nats(nats) => format!(
            "NATS JetStream at {} (stream {}; the event bus is a bridge for course services)",
            nats.servers, nats.stream.name
        ),
    };
    let storage = match &settings.postgres {
        Some(pg) => format!(
            "PostgreSQL, a database per service ({}<service>)",
            pg.prefix
        ),
        None => format!("SQLite files in {}", settings.data_dir.display()),
    };
    let _ = writeln!(out, "\n  bus      {bus}\n  storage  {storage}");
    let warnings = warnings(settings, host);
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for warning in warnings {
            let _ = writeln!(out, "  - {warning}");
        }
    }
    let _ = write!(out, "\nCtrl-C stops everything.");
    out
}

/// What the person running `blog up` should know about.
pub fn warnings(settings: &Settings, host: IpAddr) -> Vec<String> {
    let mut warnings = Vec::new();
    if !settings.client_dir.join("index.html").is_file() {
        warnings.push(format!(
            "the client is not built ({} has no index.html): the page says how to build it \
             (npm ci --prefix client && npm run build --prefix client)",
            settings.client_dir.display()
        ));
    }
    warnings.extend(exposed(host, settings.surface.internal_token.is_some()));
    warnings
}

/// Without a token, anyone who reaches an internal route may forge events:
/// said when listening beyond loopback without one.
pub fn exposed(host: IpAddr, token: bool) -> Option<String> {
    (!token && !host.is_loopback()).then(|| {
        format!(
            "listening on {host} without --internal-token: anyone who reaches the services \
             may send them events; set BLOG_INTERNAL_TOKEN"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_beyond_loopback_without_a_token_is_a_warning() {
        let everywhere: IpAddr = "0.0.0.0".parse().expect("ip");
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let warning = exposed(everywhere, false).expect("a warning");
        assert!(warning.contains("BLOG_INTERNAL_TOKEN"), "{warning}");
        assert_eq!(exposed(everywhere, true), None, "a token closes the routes");
        assert_eq!(exposed(loopback, false), None, "loopback is this machine's");
        assert_eq!(exposed("::1".parse().expect("ip"), false), None);
    }
}
