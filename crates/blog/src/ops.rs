//! The operator's commands: `blog status`, `blog events tail`, `blog
//! dead-letters list|replay` and `blog replay <service>`. Each talks to the
//! running parts over HTTP, as a person with `curl` would, and says what it
//! found in a table (or JSON with `--json`) and in its exit code.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use blog_kit::client::HttpClient;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cli::{DeadLettersCommand, EventsCommand, PartsArgs, TailArgs};
use crate::settings::ServiceKind;

/// Why an operator command failed: said on stderr, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
    /// A part is down or not ready (the table says which and why).
    #[error("{0}")]
    Unhealthy(String),
}

/// A part's answer to a GET: its status and JSON body.
async fn get_json(http: &HttpClient, url: &str) -> Result<(u16, Value), OpsError> {
    let (status, body) = http
        .get(url)
        .await
        .map_err(|e| OpsError::Unreachable(format!("{url}: {e}")))?;
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status.as_u16(), value))
}

async fn post_json(http: &HttpClient, url: &str, body: Value) -> Result<(u16, Value), OpsError> {
    let (status, answer) = http
        .post_json(url, Bytes::from(body.to_string()))
        .await
        .map_err(|e| OpsError::Unreachable(format!("{url}: {e}")))?;
    Ok((
        status.as_u16(),
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    ))
}

/// The first error message of a JSON error answer.
fn message(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// The value of one series of a Prometheus text answer (`family{labels} v`).
fn metric(text: &str, family: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")) && line.contains(label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// Whether a part keeps dead letters of its own (`GET /dead-letters`
/// beside its events route): every part the bus delivers to.
fn keeps_dead_letters(kind: ServiceKind) -> bool {
    kind.part().subscription == crate::parts::Subscription::Events
}

/// One part as `blog status` found it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PartStatus {
    part: &'static str,
    url: String,
    healthy: bool,
    ready: bool,
    /// Why it is not ready (or not reachable).
    reason: Option<String>,
    /// Events waiting in its outbox (the services that emit).
    outbox_depth: Option<f64>,
    /// On NATS, events waiting for its durable consumer (on the HTTP bus,
    /// its subscriber's lag says the same).
    pending: Option<f64>,
    /// Events set aside (the services' own, the bus's in `bus`).
    dead_letters: Option<usize>,
}

async fn part_status(http: &HttpClient, kind: ServiceKind, url: String) -> PartStatus {
    let mut status = PartStatus {
        part: kind.name(),
        url: url.clone(),
        healthy: false,
        ready: false,
        reason: None,
        outbox_depth: None,
        pending: None,
        dead_letters: None,
    };
    match get_json(http, &format!("{url}/healthz")).await {
        Ok((200, _)) => status.healthy = true,
        Ok((code, body)) => status.reason = Some(format!("health {code}: {}", message(&body))),
        Err(e) => {
            status.reason = Some(format!("unreachable: {e}"));
            return status;
        }
    }
    match get_json(http, &format!("{url}/readyz")).await {
        Ok((200, _)) => status.ready = true,
        Ok((_, body)) => status.reason = Some(message(&body)),
        Err(e) => status.reason = Some(e.to_string()),
    }
    if let Ok((200, text)) = http
        .get(&format!("{url}/metrics"))
        .await
        .map(|(s, b)| (s.as_u16(), String::from_utf8_lossy(&b).into_owned()))
    {
        let label = format!(r#"service="{}""#, kind.name());
        status.outbox_depth = metric(&text, "blog_outbox_depth", &label);
        status.pending = metric(&text, "blog_nats_consumer_pending", &label);
    }
    if keeps_dead_letters(kind)
        && let Ok((200, Value::Array(letters))) =
            get_json(http, &format!("{url}/dead-letters")).await
    {
        status.dead_letters = Some(letters.len());
    }
    status
}

/// `blog status`: every part's health and readiness, the bus's subscribers.
pub async fn status(parts: &PartsArgs, as_json: bool) -> Result<(), OpsError> {
    let http = parts.http();
    let found = futures_util::future::join_all(
        parts
            .urls()
            .into_iter()
            .map(|(kind, url)| part_status(&http, kind, url)),
    )
    .await;
    let bus = match get_json(&http, &format!("{}/subscribers", parts.bus())).await {
        Ok((200, body)) => Some(body),
        _ => None,
    };
    let all_ready = found.iter().all(|p| p.healthy && p.ready);
    if as_json {
        println!("{}", json!({"ok": all_ready, "parts": found, "bus": bus}));
    } else {
        print!("{}", status_table(&found, bus.as_ref()));
    }
    if all_ready {
        Ok(())
    } else {
        let down: Vec<&str> = found
            .iter()
            .filter(|p| !(p.healthy && p.ready))
            .map(|p| p.part)
            .collect();
        Err(OpsError::Unhealthy(format!(
            "not ready: {}",
            down.join(", ")
        )))
    }
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn status_table(parts: &[PartStatus], bus: Option<&Value>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:<24} {:<7} {:<6} {:>6} {:>8} {:>12}",
        "PART", "URL", "HEALTH", "READY", "OUTBOX", "PENDING", "DEAD LETTERS"
    );
    for p in parts {
        let _ = writeln!(
            out,
            "{:<11} {:<24} {:<7} {:<6} {:>6} {:>8} {:>12}",
            p.part,
            p.url,
            if p.healthy { "ok" } else { "down" },
            if p.ready { "yes" } else { "no" },
            or_dash(p.outbox_depth),
            or_dash(p.pending),
            or_dash(p.dead_letters),
        );
    }
    for p in parts.iter().filter(|p| p.reason.is_some()) {
        let _ = writeln!(out, "  {}: {}", p.part, p.reason.as_deref().unwrap_or(""));
    }
    match bus {
        Some(bus) => {
            let _ = writeln!(
                out,
                "\nevent bus: last seq {}",
                or_dash(bus["lastSeq"].as_i64())
            );
            let _ = writeln!(
                out,
                "{:<40} {:>8} {:>6} {:>12}",
                "SUBSCRIBER", "CURSOR", "LAG", "DEAD LETTERS"
            );
            for s in bus["subscribers"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<40} {:>8} {:>6} {:>12}",
                    s["url"].as_str().unwrap_or("?"),
                    or_dash(s["cursor"].as_i64()),
                    or_dash(s["lag"].as_i64()),
                    or_dash(s["deadLetters"].as_i64()),
                );
            }
        }
        None => {
            let _ = writeln!(out, "\nevent bus: no subscriber report (not ours, or down)");
        }
    }
    out
}

