//! How to reach NATS and what the blog's stream looks like there.

use std::path::PathBuf;

/// The JetStream stream name used unless configured otherwise.
pub const DEFAULT_STREAM: &str = "BLOG";
/// The stream's size unless configured otherwise: it must fit the servers'
/// `max_file_store` (with room for other streams), or JetStream refuses to
/// place it.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// NATS JetStream as the bus.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The servers to try, comma-separated `nats://` or `tls://` URLs,
    /// without credentials (the client also learns the cluster's others).
    pub servers: String,
    pub stream: StreamConfig,
    pub auth: NatsAuth,
    /// A PEM file of certificate authorities to trust for `tls://` servers.
    pub ca: Option<PathBuf>,
}

/// The stream holding the blog's events: subjects `<name>.events.<Type>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub name: String,
    /// 1, or 3 on a three-server cluster.
    pub replicas: usize,
    /// The most the stream keeps on each server; the oldest events go first.
    pub max_bytes: u64,
}

/// How the services prove who they are to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    Anonymous,
    UserPassword { user: String, password: String },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::Anonymous => f.write_str("Anonymous"),
            // Never the password, in logs or panics.
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user})"),
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("stream", &self.stream)
            .field("auth", &self.auth)
            .field("ca", &self.ca)
            .finish()
    }
}

impl NatsConfig {
    /// `servers` (URLs that may carry `user:password@`), the default stream
    /// on one server. Credentials in a URL become [`NatsAuth::UserPassword`].
    pub fn parse(servers: &str) -> Result<Self, String> {
        let mut auth = NatsAuth::Anonymous;
        let mut plain = Vec::new();
        for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, rest) = server
                .split_once("://")
                .filter(|(scheme, _)| matches!(*scheme, "nats" | "tls"))
                .ok_or_else(|| {
                    format!("expected nats://HOST:PORT or tls://HOST:PORT, not {server:?}")
                })?;
            let rest = rest.trim_end_matches('/');
            let host = match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                    auth = NatsAuth::UserPassword {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    };
                    host
                }
                None => rest,
            };
            if host.is_empty() || host.contains('/') {
                return Err(format!("expected nats://HOST:PORT, not {scheme}://{host}"));
            }
            plain.push(format!("{scheme}://{host}"));
        }
        if plain.is_empty() {
            return Err("no NATS server given".into());
        }
        Ok(Self {
            servers: plain.join(","),
            stream: StreamConfig {
                name: DEFAULT_STREAM.to_owned(),
                replicas: 1,
                max_bytes: DEFAULT_MAX_BYTES,
            },
            auth,
            ca: None,
        })
    }

    /// The default stream renamed: what tests use to keep to their own.
    pub fn with_stream(mut self, name: &str) -> Self {
        self.stream.name = name.to_owned();
        self
    }
}

/// A size such as `8GiB`, `512MiB`, `2GB` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 8GiB or 512MiB, not {text:?}"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
}

/// `bytes` as people read it (binary units).
pub fn show_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_become_the_auth_and_leave_the_url() {
        let config = NatsConfig::parse("nats://posts:s3cret@nats-0:4222, nats://nats-1:4222/")
            .expect("valid");
        assert_eq!(config.servers, "nats://nats-0:4222,nats://nats-1:4222");
        assert_eq!(
            config.auth,
            NatsAuth::UserPassword {
                user: "posts".into(),
                password: "s3cret".into()
            }
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn other_schemes_and_empty_lists_are_refused() {
        assert!(NatsConfig::parse("http://bus:4005").is_err());
        assert!(NatsConfig::parse(" , ").is_err());
        assert!(NatsConfig::parse("nats://").is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(show_size(8 << 30), "8.0 GiB");
    }
}
