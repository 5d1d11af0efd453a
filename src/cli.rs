//! The `tollgate` command line: `serve`, `migrate`, `health`, and `admin`
//! commands (credentials, on the database directly).
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    catalog::{Change, Credentials},
    config::{Config, LogFormat, Overrides},
    domain::{
        Timestamp, credential::Scope, from_micros, ids::CredentialId, now, text::bounded, to_micros,
    },
    replicas::ChangeBus,
    startup::{Application, connect_redis, connect_store, open_store, shutdown_signal},
    telemetry,
    tls::client::{self, ClientTls},
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
        /// The server: HOST:PORT or http://HOST:PORT in the clear,
        /// https://HOST:PORT over TLS (never in the clear).
        #[arg(long)]
        addr: String,
        /// With https://: PEM CA certificates to trust besides the system's.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// With https://: a client certificate (PEM) for a server that asks
        /// for one, and its key.
        #[arg(long, requires = "key_file")]
        cert_file: Option<PathBuf>,
        #[arg(long, requires = "cert_file")]
        key_file: Option<PathBuf>,
        /// With https://: the name the server's certificate must carry, when
        /// it is not the address's host (127.0.0.1 in a probe, say).
        #[arg(long)]
        tls_server_name: Option<String>,
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
        /// When the token stops being accepted, RFC 3339
        /// (2027-06-30T00:00:00Z); default: never.
        #[arg(long, value_parser = parse_time)]
        expire_time: Option<Timestamp>,
    },
    /// List every credential (never their tokens), one per line.
    ListCredentials,
    /// Revoke a credential for good. With `redis_url` set, running servers
    /// are told at once; without, within `credential_cache_seconds`.
    RevokeCredential {
        /// The credential's id (`cred_…`, from list-credentials).
        id: String,
    },
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t = Timestamp::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("must be an RFC 3339 time such as 2027-06-30T00:00:00Z: {e}"))?;
    from_micros(to_micros(t)).ok_or_else(|| "is out of range".into())
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
        ca_file,
        cert_file,
        key_file,
        tls_server_name,
    } = &cli.command
    {
        let tls = ClientTls {
            ca_file: ca_file.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            server_name: tls_server_name.clone(),
        };
        return health(addr, &tls, service, Duration::from_millis(*timeout_millis)).await;
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
        Command::Admin(command) => admin(&config, command).await,
    }
}

/// Prints the server's health in one line; an error unless it is SERVING.
async fn health(
    addr: &str,
    tls: &ClientTls,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let target = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = client::endpoint(&target, tls)
        .context("--addr")?
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

async fn admin(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let store = Arc::new(open_store(config).await?);
    let credentials = Credentials::new(store.clone(), Vec::new());
    let done = match command {
        AdminCommand::Bootstrap { name } => {
            create_credential(&credentials, Scope::Admin, &name, None).await
        }
        AdminCommand::CreateCredential {
            scope,
            name,
            expire_time,
        } => create_credential(&credentials, scope, &name, expire_time).await,
        AdminCommand::ListCredentials => list_credentials(&credentials).await,
        AdminCommand::RevokeCredential { id } => revoke_credential(config, &credentials, &id).await,
    };
    store.close().await;
    done
}

async fn create_credential(
    credentials: &Credentials,
    scope: Scope,
    name: &str,
    expires_at: Option<Timestamp>,
) -> anyhow::Result<()> {
    let name = bounded("--name", name, 200, false).map_err(|v| anyhow::anyhow!("{v}"))?;
    let issued = credentials
        .create(scope, name, expires_at)
        .await
        .context("storing the credential")?;
    eprintln!(
        "created {} credential {}; the token below is shown only once:",
        scope.as_str(),
        issued.credential.id
    );
    println!("{}", issued.token.expose());
    Ok(())
}

async fn list_credentials(credentials: &Credentials) -> anyhow::Result<()> {
    let at = now();
    let rfc3339 = |t: Option<Timestamp>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("ID\tSCOPE\tSTATUS\tCREATED\tEXPIRES\tREVOKED\tNAME");
    for c in credentials.list().await.context("listing credentials")? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            c.id,
            c.scope.as_str(),
            c.status(at).as_str(),
            rfc3339(Some(c.created_at)),
            rfc3339(c.expires_at),
            rfc3339(c.revoked_at),
            c.name
        );
    }
    Ok(())
}

async fn revoke_credential(
    config: &Config,
    credentials: &Credentials,
    id: &str,
) -> anyhow::Result<()> {
    let id = CredentialId::parse("ID", id).map_err(|v| anyhow::anyhow!("{v}"))?;
    let credential = credentials.revoke(id).await?;
    // The servers' caches forget it when told on the change channel.
    if let Some(redis) = connect_redis(config).await? {
        ChangeBus::new(redis.bulk.clone(), &config.redis_key_prefix)
            .publish(Change::Credential(id))
            .await
            .context("telling the servers through Redis (the credential is revoked)")?;
    }
    eprintln!(
        "revoked {} credential {} ({})",
        credential.scope.as_str(),
        credential.id,
        credential.name
    );
    Ok(())
}
