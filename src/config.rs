//! Configuration: built-in defaults, then an optional file, then `TOLLGATE_*`
//! environment variables, then flags, then one validation pass.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use figment::{
    Figment, Profile, Provider,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{
    domain::{key::KeyEnvironment, secret::UncheckedSecrets},
    store::sql::Backend,
};

const DEFAULTS: &str = include_str!("config.default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What Verify does when Redis does not answer within `redis_timeout_millis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Answer `UNAVAILABLE`.
    Closed,
    /// Admit on an in-process bucket; usage is counted and added to Redis
    /// once it is back.
    Open,
}

// Unknown settings are an error: a misspelt key in a config file (or a
// chart's ConfigMap) must stop the server, not be silently ignored.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// The gRPC port's TLS certificate and key (PEM); empty: no TLS.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Client certificates must be signed by this CA; empty: not asked for.
    pub tls_client_ca_file: PathBuf,
    /// Connections the gRPC listener holds at once; more are closed.
    pub max_connections: usize,
    /// How long a new connection has to send the HTTP/2 preface.
    pub handshake_timeout_millis: u64,
    /// HTTP/2 pings on connections: every this many seconds, and closed when
    /// one is not answered within `http2_keepalive_timeout_seconds`.
    pub http2_keepalive_seconds: u64,
    pub http2_keepalive_timeout_seconds: u64,
    /// Where `/metrics` is served; empty: nowhere.
    pub metrics_listen: String,
    /// Apply migrations at start; off where a job runs `tollgate migrate`.
    pub migrate_on_start: bool,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub database_max_connections: u32,
    /// The pool's wait for a connection, and the bound of a flush's write.
    pub database_timeout_millis: u64,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otlp_endpoint: String,
    pub credential_cache_seconds: u64,
    pub key_cache_seconds: u64,
    /// How old a key's entitlements may be served while the database is away.
    pub key_stale_seconds: u64,
    /// The most a database read on the Verify path may take.
    pub verify_read_budget_millis: u64,
    pub key_cache_entries: usize,
    pub usage_flush_millis: u64,
    pub usage_sweep_seconds: u64,
    pub redis_url: String,
    pub redis_cluster: bool,
    /// CAs trusted for rediss:// instead of the system's; empty: the system's.
    pub redis_ca_file: PathBuf,
    pub redis_key_prefix: String,
    pub redis_timeout_millis: u64,
    pub redis_failure: RedisFailure,
    pub unchecked_secrets: UncheckedSecrets,
    pub shutdown_grace_seconds: u64,
    pub admin_token: String,
}

