//! The `tollgate` command line: `serve`, `migrate`, `health`, and `admin`
//! commands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    config::{Config, LogFormat, Overrides},
    domain::{
        credential::{Credential, Scope, issue_token},
        ids::CredentialId,
        now,
        text::bounded,
    },
    startup::{Application, connect_store, open_store, shutdown_signal},
    store::CredentialStore,
    telemetry,
};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Self-hosted gRPC entitlement service"
)]
struct Cli {
    /// Configuration file (TOML) layered over the built-in defaults.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// postgres://… for PostgreSQL; omit for the embedded SQLite file.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Directory of the embedded SQLite file.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:50051 (port 0: any free port).
        #[arg(long)]
        listen: Option<String>,
        /// Log format: pretty or json.
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
        /// redis://… to share limits between replicas; omit for in-process.
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Ask a server's gRPC health service; exit 0 only if it is SERVING.
    Health {
        /// The server, as HOST:PORT.
        #[arg(long)]
        addr: String,
        /// The service to ask about; empty: the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for the answer, connecting included.
        #[arg(long, default_value_t = 1000)]
        timeout_millis: u64,
    },
    /// Manage service credentials.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin credential and print its token once, alone on stdout.
    Bootstrap {
        /// A name to tell the credential apart.
        #[arg(long, default_value = "bootstrap")]
        name: String,
    },
    /// Create a credential of the given scope and print its token once.
    CreateCredential {
        /// admin (every RPC) or verify (the Verify service only).
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// A name to tell the credential apart.
        #[arg(long, default_value = "")]
        name: String,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err("must be pretty or json".into()),
    }
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::from_name(s).ok_or_else(|| "must be admin or verify".into())
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // TOLLGATE_WORKER_THREADS sizes the runtime (default: one per core); read
    // here because the runtime exists before the configuration is loaded.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = std::env::var("TOLLGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    // A client of a server: no configuration of its own to read.
    if let Command::Health {
        addr,
        service,
        timeout_millis,
    } = &cli.command
    {
        return health(addr, service, Duration::from_millis(*timeout_millis)).await;
    }
    let mut overrides = Overrides {
        database_url: cli.database_url,
        data_dir: cli.data_dir,
        ..Overrides::default()
    };
    if let Command::Serve {
        listen,
        log_format,
        redis_url,
    } = &cli.command
    {
        overrides.listen = listen.clone();
        overrides.log_format = *log_format;
        overrides.redis_url = redis_url.clone();
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Serve { .. } => {
            let _guard = telemetry::init(
                "tollgate",
                config.log_format,
                &config.log_filter,
                &config.otlp_endpoint,
            )?;
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Health { .. } => unreachable!("answered before reading the configuration"),
        Command::Migrate => {
            let store = connect_store(&config).await?;
            let migrated = store.migrate().await;
            store.close().await;
            migrated?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Admin(AdminCommand::Bootstrap { name }) => {
            create_credential(&config, Scope::Admin, &name).await
        }
        Command::Admin(AdminCommand::CreateCredential { scope, name }) => {
            create_credential(&config, scope, &name).await
        }
    }
}

/// Prints the server's health in one line; an error unless it is SERVING.
async fn health(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("--addr {addr:?} is not HOST:PORT"))?
        .connect_timeout(timeout);
    let check = async {
        let channel = endpoint.connect().await?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        request.set_timeout(timeout);
        let answer = HealthClient::new(channel).check(request).await?;
        anyhow::Ok(answer.into_inner().status)
    };
    let what = if service.is_empty() {
        addr.to_owned()
    } else {
        format!("{service} at {addr}")
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {timeout:?}"))?
        .with_context(|| what.clone())?;
    let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{what}: {}",
        status.as_str_name()
    );
    println!("{what}: SERVING");
    Ok(())
}

async fn create_credential(config: &Config, scope: Scope, name: &str) -> anyhow::Result<()> {
    let name = bounded("--name", name, 200, false).map_err(|v| anyhow::anyhow!("{v}"))?;
    let store = open_store(config).await?;
    let token = issue_token();
    let credential = Credential {
        id: CredentialId::generate(),
        name,
        scope,
        created_at: now(),
    };
    store
        .create_credential(&credential, token.hash())
        .await
        .context("storing the credential")?;
    store.close().await;
    eprintln!(
        "created {} credential {}; the token below is shown only once:",
        scope.as_str(),
        credential.id
    );
    println!("{}", token.expose());
    Ok(())
}
