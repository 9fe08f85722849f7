//! Which engines a test runs on: the combinations, whether each answers
//! here, one named test per combination, and names no two tests share.

use std::time::Duration;

/// Which engines a test system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub postgres: bool,
    pub nats: bool,
}

impl std::fmt::Display for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let storage = if self.postgres {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        let bus = if self.nats {
            "NATS JetStream"
        } else {
            "HTTP bus"
        };
        write!(f, "{storage} + {bus}")
    }
}

pub fn postgres_url() -> String {
    std::env::var("BLOG_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("BLOG_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(host_port.to_owned())
}

fn reachable(url: &str) -> bool {
    host_port(url)
        .and_then(|hp| std::net::ToSocketAddrs::to_socket_addrs(&hp).ok()?.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
}

static AVAILABLE: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();

/// Whether PostgreSQL and NATS answer here. A missing engine is said
/// plainly (on the terminal, past the test harness's capture), and is an
/// error when `BLOG_TEST_REQUIRE_ENGINES=1` (CI).
fn available() -> (bool, bool) {
    *AVAILABLE.get_or_init(|| {
        use std::io::Write;
        let require = std::env::var("BLOG_TEST_REQUIRE_ENGINES").is_ok_and(|v| v == "1");
        let postgres = reachable(&postgres_url());
        let nats = reachable(&nats_url());
        for (name, ok, var, url) in [
            ("PostgreSQL", postgres, "BLOG_TEST_POSTGRES", postgres_url()),
            ("NATS", nats, "BLOG_TEST_NATS", nats_url()),
        ] {
            if !ok {
                assert!(!require, "{name} is required (BLOG_TEST_REQUIRE_ENGINES=1) but {url} does not answer");
                let _ = writeln!(
                    std::io::stderr(),
                    "note: skipping the {name} variants of the tests: nothing answers at {url} (set {var})"
                );
            }
        }
        (postgres, nats)
    })
}

impl Engines {
    pub const SQLITE_HTTP: Engines = Engines {
        postgres: false,
        nats: false,
    };
    pub const POSTGRES_HTTP: Engines = Engines {
        postgres: true,
        nats: false,
    };
    pub const SQLITE_NATS: Engines = Engines {
        postgres: false,
        nats: true,
    };
    pub const POSTGRES_NATS: Engines = Engines {
        postgres: true,
        nats: true,
    };

    /// This combination, if its engines answer here.
    fn if_available(self) -> Option<Self> {
        let (postgres, nats) = available();
        ((postgres || !self.postgres) && (nats || !self.nats)).then_some(self)
    }

    pub fn sqlite_http() -> Option<Self> {
        Some(Self::SQLITE_HTTP)
    }

    pub fn postgres_http() -> Option<Self> {
        Self::POSTGRES_HTTP.if_available()
    }

    pub fn sqlite_nats() -> Option<Self> {
        Self::SQLITE_NATS.if_available()
    }

    pub fn postgres_nats() -> Option<Self> {
        Self::POSTGRES_NATS.if_available()
    }
}

/// Declares one test per engine combination, each its own named test
/// (`name::sqlite_http`, `name::postgres_nats`, ...), that runs `name(engines)`
/// (or `name => run` to run `run(engines)`). A combination whose engine
/// does not answer here passes with a note, and fails in CI.
macro_rules! engine_tests {
    ($name:ident: $($variant:ident),+) => {
        engine_tests!($name => $name: $($variant),+);
    };
    ($name:ident => $run:ident: $($variant:ident),+) => {
        mod $name {
            $(
                #[tokio::test]
                async fn $variant() {
                    if let Some(engines) = $crate::support::Engines::$variant() {
                        super::$run(engines).await;
                    }
                }
            )+
        }
    };
}

/// Every combination whose engines answer here (for the tests that need
/// one system of each kind at once).
pub fn engines() -> Vec<Engines> {
    [
        Engines::sqlite_http(),
        Engines::postgres_http(),
        Engines::sqlite_nats(),
        Engines::postgres_nats(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A name no other test system (in this or another test process) uses.
pub fn unique(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{n}_{nanos:x}", std::process::id())
}