/// Settings given as flags; unset ones leave the layers below alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// `RUST_LOG`, when set to something.
pub fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        // RUST_LOG (what Rust operators try first) stands in for the default
        // filter; a file's `log_filter` and TOLLGATE_LOG_FILTER still win.
        if let Some(filter) = rust_log() {
            figment = figment.merge(Serialized::default("log_filter", filter));
        }
        if let Some(file) = file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only known settings are taken from the environment: other
        // TOLLGATE_* variables (TOLLGATE_CONFIG, TOLLGATE_WORKER_THREADS, or
        // the TOLLGATE_PORT Kubernetes sets for a Service named tollgate)
        // are not settings.
        let known = known_settings();
        let env =
            Env::prefixed("TOLLGATE_").filter(move |key| known.iter().any(|k| key == k.as_str()));
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("reading configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// The Redis node, or the cluster's seed nodes.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The server's TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::server::TlsFiles> {
        let set = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        Some(crate::tls::server::TlsFiles {
            cert: set(&self.tls_cert_file)?,
            key: set(&self.tls_key_file)?,
            client_ca: set(&self.tls_client_ca_file),
        })
    }

    /// Rejects combinations that cannot work, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.metrics_addr()?;
        let cert = !self.tls_cert_file.as_os_str().is_empty();
        let key = !self.tls_key_file.as_os_str().is_empty();
        if cert != key {
            bail!("tls_cert_file and tls_key_file go together: set both, or neither");
        }
        if !cert && !self.tls_client_ca_file.as_os_str().is_empty() {
            bail!(
                "tls_client_ca_file needs tls_cert_file and tls_key_file (client certificates are asked for over TLS)"
            );
        }
        if !self.redis_ca_file.as_os_str().is_empty()
            && !self.redis_urls().iter().all(|u| u.starts_with("rediss://"))
        {
            bail!("redis_ca_file is for rediss:// URLs: redis_url must use rediss://");
        }
        if !self.database_url.is_empty() && Backend::of_url(&self.database_url).is_none() {
            bail!(
                "database_url must start with postgres://, postgresql:// or sqlite:, or be empty for the embedded SQLite file"
            );
        }
        if self.database_url.is_empty() && self.data_dir.as_os_str().is_empty() {
            bail!("data_dir must be set when database_url is empty");
        }
        if self.key_cache_entries == 0 {
            bail!("key_cache_entries must be at least 1");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.handshake_timeout_millis == 0
            || self.http2_keepalive_seconds == 0
            || self.http2_keepalive_timeout_seconds == 0
        {
            bail!(
                "handshake_timeout_millis, http2_keepalive_seconds and \
                 http2_keepalive_timeout_seconds must be at least 1"
            );
        }
        if self.usage_flush_millis == 0 {
            bail!("usage_flush_millis must be at least 1");
        }
        if self.usage_sweep_seconds == 0 {
            bail!("usage_sweep_seconds must be at least 1");
        }
        if !self.redis_url.is_empty() {
            let urls = self.redis_urls();
            if urls
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                bail!(
                    "redis_url must start with redis:// or rediss://, or be empty for the in-process limiter"
                );
            }
            if urls.len() > 1 && !self.redis_cluster {
                bail!(
                    "redis_url names several nodes: set redis_cluster = true for a Redis Cluster, or give one node"
                );
            }
            if self.database_url.is_empty() {
                bail!(
                    "redis_url needs database_url: replicas sharing Redis must share a PostgreSQL database"
                );
            }
        }
        let prefix = &self.redis_key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            bail!("redis_key_prefix must be 1 to 64 letters, digits, '_', '-', '.' or ':'");
        }
        if !(1..=10_000).contains(&self.redis_timeout_millis) {
            bail!("redis_timeout_millis must be between 1 and 10000");
        }
        if self.database_max_connections == 0 {
            bail!("database_max_connections must be at least 1");
        }
        if !(1..=600_000).contains(&self.database_timeout_millis) {
            bail!("database_timeout_millis must be between 1 and 600000");
        }
        if !(1..=60_000).contains(&self.verify_read_budget_millis) {
            bail!("verify_read_budget_millis must be between 1 and 60000");
        }
        if self.key_stale_seconds < self.key_cache_seconds {
            bail!("key_stale_seconds must be at least key_cache_seconds");
        }
        if !self.admin_token.is_empty() {
            if self.admin_token.chars().count() < 32 {
                bail!("admin_token must be at least 32 characters");
            }
            if KeyEnvironment::of_secret(&self.admin_token).is_some() {
                bail!("admin_token must not look like an API key (tg_live_/tg_test_)");
            }
        }
        let otlp = &self.otlp_endpoint;
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            bail!("otlp_endpoint must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.metrics_listen.is_empty() {
            return Ok(None);
        }
        let Ok(addr) = self.metrics_listen.parse::<SocketAddr>() else {
            bail!("metrics_listen must be an address such as 0.0.0.0:9090, or empty for none");
        };
        if addr.port() != 0 && addr.port() == self.listen.port() {
            bail!("metrics_listen must use another port than listen");
        }
        Ok(Some(addr))
    }

    /// The database to use: the configured URL, or the embedded SQLite file.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("tollgate.db").display()
            )
        } else {
            self.database_url.clone()
        }
    }
}

impl fmt::Debug for Config {
    // Secrets (the admin token, a password in the URL) never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_client_ca_file", &self.tls_client_ca_file)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout_millis", &self.handshake_timeout_millis)
            .field("http2_keepalive_seconds", &self.http2_keepalive_seconds)
            .field(
                "http2_keepalive_timeout_seconds",
                &self.http2_keepalive_timeout_seconds,
            )
            .field("metrics_listen", &self.metrics_listen)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("database", &Backend::of_url(&self.effective_database_url()))
            .field("data_dir", &self.data_dir)
            .field("database_max_connections", &self.database_max_connections)
            .field("database_timeout_millis", &self.database_timeout_millis)
            .field("key_cache_seconds", &self.key_cache_seconds)
            .field("key_stale_seconds", &self.key_stale_seconds)
            .field("verify_read_budget_millis", &self.verify_read_budget_millis)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("redis", &(!self.redis_url.is_empty()).then_some("<set>"))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_timeout_millis", &self.redis_timeout_millis)
            .field("redis_failure", &self.redis_failure)
            .field("unchecked_secrets", &self.unchecked_secrets)
            .field(
                "admin_token",
                &(!self.admin_token.is_empty()).then_some("<set>"),
            )
            .finish_non_exhaustive()
    }
}

/// The settings there are: the keys of the built-in defaults, which name
/// every one.
fn known_settings() -> Vec<String> {
    Toml::string(DEFAULTS)
        .data()
        .ok()
        .and_then(|mut profiles| profiles.remove(&Profile::Default))
        .map(|dict| dict.into_keys().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_settings_in_a_file_stop_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "metrics_listn = \"0.0.0.0:9090\"\n").unwrap();
        let error = Config::load(Some(&file), &Overrides::default())
            .expect_err("an unknown key is refused");
        assert!(format!("{error:#}").contains("metrics_listn"), "{error:#}");
    }

    #[test]
    fn every_setting_has_a_default() {
        let known = known_settings();
        for key in [
            "listen",
            "metrics_listen",
            "migrate_on_start",
            "admin_token",
        ] {
            assert!(known.iter().any(|k| k == key), "{key} has no default");
        }
        Config::load(None, &Overrides::default()).expect("the defaults load");
    }
}