/// `blog events ...`.
pub async fn events(parts: &PartsArgs, command: &EventsCommand) -> Result<(), OpsError> {
    match command {
        EventsCommand::Tail(args) => tail(parts, args).await,
    }
}

/// How long `events tail` waits between looks when it has caught up.
const TAIL_POLL: Duration = Duration::from_millis(250);
const TAIL_PAGE: usize = 500;

/// `blog events tail`: prints events as they are stored, from `--from` or
/// from now.
async fn tail(parts: &PartsArgs, args: &TailArgs) -> Result<(), OpsError> {
    let http = parts.http();
    let bus = parts.bus();
    let mut after = match args.from {
        Some(from) => from.saturating_sub(1),
        None => match get_json(&http, &format!("{bus}/subscribers")).await? {
            (200, body) => body["lastSeq"].as_i64().unwrap_or(0),
            _ => 0,
        },
    };
    let mut stdout = std::io::stdout().lock();
    loop {
        let (status, body) = get_json(
            &http,
            &format!("{bus}/events?after={after}&limit={TAIL_PAGE}"),
        )
        .await?;
        if status != 200 {
            return Err(OpsError::Refused(format!(
                "the bus answered {status}: {}",
                message(&body)
            )));
        }
        let events = body.as_array().cloned().unwrap_or_default();
        let caught_up = events.len() < TAIL_PAGE;
        for event in events {
            let seq = event["seq"].as_i64().unwrap_or(after + 1);
            after = after.max(seq);
            if args
                .event_type
                .as_deref()
                .is_some_and(|t| event["type"] != t)
            {
                continue;
            }
            let line = if args.json {
                event.to_string()
            } else {
                format!(
                    "{seq:>7}  {:<17} {}  {}{}",
                    event["type"].as_str().unwrap_or("?"),
                    event["id"].as_str().unwrap_or("-"),
                    event["correlationId"]
                        .as_str()
                        .map(|c| format!("correlation {c}  "))
                        .unwrap_or_default(),
                    event["data"]
                )
            };
            // A closed pipe (`| head`) ends the tail quietly.
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return Ok(());
            }
        }
        if caught_up {
            if !args.follow() {
                return Ok(());
            }
            tokio::time::sleep(TAIL_POLL).await;
        }
    }
}

