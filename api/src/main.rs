//! `cohort360`: the service binary.
//!
//! `cohort360 [serve]` runs the HTTP API with its relay and projectors; `migrate` applies the
//! migrations; `rebuild <projection>` rebuilds a read model from the event store and swaps it in;
//! `projections` prints each projection's checkpoint and lag.

use std::process::ExitCode;

use api::config::Settings;
use api::startup::{Application, prepare_database, projections};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cohort360",
    version,
    about = "Event-sourced Cohort360 back-end"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, the relay and the projectors (the default).
    Serve,
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Rebuild a projection from the event store into fresh tables, then swap them in.
    Rebuild {
        /// Projection name (see `cohort360 projections`).
        projection: String,
    },
    /// Print each projection's checkpoint and how many events it is behind, and the relay's.
    Projections,
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
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
    tracing::info!("shutdown requested");
    token.cancel();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            let app = Application::build(&settings, shutdown.clone()).await?;
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate => {
            prepare_database(&settings).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Rebuild { projection } => {
            let pool = prepare_database(&settings).await?;
            let all = projections();
            let Some(p) = all.iter().find(|p| p.name() == projection) else {
                let names: Vec<_> = all.iter().map(|p| p.name()).collect();
                anyhow::bail!(
                    "unknown projection '{projection}'; known: {}",
                    names.join(", ")
                );
            };
            let started = std::time::Instant::now();
            let report = infra::projector::rebuild(&pool, p.as_ref()).await?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                projection = %projection,
                events = report.events,
                checkpoint = %report.checkpoint,
                seconds = secs,
                "rebuilt and swapped in"
            );
            Ok(())
        }
        Command::Projections => {
            let pool = prepare_database(&settings).await?;
            let mut out = Vec::new();
            for p in projections() {
                let cp = infra::projector::checkpoint(&pool, p.name()).await?;
                let behind = infra::log::count_after(&pool, cp).await?;
                out.push(serde_json::json!({"projection": p.name(), "checkpoint": cp.to_string(), "behind": behind}));
            }
            let relay = infra::relay::checkpoint(&pool, "jetstream").await?;
            let relay_behind = infra::log::count_after(&pool, relay).await?;
            out.push(serde_json::json!({"relay": "jetstream", "checkpoint": relay.to_string(), "behind": relay_behind}));
            let text = serde_json::to_string_pretty(&out)?;
            // The status report is this command's output.
            #[expect(clippy::print_stdout, reason = "command output")]
            {
                println!("{text}");
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    api::telemetry::init(cli.settings.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
