//! `cohort360`: the service binary.
//!
//! `cohort360 [serve]` runs the HTTP API with its relay and projectors; `migrate` applies the
//! migrations; `rebuild <projection>` rebuilds a read model from the event store and swaps it in;
//! `projections` prints each projection's checkpoint and lag.

use std::process::ExitCode;

use api::startup::Application;
use clap::{Parser, Subcommand};
use infra::runtime::config::Settings;
use infra::runtime::contexts::projections;
use infra::runtime::{Runtime, Services, operations, prepare_database};
use tokio_util::sync::CancellationToken;

// mimalloc rather than glibc's malloc: the service allocates briefly and from many threads
// (requests, JSON, NATS messages), where glibc's arenas spent an eighth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print each projection's and reactor's checkpoint and how many events it is behind, and the
    /// relay's.
    Projections,
    /// Create a user (password from $COHORT360_NEW_USER_PASSWORD, else read from stdin).
    CreateUser {
        username: String,
        #[arg(long)]
        firstname: String,
        #[arg(long)]
        lastname: String,
        #[arg(long)]
        email: Option<String>,
        /// Also grant the full-admin role on every root perimeter (import perimeters first).
        #[arg(long)]
        admin: bool,
    },
    /// Import the perimeter tree from a CSV file (columns: id, local_id, name, short_name,
    /// source_value, type_source_value, parent_id, cohort_id, cohort_size). Perimeters missing
    /// from the file are removed and their accesses closed.
    ImportPerimeters { file: std::path::PathBuf },
    /// Load terminologies (FHIR CodeSystem / ValueSet JSON, a Bundle of them, or a CSV with the
    /// columns system, code, display, parent). Each code system in the file replaces the stored
    /// one of its url (new, changed and missing concepts are applied); the built-in catalogue
    /// never overwrites what is imported.
    ImportTerminology { file: std::path::PathBuf },
    /// Seed a demo: upstream's test tree (APHP, P0…P14) and typical roles (replacing the tree),
    /// and 10 000 generated patients when the clinical store is empty.
    SeedDemo,
    /// Generate deterministic synthetic clinical data for the embedded executor, spread over the
    /// perimeter tree's leaves (import or seed perimeters first). Replaces the previous data.
    Generate {
        /// Number of patients (about 45 facts each).
        #[arg(long, default_value_t = 10_000)]
        patients: u64,
        /// Same seed, same perimeters: same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// Patients `seed-demo` generates into an empty clinical store.
const DEMO_PATIENTS: u64 = 10_000;

/// The new user's password: from the environment, else the first line of stdin.
fn new_user_password() -> anyhow::Result<Option<String>> {
    if let Ok(p) = std::env::var("COHORT360_NEW_USER_PASSWORD") {
        return Ok(Some(p).filter(|p| !p.is_empty()));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    Ok(Some(password).filter(|p| !p.is_empty()))
}

/// Runs an operator command against a started runtime, then stops it.
async fn with_runtime<T>(
    settings: &Settings,
    op: impl AsyncFnOnce(&Services) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start(settings, shutdown.clone()).await?;
    let result = op(&runtime.services).await;
    runtime.stop(shutdown).await;
    result
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
            let report = infra::rebuild::rebuild(&pool, p.as_ref()).await?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                projection = %projection,
                events = report.events,
                checkpoint = %report.checkpoint,
                seconds = secs,
                copy_ms = report.copy.as_millis() as u64,
                fold_ms = report.fold.as_millis() as u64,
                swap_ms = report.swap.as_millis() as u64,
                "rebuilt and swapped in"
            );
            Ok(())
        }
        Command::Projections => {
            let pool = prepare_database(&settings).await?;
            let names: Vec<&str> = projections().iter().map(|p| p.name()).collect();
            let status = infra::health::pipeline_status(&pool, &names).await?;
            let text = serde_json::to_string_pretty(&status)?;
            // The status report is this command's output.
            #[expect(clippy::print_stdout, reason = "command output")]
            {
                println!("{text}");
            }
            Ok(())
        }
        Command::CreateUser {
            username,
            firstname,
            lastname,
            email,
            admin,
        } => {
            let password = new_user_password()?;
            let user = commands::identity::NewUser {
                username: username.clone(),
                firstname,
                lastname,
                email,
                password,
            };
            with_runtime(&settings, async |state| {
                operations::create_user(state, user, admin).await
            })
            .await?;
            tracing::info!(user = %username, admin, "user created");
            Ok(())
        }
        Command::ImportTerminology { file } => {
            let content = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let terminologies = infra::terminology::import::parse(&content)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let pool = prepare_database(&settings).await?;
            let report = infra::terminology::store::apply(
                &pool,
                &terminologies,
                infra::terminology::store::Origin::Import,
            )
            .await?;
            tracing::info!(
                code_systems = report.code_systems,
                value_sets = report.value_sets,
                added = report.added,
                changed = report.changed,
                removed = report.removed,
                "terminologies imported"
            );
            Ok(())
        }
        Command::ImportPerimeters { file } => {
            let input = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
            let rows = operations::parse_perimeters(input)?;
            let report = with_runtime(&settings, async |state| {
                Ok(operations::import_perimeters(state, rows).await?)
            })
            .await?;
            tracing::info!(
                written = report.written,
                unchanged = report.unchanged,
                removed = report.removed,
                accesses_closed = report.accesses_closed,
                "perimeters imported"
            );
            Ok(())
        }
        Command::Generate { patients, seed } => {
            let pool = prepare_database(&settings).await?;
            let started = std::time::Instant::now();
            let g = infra::clinical::generate::generate(&pool, patients, seed).await?;
            tracing::info!(
                data_version = g.data_version,
                patients = g.patients,
                encounters = g.encounters,
                facts = g.facts,
                seconds = started.elapsed().as_secs_f64(),
                "clinical data generated"
            );
            Ok(())
        }
        Command::SeedDemo => {
            with_runtime(&settings, async |state| operations::seed_demo(state).await).await?;
            tracing::info!("demo tree and roles seeded");
            // A demo counts something: clinical data, unless some is there already.
            let pool = prepare_database(&settings).await?;
            if infra::clinical::index::current_version(&pool)
                .await?
                .is_none()
            {
                let g = infra::clinical::generate::generate(&pool, DEMO_PATIENTS, 42).await?;
                tracing::info!(
                    patients = g.patients,
                    facts = g.facts,
                    "demo clinical data generated"
                );
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.settings.identity.oidc_providers = infra::runtime::config::oidc_providers_from_env();
    infra::runtime::telemetry::init(cli.settings.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