/// `blog dead-letters ...`.
pub async fn dead_letters(parts: &PartsArgs, command: &DeadLettersCommand) -> Result<(), OpsError> {
    let http = parts.http();
    match command {
        DeadLettersCommand::List { json: as_json } => {
            let mut letters = Vec::new();
            match get_json(&http, &format!("{}/dead-letters", parts.bus())).await? {
                (200, Value::Array(list)) => letters.extend(list.into_iter().map(|mut l| {
                    l["heldBy"] = json!(blog_event_bus::NAME);
                    l
                })),
                (status, body) => {
                    return Err(OpsError::Refused(format!(
                        "the event bus answered {status}: {}",
                        message(&body)
                    )));
                }
            }
            for (kind, url) in parts.urls() {
                if !keeps_dead_letters(kind) {
                    continue;
                }
                if let Ok((200, Value::Array(list))) =
                    get_json(&http, &format!("{url}/dead-letters")).await
                {
                    letters.extend(list.into_iter().map(|mut l| {
                        l["heldBy"] = json!(kind.name());
                        l
                    }));
                }
            }
            if *as_json {
                println!("{}", Value::Array(letters));
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:<11} {:>6} {:>7} {:<17} {:<36} REASON",
                    "HELD BY", "ID", "SEQ", "TYPE", "SUBSCRIBER / SUBJECT"
                );
                for l in &letters {
                    println!(
                        "{:<11} {:>6} {:>7} {:<17} {:<36} {}",
                        l["heldBy"].as_str().unwrap_or("?"),
                        or_dash(l["id"].as_i64()),
                        or_dash(l["seq"].as_i64()),
                        l["type"].as_str().unwrap_or("-"),
                        l["subscriber"]
                            .as_str()
                            .or(l["subject"].as_str())
                            .unwrap_or("-"),
                        l["reason"].as_str().unwrap_or(""),
                    );
                }
            }
            Ok(())
        }
        DeadLettersCommand::Replay { subscriber, ids } => {
            let mut request = serde_json::Map::new();
            if let Some(subscriber) = subscriber {
                request.insert("subscriber".into(), json!(subscriber));
            }
            let everything = request.is_empty() && ids.is_empty();
            if !ids.is_empty() {
                request.insert("ids".into(), json!(ids));
            }
            let replayed = match post_json(
                &http,
                &format!("{}/dead-letters/replay", parts.bus()),
                Value::Object(request),
            )
            .await?
            {
                (200, body) => body["replayed"].as_i64().unwrap_or(0),
                (status, body) => {
                    return Err(OpsError::Refused(format!(
                        "the event bus answered {status}: {}",
                        message(&body)
                    )));
                }
            };
            println!("{replayed} dead letter(s) sent again");
            // The filters name the bus's letters; without one, every
            // service's own letters are sent again too.
            if everything {
                for (kind, url) in parts.urls() {
                    if !keeps_dead_letters(kind) {
                        continue;
                    }
                    let url = format!("{url}/dead-letters/replay");
                    match post_json(&http, &url, json!({})).await? {
                        (200, body) => {
                            let (sent, failed) = (&body["replayed"], &body["failed"]);
                            if sent.as_i64() != Some(0) || failed.as_i64() != Some(0) {
                                println!(
                                    "{}: {sent} sent again, {failed} failed again",
                                    kind.name()
                                );
                            }
                        }
                        (status, body) => {
                            return Err(OpsError::Refused(format!(
                                "{} answered {status}: {}",
                                kind.name(),
                                message(&body)
                            )));
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// How often `blog replay` asks how far the rebuild is.
const REPLAY_POLL: Duration = Duration::from_millis(100);

/// `blog replay <service>`: rebuilds its read model from the log, showing
/// progress, and ends with the figure.
pub async fn replay(parts: &PartsArgs, target: ServiceKind, as_json: bool) -> Result<(), OpsError> {
    let http = parts.http();
    let url = format!("{}/rebuild", parts.url(target));
    match post_json(&http, &url, json!({})).await? {
        (202, _) => {}
        (409, _) => eprintln!("a rebuild is already running; following it"),
        (status, body) => {
            return Err(OpsError::Refused(format!(
                "{} answered {status}: {}",
                target.name(),
                message(&body)
            )));
        }
    }
    let bar = (!as_json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} rebuilding {msg} [{bar:30}] {pos}/{len} events ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(target.name());
        bar
    });
    let progress = loop {
        let (status, progress) = get_json(&http, &url).await?;
        if status != 200 {
            return Err(OpsError::Refused(format!(
                "{} answered {status}: {}",
                target.name(),
                message(&progress)
            )));
        }
        if let Some(bar) = &bar {
            if let Some(total) = progress["total"].as_i64() {
                bar.set_length(u64::try_from(total).unwrap_or(0));
            }
            bar.set_position(
                progress["seq"]
                    .as_i64()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            );
        }
        if progress["phase"] != "running" {
            break progress;
        }
        tokio::time::sleep(REPLAY_POLL).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if as_json {
        println!("{progress}");
    } else if progress["phase"] == "done" {
        println!(
            "rebuilt {} from {} events ({} applied) in {:.1} s: {:.0} events/s",
            target.name(),
            progress["read"].as_u64().unwrap_or(0),
            progress["applied"].as_u64().unwrap_or(0),
            progress["elapsedMs"].as_u64().unwrap_or(0) as f64 / 1000.0,
            progress["eventsPerSecond"].as_f64().unwrap_or(0.0),
        );
    }
    if progress["phase"] == "done" {
        Ok(())
    } else {
        Err(OpsError::Refused(format!(
            "the rebuild of {} failed: {}",
            target.name(),
            progress["error"].as_str().unwrap_or("unknown")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_series_of_a_prometheus_answer() {
        let text = "# TYPE blog_outbox_depth gauge\n\
                    blog_outbox_depth{service=\"posts\"} 3\n\
                    blog_outbox_depth{service=\"comments\"} 0\n";
        assert_eq!(
            metric(text, "blog_outbox_depth", r#"service="posts""#),
            Some(3.0)
        );
        assert_eq!(
            metric(text, "blog_outbox_depth", r#"service="query""#),
            None
        );
    }
}
