use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use blog::cli::{Cli, Command};
use blog::settings::reachable;
use blog::startup;
use blog_kit::CancellationToken;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Routes = cli.command {
        return match serde_json::to_string_pretty(&blog_gateway::INGRESS) {
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
    blog_kit::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), startup::StartupError> {
    match command {
        Command::Up(args) => {
            let started = Instant::now();
            let system = startup::up(args.common.host, &args.ports(), &args.settings()).await?;
            for part in &system.parts {
                tracing::info!(service = part.kind.name(), url = %part.url(), "listening");
            }
            let gateway = system
                .url(blog::settings::ServiceKind::Gateway)
                .unwrap_or_default();
            tracing::info!(
                ready_ms = started.elapsed().as_millis() as u64,
                "blog is up: {gateway}/"
            );
            blog_kit::serve::shutdown_signal().await;
            tracing::info!("shutting down");
            system.stop().await
        }
        Command::Serve(args) => {
            let settings = args.settings();
            let addr = SocketAddr::new(args.common.host, args.port());
            let listener = startup::bind(addr).await?;
            let service = startup::build(args.service, &settings).await?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                blog_kit::serve::shutdown_signal().await;
                tracing::info!("shutting down");
                signal.cancel();
            });
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(service = args.service.name(), url = %reachable(local), "listening");
            service
                .run(listener, shutdown)
                .await
                .map_err(|e| startup::StartupError::Stopped(args.service.name(), e.to_string()))
        }
        Command::Routes => Ok(()),
    }
}
