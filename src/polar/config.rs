//! tollgate-polar's settings (flags or TOLLGATE_POLAR_* variables), and the
//! webhook secret they name.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use base64::Engine;

use crate::{config::LogFormat, tls::client::ClientTls};

#[derive(Debug, clap::Parser)]
#[command(
    name = "tollgate-polar",
    version,
    about = "Polar webhook adapter: verified deliveries in, Tollgate subscription updates out."
)]
pub struct Config {
    /// Address to listen on for Polar's deliveries (POST /webhooks/polar).
    #[arg(long, env = "TOLLGATE_POLAR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The Tollgate server's gRPC address.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// With an https:// server: PEM CA certificates to trust besides the
    /// system's roots.
    #[arg(long, env = "TOLLGATE_POLAR_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// With an https:// server that asks for client certificates: this
    /// one (PEM), and its key.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_CLIENT_CERT_FILE",
        requires = "client_key_file"
    )]
    pub client_cert_file: Option<PathBuf>,
    #[arg(
        long,
        env = "TOLLGATE_POLAR_CLIENT_KEY_FILE",
        requires = "client_cert_file"
    )]
    pub client_key_file: Option<PathBuf>,
    /// An admin token of the Tollgate server (`tollgate admin bootstrap`).
    /// Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "TOLLGATE_POLAR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The endpoint's secret as Polar's dashboard shows it (its UTF-8 bytes
    /// are the key), or a Standard Webhooks `whsec_<base64>` secret.
    #[arg(long, env = "TOLLGATE_POLAR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: String,
    /// How long a delivery waits for the server before answering 503. Polar
    /// gives up on an answer after a few seconds.
    #[arg(long, env = "TOLLGATE_POLAR_DEADLINE_MILLIS", default_value_t = 1000)]
    pub deadline_millis: u64,
    /// Connections the listener holds at once; one more is closed when accepted.
    #[arg(long, env = "TOLLGATE_POLAR_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A new connection that has not sent a request line within this is closed.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_HANDSHAKE_TIMEOUT_MILLIS",
        default_value_t = 5000
    )]
    pub handshake_timeout_millis: u64,
    /// A connection the client sends nothing on for this long is closed
    /// (between requests, or in the middle of one); more than the deadline.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_IDLE_TIMEOUT_MILLIS",
        default_value_t = 30_000
    )]
    pub idle_timeout_millis: u64,
    /// `pretty` or `json` log lines on stderr.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Which log lines to keep (`tracing` filter syntax); unset: `RUST_LOG`,
    /// else `info`.
    #[arg(long, env = "TOLLGATE_POLAR_LOG_FILTER")]
    pub log_filter: Option<String>,
    /// Address of the Prometheus endpoint (GET /metrics); none when unset.
    #[arg(long, env = "TOLLGATE_POLAR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP/gRPC endpoint for traces, e.g. http://127.0.0.1:4317; empty: off.
    #[arg(long, env = "TOLLGATE_POLAR_OTLP_ENDPOINT", default_value = "")]
    pub otlp_endpoint: String,
}

/// The key the secret stands for: a `whsec_` secret's decoded bytes (with
/// or without base64 padding, as the reference libraries accept), else the
/// secret's own UTF-8 bytes (as Polar signs).
pub fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const WHSEC: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => WHSEC
            .decode(b64)
            .context("the whsec_ webhook secret is not valid base64")?,
        None => secret.as_bytes().to_vec(),
    };
    anyhow::ensure!(!key.is_empty(), "the webhook secret is empty");
    Ok(key)
}

impl Config {
    /// How the server is reached when it is https://.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.client_cert_file.clone(),
            key_file: self.client_key_file.clone(),
            server_name: None,
        }
    }
}
