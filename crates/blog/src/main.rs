use std::process::ExitCode;
use std::time::Instant;

use blog::cli::{Cli, Command};
use blog::{ops, startup};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Routes = cli.command {
        return match serde_json::to_string_pretty(&blog::parts::ingress_rules()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let operating = matches!(
        cli.command,
        Command::Status { .. }
            | Command::Events { .. }
            | Command::DeadLetters { .. }
            | Command::Replay { .. }
    );
    if operating {
        // The operator's commands: a small runtime, their own output, no logs.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        return exit(runtime, operate(cli.command));
    }
    blog_kit::telemetry::init(cli.log_format.into());
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    exit(runtime, run(cli.command))
}

/// Runs `work` on `runtime` and says how it went: the error on stderr (and
/// in the log), and in the exit code.
fn exit<E: std::fmt::Display>(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    work: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(command: Command) -> Result<(), ops::OpsError> {
    match &command {
        Command::Status { parts, json } => ops::status(parts, *json).await,
        Command::Events { parts, command } => ops::events(parts, command).await,
        Command::DeadLetters { parts, command } => ops::dead_letters(parts, command).await,
        Command::Replay {
            parts,
            service,
            json,
        } => ops::replay(parts, *service, *json).await,
        _ => Ok(()),
    }
}

/// Every connection is a file: take all the process may have, so the
/// connection limits bind before the system's file limit does.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

fn warn_if_exposed(host: std::net::IpAddr, token: bool) {
    if let Some(warning) = blog::report::exposed(host, token) {
        tracing::warn!("{warning}");
    }
}

async fn run(command: Command) -> Result<(), startup::StartupError> {
    blog_kit::memory::return_freed_memory();
    match command {
        Command::Up(args) => {
            blog_kit::background::set_priority(args.common.live_priority.into());
            // Listening for the stop before saying "up": see shutdown_signal.
            let stop = blog_kit::serve::shutdown_signal();
            warn_if_exposed(args.common.host, args.common.internal_token.is_some());
            let started = Instant::now();
            let settings = args.settings();
            let system = startup::up(args.common.host, &args.ports(), &settings).await?;
            for part in &system.parts {
                tracing::debug!(service = part.kind.name(), url = %part.url(), "listening");
            }
            let gateway = system.url(blog::parts::ENTRY).unwrap_or_default();
            tracing::info!(
                ready_ms = started.elapsed().as_millis() as u64,
                "blog is up: {gateway}/"
            );
            println!(
                "{}",
                blog::report::up(&system, &settings, args.common.host, started.elapsed())
            );
            stop.await;
            let stopping = Instant::now();
            println!("stopping…");
            let stopped = system.stop().await;
            println!("stopped in {} ms", stopping.elapsed().as_millis());
            stopped
        }
        Command::Serve(args) => {
            blog_kit::background::set_priority(args.common.live_priority.into());
            let stop = blog_kit::serve::shutdown_signal();
            warn_if_exposed(args.common.host, args.common.internal_token.is_some());
            let settings = args.settings();
            let ports = [(args.service, args.port())].into_iter().collect();
            let system = startup::System::start(
                args.common.host,
                &ports,
                &[args.service],
                &settings,
                startup::Wiring::AsConfigured,
            )
            .await?;
            if let Some(url) = system.url(args.service) {
                tracing::info!(service = args.service.name(), %url, "listening");
            }
            stop.await;
            tracing::info!("shutting down");
            system.stop().await
        }
        Command::Routes
        | Command::Status { .. }
        | Command::Events { .. }
        | Command::DeadLetters { .. }
        | Command::Replay { .. } => Ok(()),
    }
}
